"""The main job end to end: `python -m cs336_alignment pipeline --preset smoke` into a temporary directory
runs every stage (pretrain, SFT, reward model, DPO, GRPO x2, PPO, best-of-N) and writes the report, the
plots and report.json with the numbers filled in; shipping base/SFT checkpoints is reproducible bit for bit."""
from __future__ import annotations

import hashlib
import json
import math

import pytest

from cs336_alignment import pipeline
from cs336_alignment.pipeline import PRESETS, main

STAGE_FILES = ("pretrain/ckpt.pt", "sft/ckpt.pt", "rm/ckpt.pt", "rm/preferences_train.jsonl",
               "rm/preferences_eval.jsonl", "dpo/ckpt.pt", "grpo_gold/ckpt.pt", "grpo_rm/ckpt.pt", "ppo/ckpt.pt",
               "bon/bon.json")


def test_smoke_pipeline_writes_report(tmp_path):
    out = tmp_path / "smoke"
    returned = main(["--preset", "smoke", "--out", str(out), "--threads", "1", "--device", "cpu"])

    for path in STAGE_FILES + ("report.md", "report.json", "training_curves.png", "overoptimization.png"):
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
        if path.endswith(".png"):
            assert (out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("pretrain", "sft", "rm", "dpo", "grpo_gold", "grpo_rm", "ppo", "bon"):
        assert (out / stage / "metrics.jsonl").is_file(), stage

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    n, pool = PRESETS["smoke"].eval_problems, PRESETS["smoke"].bon_pool
    models = report["models"]
    assert list(models)[:6] == ["base", "SFT", "GRPO (gold)", "GRPO (RM)", "PPO", "DPO"]
    assert [k for k in models if k.startswith("BoN-")][:3] == ["BoN-1", "BoN-2", "BoN-4"]
    for label, m in models.items():
        if m.get("accuracy/greedy") is not None:
            assert abs(m["accuracy/greedy"] * n - round(m["accuracy/greedy"] * n)) < 1e-9, label  # a count
    assert models["SFT"]["kl/sft"] == 0.0, "the SFT policy is its own reference"
    assert models["BoN-4"]["kl/sft"] == pytest.approx(math.log(4) - 3 / 4)
    assert {"rm/eval_accuracy", "rm/eval_ece", "rm/ceiling_accuracy"} <= set(report["rm"])
    assert len(report["bon"]["rows"]) == int(math.log2(pool)) + 1
    assert all(stage["wall_s"] > 0 for stage in report["stages"].values())

    md = (out / "report.md").read_text()
    assert "training_curves.png" in md and "overoptimization.png" in md
    for label in ("SFT", "PPO", "DPO", "BoN-4"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{models[label]['kl/sft']:.2f}" in row and f"{models[label]['response/length_mean']:.1f}" in row


def test_skip_and_unknown_stage(tmp_path):
    report = main(["--preset", "smoke", "--out", str(tmp_path), "--device", "cpu",
                   "--skip", "grpo_gold,grpo_rm,ppo,dpo"])
    assert set(report["models"]) >= {"base", "SFT", "BoN-1"} and "PPO" not in report["models"]
    with pytest.raises(ValueError, match="not a post-training stage"):
        main(["--preset", "smoke", "--out", str(tmp_path), "--skip", "sft"])


def test_ship_rebuilds_bit_for_bit(tmp_path, monkeypatch):
    digests = []
    for i in range(2):
        monkeypatch.setattr(pipeline, "SHIPPED", tmp_path / f"shipped{i}")
        main(["--preset", "smoke", "--out", str(tmp_path / f"run{i}"), "--device", "cpu", "--ship"])
        digests.append({f: hashlib.sha256((tmp_path / f"shipped{i}" / "smoke" / f).read_bytes()).hexdigest()
                        for f in ("base.pt", "sft.pt")})
    assert digests[0] == digests[1], "the shipped checkpoints are a pure function of the command"
    # A run then starts from the shipped models instead of training them.
    report = main(["--preset", "smoke", "--out", str(tmp_path / "from_shipped"), "--device", "cpu",
                   "--skip", "dpo,grpo_gold,grpo_rm,ppo,bon"])
    assert report["base_sft"] == "shipped" and "pretrain" not in report["stages"]
