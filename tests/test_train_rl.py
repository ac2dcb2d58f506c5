"""Smoke runs of the RL loops (train/grpo.py, train/ppo.py) on a tiny random model with a learnable reward.

The reward is "the response starts with a lowercase ASCII letter" (about a quarter of the vocabulary at
initialization). Whether training raised it is measured exactly, not from noisy samples: the policy's
probability that the first response token is such a token, before and after.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from cs336_alignment.lm.checkpoint import load_checkpoint_extra, load_model, save_checkpoint
from cs336_alignment.grpo_loss import grpo_microbatch_train_step
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.masked import masked_mean
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.policy_losses import kl_estimate
from cs336_alignment.lm.tokenizer import build_prompt, load_tokenizer
from cs336_alignment.train import grpo, ppo
from cs336_alignment.train.common import load_problems, load_sft_optimizer_state, prompt_indices, read_metrics
from test_train_smoke import interrupt_then_resume, run_interrupted_then_resume


def starts_lowercase(response: str, ground_truth: str) -> dict[str, float]:
    return {"reward": float(response[:1].isascii() and response[:1].islower())}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=32, num_layers=1,
                               num_heads=2, d_ff=64)
    path = tmp_path_factory.mktemp("rl") / "init.pt"
    save_checkpoint(TransformerLM(config), None, 0, path, model_config=dataclasses.asdict(config))
    return str(path)


@torch.no_grad()
def prob_first_token_lowercase(ckpt: str, tokenizer, fmt: str = "chat") -> float:
    """Mean over training prompts (in format `fmt`) of P(first response token decodes to a lowercase ASCII
    letter first)."""
    model, _ = load_model(ckpt)
    lower = torch.tensor([tokenizer.decode([i])[:1].isascii() and tokenizer.decode([i])[:1].islower()
                          for i in range(tokenizer.vocab_size)])
    probs = []
    for problem in load_problems("", 16, "rl", seed=2):  # the loops' prompt pool (seed + 2)
        ids = torch.tensor([build_prompt(problem["question"], tokenizer, fmt)])
        probs.append(float(torch.softmax(model(ids)[0, -1], dim=-1)[lower].sum()))
    return sum(probs) / len(probs)


COMMON = dict(n_problems=16, n_eval_problems=4, max_new_tokens=3, warmup_steps=0, quiet=True, eval_every=100)


def test_grpo_smoke_reward_rises(tmp_path, init_ckpt, tokenizer, monkeypatch):
    seen = []  # (policy_log_probs, old_log_probs, mask) of every micro-batch step
    original = grpo.policy_and_kl_backward

    def spy(log_probs, mask, *args, **kwargs):
        seen.append((log_probs.detach().clone(), kwargs["old_log_probs"].clone(), mask.clone()))
        return original(log_probs, mask, *args, **kwargs)

    monkeypatch.setattr(grpo, "policy_and_kl_backward", spy)
    cfg = grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path), num_steps=10, prompts_per_step=8, group_size=8,
                          lr=1e-2, min_lr=1e-2, epochs_per_rollout_batch=2, micro_batch_size=32,
                          log_generations_every=5, log_generations_samples=64, **COMMON)
    before = prob_first_token_lowercase(init_ckpt, tokenizer)
    result = grpo.train(cfg, reward_fn=starts_lowercase)
    after = prob_first_token_lowercase(result["checkpoint"], tokenizer)
    assert after > before + 0.15, f"P(reward) went from {before:.3f} to {after:.3f}"
    # On-policy first micro-batch: pi == pi_old bit for bit, so the ratio is exactly 1.
    lp, old, mask = seen[0]
    assert torch.equal(torch.exp(lp - old)[mask], torch.ones(int(mask.sum())))
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if "reward/mean" in r]
    assert len(steps) == 10
    for key in ("policy/clipfrac", "policy/approx_kl", "policy/entropy", "reward/gold_mean", "perf/cpu_s"):
        assert key in steps[-1], key
    assert "eval/accuracy/greedy" in records[0] and "eval/kl/ref" in records[-1]
    assert abs(records[0]["eval/kl/ref"]) < 1e-4  # before training the policy is the reference
    assert records[-1]["eval/kl/ref"] > 1e-3
    for r in steps:  # dropping the zero-variance groups keeps the others
        assert r["groups/zero_variance_fraction"] + r["groups/kept_fraction"] == pytest.approx(1.0)
    assert_diagnostics_match_generations(tmp_path, steps, [5, 10], rows=64)


def assert_diagnostics_match_generations(run, steps: list[dict], written: list[int], rows: int) -> None:
    """generations.jsonl holds `rows` records (the whole step) at the steps `written`, and the step's logged
    diagnostics are the means of those records recomputed here; prompts are the chat-template prompts."""
    generations = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [g["step"] for g in generations] == [s for s in written for _ in range(rows)]
    for step in written:
        got = [g for g in generations if g["step"] == step]
        logged = next(r for r in steps if r["step"] == step)
        assert logged["response/length_mean"] == pytest.approx(sum(g["length"] for g in got) / rows)
        assert logged["response/worked_share"] == pytest.approx(sum(g["worked"] for g in got) / rows)
        assert logged["reward/answer_mean"] == pytest.approx(sum(g["answer_reward"] for g in got) / rows)
        entropies = [g["entropy"] for g in got if g["entropy"] is not None]
        assert entropies and logged["policy/entropy"] == pytest.approx(sum(entropies) / len(entropies))
        wrong = [g["length"] for g in got if g["answer_reward"] == 0]
        assert logged["response/length_incorrect_mean"] == pytest.approx(sum(wrong) / len(wrong))
        assert all(g["prompt"].startswith("<|user|>") and g["prompt"].endswith("<|assistant|>") for g in got)
        assert all(set(g) == {"step", "prompt", "response", "ground_truth", "reward", "format_reward",
                              "answer_reward", "entropy", "length", "worked"} for g in got)


def test_grpo_question_only_prompt(tmp_path, init_ckpt, tokenizer, monkeypatch):
    """--prompt question_only (CS336 a5's prompt ablation): the policy reads the bare question, in training and
    in its evaluations, and the reward still rises on those prompts."""
    formats = []
    original = grpo.run_eval

    def spy(*args, **kwargs):
        formats.append(kwargs["fmt"])
        return original(*args, **kwargs)

    monkeypatch.setattr(grpo, "run_eval", spy)
    cfg = grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path), num_steps=8, prompts_per_step=8, group_size=8,
                          lr=1e-2, min_lr=1e-2, micro_batch_size=32, prompt="question_only",
                          log_generations_every=8, log_generations_samples=64, **{**COMMON, "eval_every": 8})
    before = prob_first_token_lowercase(init_ckpt, tokenizer, "question_only")
    result = grpo.train(cfg, reward_fn=starts_lowercase)
    after = prob_first_token_lowercase(result["checkpoint"], tokenizer, "question_only")
    assert after > before + 0.15, f"P(reward) went from {before:.3f} to {after:.3f}"
    assert formats == ["question_only", "question_only"]
    questions = {p["question"] for p in load_problems("", 16, "rl", seed=2)}
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(prompts) == 64 and set(prompts) <= questions  # the bare question text, no template tokens


# CS336 a5's GRPO ablations (the writeup's experiments), each a flag of the one loop: every one must still learn.
# The 2025 --loss-type names are aliases of the 2026 flags (grpo.LOSS_TYPE_ALIASES); both forms run here.
ABLATIONS = {"no_baseline": dict(loss_type="no_baseline"),
             "reinforce_with_baseline": dict(importance_reweighting="none"),
             "grpo_no_clip": dict(loss_type="grpo_no_clip"),
             "gspo": dict(importance_reweighting="gspo"),
             "cispo": dict(importance_reweighting="cispo"),
             "maxrl": dict(advantage_normalizer="mean"),
             "loss_normalization_constant": dict(loss_normalization="constant"),
             "no_std_normalization": dict(advantage_normalizer="none"),
             "off_policy_4_epochs_2_minibatches": dict(epochs_per_rollout_batch=4, minibatches=2),
             "kl_penalty": dict(kl_coef=0.1)}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_grpo_ablation_reward_rises(name, tmp_path, init_ckpt, tokenizer):
    cfg = grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path), num_steps=8, prompts_per_step=8, group_size=8,
                          lr=1e-2, min_lr=1e-2, micro_batch_size=32, **{**COMMON, **ABLATIONS[name]})
    before = prob_first_token_lowercase(init_ckpt, tokenizer)
    result = grpo.train(cfg, reward_fn=starts_lowercase)
    after = prob_first_token_lowercase(result["checkpoint"], tokenizer)
    assert after > before + 0.15, f"{name}: P(reward) went from {before:.3f} to {after:.3f}"


def test_grpo_other_losses_and_kl_run(tmp_path, init_ckpt):
    for loss_type, kl_coef in (("reinforce_with_baseline", 0.1), ("no_baseline", 0.0)):
        cfg = grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path / loss_type), num_steps=2, prompts_per_step=2,
                              group_size=4, loss_type=loss_type, kl_coef=kl_coef, epochs_per_rollout_batch=1,
                              minibatches=2, micro_batch_size=3, **COMMON)
        grpo.train(cfg, reward_fn=starts_lowercase)
        last = read_metrics(tmp_path / loss_type / "metrics.jsonl")[-2]  # the step line before the last eval
        assert ("kl/ref_per_token" in last) == (kl_coef > 0)


def test_process_advantages_land_on_the_tokens_of_each_step(tokenizer):
    """GRPO --process-reward: a step's normalized reward reaches the response tokens up to the one that ends
    its line, in the training tensors' layout; prompt, stop-token and padding positions get nothing."""
    from cs336_alignment.lm.rollout import Rollouts, build_training_tensors

    texts = ["6 * 9 = 54\n#### 54", "6 * 9 = 48\n#### 48"]  # right / wrong step, right / wrong answer
    prompts = [tokenizer.prompt_ids("What is 6 times 9?")] * 2
    responses = [tokenizer.encode(t) + [tokenizer.end_of_turn_id] for t in texts]
    tensors = build_training_tensors(prompts, responses, pad_token_id=0)
    ro = Rollouts(prompt_ids=prompts, response_ids=responses, response_texts=texts, sampler_log_probs=[],
                  group_size=2, temperature=1.0, finished=torch.ones(2, dtype=torch.bool), pad_token_id=0, **tensors)
    adv = grpo.process_advantages(ro, ["54", "54"], tokenizer, advantage_eps=0.0)   # (2, T)

    r = 0.5 / math.sqrt(1 / 3)  # step rewards [1, 1] and [0, 0]: mean 1/2, unbiased std sqrt(1/3)
    for i, (prompt, response, sign) in enumerate(zip(prompts, responses, (1, -1))):
        ends = list(itertools.accumulate(len(tokenizer.decode([t])) for t in response))  # text length per token
        first_line = len(texts[i].split("\n")[0])
        expected = [sign * (2 * r if end <= first_line else r if end <= len(texts[i]) else 0.0) for end in ends]
        start = len(prompt) - 1
        assert adv[i, start:start + len(response)].tolist() == pytest.approx(expected)
        assert expected[-1] == 0.0 and abs(expected[0]) == pytest.approx(2 * r)
        assert (adv[i, :start] == 0).all() and (adv[i, start + len(response):] == 0).all()


def test_grpo_process_reward_runs_and_checks_its_reward(tmp_path, init_ckpt):
    cfg = grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path / "process"), num_steps=2, prompts_per_step=2,
                          group_size=4, process_reward=True, **{**COMMON, "max_new_tokens": 8})
    assert grpo.train(cfg)["steps"] == 2
    with pytest.raises(ValueError, match="--process-reward needs"):
        grpo.train(dataclasses.replace(cfg, reward="rm", reward_model=init_ckpt))


