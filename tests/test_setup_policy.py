"""train/setup.py: `setup_policy` builds what grpo, ppo and ei start from (the held-out problems of --eval-data in
all three, the checkpoint's own tokenizer, a frozen reference equal to the initial policy, the reward model when
asked), and `sequence_rewards` is their one reward seam (reward_fn, else the reward model, else the gold reward),
checked against each scorer called directly."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cs336_alignment.lm.checkpoint import load_model, save_checkpoint
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.reward_model import RewardModel, load_reward_model
from cs336_alignment.lm.rollout import sample_rollouts
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train import expert_iteration, grpo, ppo
from cs336_alignment.train.setup import sequence_rewards, setup_policy
from cs336_alignment.world.verifier import gold_reward

CONFIGS = {"grpo": grpo.GRPOConfig, "ppo": ppo.PPOConfig, "ei": expert_iteration.EIConfig}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=16, num_layers=1,
                               num_heads=2, d_ff=32)
    root = tmp_path_factory.mktemp("setup")
    policy = TransformerLM(config)
    save_checkpoint(policy, None, 0, root / "init.pt", model_config=dataclasses.asdict(config))
    save_checkpoint(RewardModel.from_lm(policy), None, 0, root / "rm.pt", kind="reward_model",
                    model_config=dataclasses.asdict(config))
    return str(root / "init.pt"), str(root / "rm.pt")


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_every_rl_stage_reads_its_held_out_problems_from_eval_data(stage, ckpts, tmp_path):
    records = [{"question": f"Ann has {n} pens. She buys 1 more. How many pens?", "answer": f"#### {n + 1}"}
               for n in (3, 5, 8)]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = CONFIGS[stage](init=ckpts[0], out=str(tmp_path / "run"), eval_data=str(eval_file), n_eval_problems=2,
                         n_problems=5, device="cpu", quiet=True)
    run = setup_policy(cfg, stage)
    assert [(p["question"], p["answer"]) for p in run.eval_problems] == [(r["question"], r["answer"])
                                                                          for r in records[:2]]
    assert len(run.problems) == 5 and run.start_step == 0 and run.resume_extra == {}
    assert run.tokenizer.vocab_size == run.policy.config.vocab_size
    for (name, p), q in zip(run.policy.named_parameters(), run.reference.parameters()):
        assert torch.equal(p, q) and not q.requires_grad, name  # a frozen copy of the initial policy
    assert run.reward_model is None  # no --reward-model given (or none in the config)


def test_the_reward_model_is_loaded_when_asked(ckpts, tmp_path):
    cfg = ppo.PPOConfig(init=ckpts[0], reward_model=ckpts[1], out=str(tmp_path / "a"), n_problems=4,
                        n_eval_problems=1, device="cpu", quiet=True)
    assert setup_policy(cfg, "ppo").reward_model is not None
    cfg = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    assert setup_policy(cfg, "ppo", load_rm=False).reward_model is None


def test_sequence_rewards_is_the_reward_fn_else_the_rm_else_gold(ckpts):
    tokenizer = load_tokenizer()
    policy, _ = load_model(ckpts[0])
    rm, _ = load_reward_model(ckpts[1])
    ro = sample_rollouts(policy, tokenizer, ["Tom has 3 apples.", "Mia has 12 eggs."], 2, max_new_tokens=4,
                         generator=torch.Generator().manual_seed(0))
    truths = ["#### 3", "#### 3", "#### 12", "#### 12"]
    gold, metrics = sequence_rewards(ro, truths, None)
    assert gold.tolist() == [gold_reward(t, a)["reward"] for t, a in zip(ro.response_texts, truths)] and not metrics

    def length(response: str, truth: str) -> dict[str, float]:
        return {"reward": float(len(response))}
    scores, metrics = sequence_rewards(ro, truths, rm, length)  # a reward_fn wins over the reward model
    assert scores.tolist() == [float(len(t)) for t in ro.response_texts]
    assert metrics["reward/proxy_mean"] == pytest.approx(sum(len(t) for t in ro.response_texts) / 4)

    scores, metrics = sequence_rewards(ro, truths, rm)
    with torch.no_grad():  # oracle: each prompt + sampled response alone, no padding, the head at its last token
        alone = [float(rm(torch.tensor([p + r]))[0]) for p, r in zip(ro.prompt_ids, ro.response_ids)]
    torch.testing.assert_close(scores, torch.tensor(alone), atol=1e-5, rtol=1e-5)
    assert metrics["reward/proxy_mean"] == pytest.approx(sum(alone) / 4, abs=1e-5)
