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