def test_ppo_smoke_reward_rises(tmp_path, init_ckpt, tokenizer, monkeypatch):
    ratios = []  # ratio of each minibatch call
    original = ppo.compute_ppo_policy_loss

    def spy(advantages, policy_log_probs, old_log_probs, response_mask, cliprange):
        ratios.append(torch.exp(policy_log_probs.detach() - old_log_probs)[response_mask.bool()])
        return original(advantages, policy_log_probs, old_log_probs, response_mask, cliprange)

    monkeypatch.setattr(ppo, "compute_ppo_policy_loss", spy)
    cfg = ppo.PPOConfig(init=init_ckpt, out=str(tmp_path), reward="gold", num_steps=10, prompts_per_step=16,
                        group_size=2, lr=1e-2, value_lr=3e-3, kl_coef=0.01, epochs_per_rollout_batch=2, minibatches=2,
                        micro_batch_size=32, log_generations_every=10, log_generations_samples=32, **COMMON)
    before = prob_first_token_lowercase(init_ckpt, tokenizer)
    result = ppo.train(cfg, reward_fn=starts_lowercase)
    after = prob_first_token_lowercase(result["checkpoint"], tokenizer)
    assert after > before + 0.15, f"P(reward) went from {before:.3f} to {after:.3f}"
    assert torch.equal(ratios[0], torch.ones_like(ratios[0]))     # first minibatch of the first epoch
    assert not torch.equal(ratios[1], torch.ones_like(ratios[1]))  # after one update the policy moved
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "policy/approx_kl" in r]
    assert len(steps) == 10
    for key in ("policy/clipfrac", "policy/entropy", "value/explained_variance", "reward/proxy_mean",
                "reward/gold_mean", "response/length_mean", "kl/ref"):
        assert key in steps[-1], key
    assert max(s["policy/clipfrac"] for s in steps) > 0
    assert_diagnostics_match_generations(tmp_path, steps, [10], rows=32)
    config = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert config["epochs_per_rollout_batch"] == 2
    extra = load_checkpoint_extra(tmp_path / "ckpt.pt")  # the value model travels in the policy's checkpoint
    assert {"value_model", "value_optimizer", "kl_coef", "rng"} <= set(extra)


