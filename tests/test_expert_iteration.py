"""Expert iteration (train/expert_iteration.py) on a tiny random model with a learnable filter.

The filter is "the response starts with a lowercase ASCII letter" (about a quarter of the vocabulary at
initialization), as in the RL smoke tests. Fine-tuning on the kept responses must raise the policy's exact
probability of such a first token (not a noisy sample estimate), and the CLI flags must reach the loop.
"""
from __future__ import annotations


import pytest
import torch

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.train import expert_iteration
from cs336_alignment.train.common import load_problems, read_metrics
from test_train_rl import init_ckpt, starts_lowercase, tokenizer  # noqa: F401 (the RL tests' fixtures)
from test_train_rl import assert_diagnostics_match_generations
from tests.metric_names import undocumented


@torch.no_grad()
def prob_first_token_lowercase(ckpt: str, tokenizer, problems) -> float:
    """Mean over the prompts of P(the first response token decodes to text starting with a lowercase letter)."""
    model, _ = load_model(ckpt)
    lower = torch.tensor([tokenizer.decode([i])[:1].isascii() and tokenizer.decode([i])[:1].islower()
                          for i in range(tokenizer.vocab_size)])
    probs = [float(torch.softmax(model(torch.tensor([tokenizer.prompt_ids(p["question"])]))[0, -1], -1)[lower].sum())
             for p in problems]
    return sum(probs) / len(probs)


COMMON = dict(n_problems=16, prompts_per_step=8, n_eval_problems=4, eval_samples=1, max_new_tokens=3,
              keep_unfinished=True, quiet=True, device="cpu", threads=1)


def test_expert_iteration_raises_the_filtered_behaviour(tmp_path, init_ckpt, tokenizer):
    cfg = expert_iteration.EIConfig(init=init_ckpt, out=str(tmp_path), num_steps=4, group_size=8,
                                    sft_epochs=2, batch_size=16, micro_batch_size=8, lr=1e-2,
                                    log_generations_every=2, log_generations_samples=64, **COMMON)
    problems = load_problems("", cfg.n_problems, cfg.split, cfg.seed + 2)  # the loop's own prompt pool
    before = prob_first_token_lowercase(init_ckpt, tokenizer, problems)
    result = expert_iteration.train(cfg, reward_fn=starts_lowercase)
    after = prob_first_token_lowercase(result["checkpoint"], tokenizer, problems)
    assert after > before + 0.2, f"P(kept behaviour) went from {before:.3f} to {after:.3f}"
    records = read_metrics(tmp_path / "metrics.jsonl")
    rounds = [r for r in records if "ei/kept" in r]
    assert len(rounds) == 4 and [r["step"] for r in rounds] == [1, 2, 3, 4]
    for key in ("policy/entropy", "loss/train", "ei/kept_fraction", "ei/prompts_solved", "reward/gold_mean"):
        assert key in rounds[-1], key
    # the kept fraction is the filter's acceptance rate among the samples: it rises as the policy learns
    assert rounds[-1]["ei/kept_fraction"] > rounds[0]["ei/kept_fraction"] + 0.2
    # every round trains ceil(kept / batch_size) optimizer steps per epoch
    assert all(r["ei/optimizer_steps"] == 2 * -(-int(r["ei/kept"]) // 16) for r in rounds)
    evals = [r for r in records if "eval/accuracy/greedy" in r]
    assert len(evals) == 5 and abs(evals[0]["eval/kl/ref"]) < 1e-4 and evals[-1]["eval/kl/ref"] > 1e-3
    assert not undocumented([tmp_path / "metrics.jsonl"]), "a logged metric name missing from the README's table"
    assert_diagnostics_match_generations(tmp_path, rounds, [2, 4], rows=64)


def test_ei_command_line_flags(tmp_path, init_ckpt):
    from cs336_alignment.__main__ import main as cli_main

    assert cli_main(["ei", "--init", init_ckpt, "--out", str(tmp_path), "--n-ei-steps", "1",
                     "--rollouts-per-prompt", "2", "--sft-epochs", "1", "--batch-size", "4", "--prompts-per-step",
                     "3", "--n-problems", "5", "--n-eval-problems", "2", "--eval-samples", "1",
                     "--max-new-tokens", "2", "--keep-unfinished", "--quiet", "--threads", "1", "--device", "cpu",
                     "--seed", "3"]) == 0
    config = read_metrics(tmp_path / "metrics.jsonl")  # first line: the config
    first = [r for r in config if "ei/kept" in r][0]
    assert first["step"] == 1 and 0 <= first["ei/kept"] <= 6
    with pytest.raises(ValueError, match="group_size"):
        expert_iteration.train(expert_iteration.EIConfig(init=init_ckpt, group_size=0))
