"""Smoke run of the DPO stage on a tiny random model (a few CPU seconds): the DPO loss starts at log 2 (policy ==
reference) and falls. The fixtures (a tiny checkpoint, learnable preference pairs) are test_train_rm_bon.py's.
"""
from __future__ import annotations

import math

from cs336_alignment.train import dpo
from cs336_alignment.train.common import read_metrics
from test_train_rm_bon import pref_files, tiny_ckpt  # noqa: F401  (pytest fixtures)


def test_dpo_smoke_loss_starts_at_log2_and_falls(tiny_ckpt, pref_files, tmp_path):
    cfg = dpo.DPOConfig(init=tiny_ckpt, out=str(tmp_path), data=pref_files[0], eval_data=pref_files[1],
                        num_steps=16, batch_size=16, lr=3e-3, warmup_steps=1, log_every=4, eval_every=8,
                        n_gold_problems=2, max_new_tokens=8, quiet=True)
    result = dpo.train(cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["step"] == 0 and abs(records[0]["eval/loss"] - math.log(2)) < 1e-5, "policy == reference"
    losses = [r["loss/train"] for r in records if "loss/train" in r]
    assert losses[-1] < losses[0], "DPO loss falls"
    assert result["dpo/margin"] > 0 and result["eval/loss"] < math.log(2), "chosen gains on rejected, held out too"
    assert (tmp_path / "ckpt.pt").exists()


def test_dpo_reference_log_probs_match_each_drawn_pair(tiny_ckpt, pref_files, tmp_path):
    """lr = 0: the policy stays the reference, so every step's loss is log 2 only if the reference log-probs
    (computed the first time a step draws a pair, reused after) belong to the pairs that step drew. 48 pairs,
    7 steps of 16: the run wraps into a second epoch, so cached pairs are reused."""
    cfg = dpo.DPOConfig(init=tiny_ckpt, out=str(tmp_path), data=pref_files[0], eval_data=pref_files[1],
                        num_steps=7, batch_size=16, lr=0.0, min_lr=0.0, warmup_steps=0, log_every=1, eval_every=0,
                        n_gold_problems=0, quiet=True)
    dpo.train(cfg)
    losses = [r["loss/train"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss/train" in r]
    assert len(losses) == 7
    assert all(abs(x - math.log(2)) < 1e-5 for x in losses), losses