def test_ppo_resume_reproduces_uninterrupted_run(tmp_path, init_ckpt, monkeypatch):
    """4 steps straight vs 2 steps, a crash right after the checkpoint, and --resume for the last 2: the same
    policy, value model, optimizer states and adaptive beta, bit for bit."""
    def args(out):
        return ["--init", init_ckpt, "--out", str(out), "--reward", "gold", "--num-steps", "4",
                "--checkpoint-every", "2", "--eval-every", "2", "--prompts-per-step", "4", "--group-size", "2",
                "--max-new-tokens", "3", "--n-problems", "16", "--n-eval-problems", "4", "--warmup-steps", "0",
                "--lr", "1e-2", "--value-lr", "3e-3", "--kl-coef", "0.1", "--target-kl", "1.0",
                "--kl-horizon", "100", "--minibatches", "2", "--micro-batch-size", "3", "--quiet"]
    ppo.main(args(tmp_path / "a"))
    run_interrupted_then_resume(ppo, args(tmp_path / "b"), monkeypatch)

    a, b = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True) for run in ("a", "b"))
    assert a["iteration"] == b["iteration"] == 4
    assert a["extra"]["kl_coef"] == b["extra"]["kl_coef"] != 0.1  # beta moved, and the resumed run carried it on
    for x, y in ((a["model"], b["model"]), (a["optimizer"], b["optimizer"]),
                 (a["extra"]["value_model"], b["extra"]["value_model"]),
                 (a["extra"]["value_optimizer"], b["extra"]["value_optimizer"])):
        assert_identical(x, y)

    def records(run):  # the metrics lines without timings
        return [{k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in read_metrics(tmp_path / run / "metrics.jsonl")]
    assert records("a") == records("b")
    assert_cpu_time_carried_over(tmp_path / "b")
    headers = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
               if line.startswith('{"config"')]
    assert headers[-1]["resumed_from"] == 2


