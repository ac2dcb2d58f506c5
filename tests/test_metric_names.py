"""One metric vocabulary: every name a loop logs is in the README's table, with its meaning and units.

The smoke pipeline test checks every stage's metrics.jsonl against the table; here the options it does not
exercise (GRPO's KL term, PPO's adaptive KL), and the names the report and its plots read."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cs336_alignment.pipeline import report

from cs336_alignment.pipeline import stages
from cs336_alignment.lm.checkpoint import save_checkpoint
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train import grpo, ppo
from cs336_alignment.train.common import read_metrics
from tests.metric_names import IS_LIBRARY_README, NOT_IN_HANDOUT, documented_names, metric_table, undocumented

pytestmark = pytest.mark.skipif(not IS_LIBRARY_README, reason=NOT_IN_HANDOUT)


def test_every_row_has_names_loops_meaning_and_units():
    rows = metric_table()
    assert len(rows) > 30
    names = [name for row in rows for name in row[0].replace("`", "").split(", ")]
    assert len(names) == len(set(names)), "a name listed twice"
    for row in rows:
        assert len(row) == 4 and all(row), row
    held_out = [n for n in names if "eval" in n]
    assert all(n.startswith("eval/") for n in held_out), "one held-out prefix"
    assert [n for n in names if n.startswith("kl/") or "/kl/" in n] == ["kl/ref", "kl/ref_per_token", "kl/coef",
                                                                       "eval/kl/ref"]


def test_names_the_report_reads_are_documented():
    curves = {key for stage in stages.STAGES.values() if stage.curves for key in stage.curves[0] + stage.curves[1]}
    assert curves | set(report.SFT_EVAL_KEYS) <= documented_names()


def test_rl_options_log_documented_names(tmp_path):
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=32, num_layers=1,
                               num_heads=2, d_ff=64)
    init = tmp_path / "init.pt"
    save_checkpoint(TransformerLM(config), None, 0, init, model_config=dataclasses.asdict(config))
    common = dict(init=str(init), num_steps=2, prompts_per_step=2, group_size=4, n_problems=8, n_eval_problems=2,
                  max_new_tokens=3, eval_every=1, quiet=True)
    grpo.train(grpo.GRPOConfig(out=str(tmp_path / "grpo"), kl_coef=0.1, loss_type="reinforce_with_baseline",
                               drop_zero_variance_groups=False, **common),
               reward_fn=lambda response, truth: {"reward": float(len(response) % 2)})
    ppo.train(ppo.PPOConfig(out=str(tmp_path / "ppo"), reward="gold", target_kl=1.0, ent_coef=0.01, **common))
    paths = [tmp_path / "grpo" / "metrics.jsonl", tmp_path / "ppo" / "metrics.jsonl"]
    assert any("kl/ref_per_token" in r for r in read_metrics(paths[0]))
    assert not undocumented(paths)