def test_grpo_resume_reproduces_uninterrupted_run(tmp_path, init_ckpt, monkeypatch):
    """GRPO: 4 steps straight vs 2 steps, a crash right after the checkpoint, and resume: the same policy and
    optimizer state bit for bit, and the same metrics lines (prompts and samples are a function of the step)."""
    def config(out, resume=False, log_generations_every=0):
        return grpo.GRPOConfig(init=init_ckpt, out=str(out), num_steps=4, checkpoint_every=2, prompts_per_step=4,
                               group_size=3, lr=1e-2, kl_coef=0.1, resume=resume,
                               log_generations_every=log_generations_every, **{**COMMON, "eval_every": 2})
    grpo.train(config(tmp_path / "a"), reward_fn=starts_lowercase)
    # b also writes generations.jsonl every step: logging samples changes nothing that is trained
    interrupt_then_resume(grpo, lambda resume: grpo.train(config(tmp_path / "b", resume, 1),
                                                          reward_fn=starts_lowercase), monkeypatch)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "generations.jsonl").read_text().splitlines()]
    assert steps == [s for s in (1, 2, 3, 4) for _ in range(12)]  # 4 prompts x 3 per step, none twice

    a, b = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True) for run in ("a", "b"))
    init = torch.load(init_ckpt, weights_only=True)["model"]
    assert a["iteration"] == b["iteration"] == 4
    assert any(not torch.equal(a["model"][k], init[k]) for k in init)  # it trained
    assert_identical(a["model"], b["model"])
    assert_identical(a["optimizer"], b["optimizer"])

    def records(run):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in read_metrics(tmp_path / run / "metrics.jsonl")]
    assert records("a") == records("b")
    assert_cpu_time_carried_over(tmp_path / "b")


def assert_cpu_time_carried_over(run) -> None:
    """The training CPU seconds go on from the checkpoint's count after a resume (the matched-compute baseline
    is sized by them), instead of restarting at 0."""
    cpu = [r["perf/cpu_s"] for r in read_metrics(run / "metrics.jsonl") if "perf/cpu_s" in r]
    assert len(cpu) == 4 and all(later > earlier for earlier, later in zip(cpu, cpu[1:])), cpu
    assert torch.load(run / "ckpt.pt", weights_only=True)["extra"]["cpu_s"] == cpu[-1]


def assert_identical(x, y, where: str = "") -> None:
    """Nested dicts / lists of tensors and plain values (state dicts) are equal, tensors bit for bit."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_identical(x[key], y[key], f"{where}[{key!r}]")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_identical(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where


def test_ppo_adaptive_kl_moves_beta(tmp_path, init_ckpt):
    cfg = ppo.PPOConfig(init=init_ckpt, out=str(tmp_path), reward="gold", num_steps=2, prompts_per_step=4,
                        group_size=2, kl_coef=0.1, target_kl=100.0, kl_horizon=100, epochs_per_rollout_batch=1, minibatches=1,
                        **COMMON)
    ppo.train(cfg, reward_fn=starts_lowercase)
    betas = [r["kl/coef"] for r in read_metrics(tmp_path / "metrics.jsonl") if "kl/coef" in r]
    assert betas[0] == 0.1 and betas[1] < 0.1  # KL far below target: beta shrinks


def test_rl_loops_without_init_start_from_the_shipped_sft_model(tmp_path, capsys):
    grpo.train(grpo.GRPOConfig(out=str(tmp_path), num_steps=0, n_eval_problems=0, quiet=True))
    assert "no --init given: starting from the shipped SFT model" in capsys.readouterr().err
    with pytest.raises(ValueError):
        ppo.train(ppo.PPOConfig(out=str(tmp_path), reward="rm", init="x"))


def test_prompt_indices_are_a_pure_function_of_step():
    first = [prompt_indices(s, 10, 4, seed=3) for s in range(5)]
    assert first == [prompt_indices(s, 10, 4, seed=3) for s in range(5)]
    epoch0 = sum(first[:2], []) + first[2][:2]       # steps 0, 1 and half of 2 cover the pool once
    assert sorted(epoch0) == list(range(10))



@pytest.fixture(scope="module")
def rm_ckpt(tmp_path_factory, init_ckpt):
    from cs336_alignment.reward_model import RewardModel

    torch.manual_seed(1)
    policy, extra = load_model(init_ckpt)
    path = tmp_path_factory.mktemp("rm") / "rm.pt"
    save_checkpoint(RewardModel.from_lm(policy), None, 0, path, kind="reward_model",
                    model_config=extra["model_config"])
    return str(path)


def test_score_rollouts_match_unpadded_forward(rm_ckpt, init_ckpt, tokenizer):
    from cs336_alignment.lm.rollout import sample_rollouts
    from cs336_alignment.reward_model import load_reward_model, score_rollouts

    rm, _ = load_reward_model(rm_ckpt)
    policy, _ = load_model(init_ckpt)
    ro = sample_rollouts(policy, tokenizer, ["Tom has 3 apples.", "Mia has 12 eggs. She buys 2 more."], 2,
                         max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    scores = score_rollouts(rm, ro, batch_size=3)
    with torch.no_grad():  # oracle: each sequence alone, no padding, the head at its last position
        alone = [float(rm(torch.tensor([p + r]))[0]) for p, r in zip(ro.prompt_ids, ro.response_ids)]
    torch.testing.assert_close(scores, torch.tensor(alone), atol=1e-5, rtol=1e-5)


def test_rl_against_a_reward_model_runs(tmp_path, init_ckpt, rm_ckpt):
    ppo.train(ppo.PPOConfig(init=init_ckpt, out=str(tmp_path / "ppo"), reward_model=rm_ckpt, num_steps=2,
                            prompts_per_step=4, group_size=2, epochs_per_rollout_batch=1, minibatches=1, **COMMON))
    grpo.train(grpo.GRPOConfig(init=init_ckpt, out=str(tmp_path / "grpo"), reward="rm", reward_model=rm_ckpt,
                               num_steps=2, prompts_per_step=2, group_size=4, **COMMON))
    for run in ("ppo", "grpo"):
        steps = [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if "reward/proxy_mean" in r]
        assert len(steps) == 2 and all(s["reward/proxy_mean"] != 0 for s in steps)


def test_load_sft_optimizer_state_keeps_second_moments_only(tmp_path):
    from cs336_alignment.lm.nn_utils import AdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    sft_opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    sft_opt.step()
    save_checkpoint(model, sft_opt, 1, tmp_path / "sft.pt")
    rl_opt = AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    load_sft_optimizer_state(str(tmp_path / "sft.pt"), rl_opt)
    for p in model.parameters():
        saved, loaded = sft_opt.state[p], rl_opt.state[p]
        assert torch.equal(loaded["exp_avg_sq"], saved["exp_avg_sq"]) and not loaded["exp_avg"].any()
    assert rl_opt.param_groups[0]["lr"] == 5e-5 and rl_opt.param_groups[0]["weight_decay"] == 0.0
    save_checkpoint(model, None, 1, tmp_path / "weights_only.pt")
    with pytest.raises(ValueError):
        load_sft_optimizer_state(str(tmp_path / "weights_only.pt"), rl_opt)


@pytest.mark.parametrize("loss_type", ["grpo_clip", "reinforce_with_baseline"])
def test_grpo_kl_joins_the_policy_loss_in_one_backward(loss_type):
    from cs336_alignment.grpo_loss import LOSS_TYPES_2025

    """One backward pass through the model gives the gradient of the two the loop used to run: the KL term
    backpropagated with retain_graph=True, then the policy step's own backward."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=50, context_length=16, d_model=16, num_layers=1,
                                            num_heads=2, d_ff=32))
    ids = torch.randint(0, 50, (3, 9))
    input_ids, labels = ids[:, :-1], ids[:, 1:]                                   # (3, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 3:] = True
    mask[1, 6:] = False
    with torch.no_grad():
        base = get_response_log_probs(model, input_ids, labels)["log_probs"]
    ref, old = base + 0.1 * torch.randn_like(base), base + 0.05 * torch.randn_like(base)
    kwargs = dict(raw_rewards=torch.randn(3, 1), advantages=torch.randn(3, 1), old_log_probs=old, cliprange=0.2)
    kl_coef, accumulation = 0.3, 2.0

    policy_lp = get_response_log_probs(model, input_ids, labels)["log_probs"]           # (3, 8), with grad
    info, kl = grpo.policy_and_kl_backward(policy_lp, mask, accumulation, LOSS_TYPES_2025[loss_type][1],
                                           weights=kwargs["advantages"], old_log_probs=old, cliprange=0.2,
                                           kl_coef=kl_coef, ref_log_probs=ref)
    one = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    policy_lp = get_response_log_probs(model, input_ids, labels)["log_probs"]           # the same, afresh
    kl_term = masked_mean(kl_estimate(policy_lp, ref, "k3"), mask, dim=-1).mean()
    (kl_coef * kl_term / accumulation).backward(retain_graph=True)
    _, info_two = grpo_microbatch_train_step(policy_lp, mask, accumulation, loss_type, **kwargs)
    two = [p.grad.clone() for p in model.parameters()]

    assert kl == pytest.approx(float(kl_term.detach())) and kl > 0
    assert float(info["loss/policy"]) == pytest.approx(float(info_two["loss/policy"]))
    assert sum(float(g.abs().sum()) for g in one) > 0
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_metrics_logger_resume_keeps_generations_up_to_the_checkpoint(tmp_path):
    """A resumed run drops the samples an interrupted run wrote after its checkpoint; a fresh run starts empty."""
    from cs336_alignment.train.common import MetricsLogger

    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps({"step": s, "response": f"r{s}"}) + "\n" for s in (1, 2, 3)))
    logger = MetricsLogger(tmp_path, 4, {}, resumed_from=2, quiet=True)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    logger.log_generations(3, [{"response": "again"}])
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 3, "response": "again"}
    MetricsLogger(tmp_path, 4, {}, quiet=True)
    assert path.read_text() == ""
