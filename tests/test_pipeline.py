"""The main job end to end: `python -m cs336_alignment pipeline --preset smoke` into a temporary directory
writes the checkpoints, report.md, report.json and the loss-curve PNG, with the numbers filled in."""
from __future__ import annotations

import json

from cs336_alignment.pipeline import PRESETS, main


def test_smoke_pipeline_writes_report(tmp_path):
    out = tmp_path / "smoke"
    returned = main(["--preset", "smoke", "--out", str(out), "--threads", "1", "--device", "cpu"])

    for path in ("pretrain/ckpt.pt", "pretrain/metrics.jsonl", "sft/ckpt.pt", "sft/metrics.jsonl",
                 "report.md", "report.json", "loss_curves.png"):
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    n = PRESETS["smoke"].eval_problems
    assert report["n_test_problems"] == n
    assert report["models"]["base"]["format"] == "raw" and report["models"]["SFT"]["format"] == "chat"
    for metrics in report["models"].values():
        assert metrics["n"] == n
        for key in ("reward/gold_mean", "reward/format_mean"):
            assert 0.0 <= metrics[key] <= 1.0
            assert abs(metrics[key] * n - round(metrics[key] * n)) < 1e-9  # a count of problems out of n
        assert metrics["response/length_mean"] >= 0
    assert set(report["stages"]) == {"pretrain", "sft", "eval"}
    assert all(stage["wall_s"] > 0 for stage in report["stages"].values())

    md = (out / "report.md").read_text()
    assert f"{n} problems" in md and "loss_curves.png" in md
    for label, metrics in report["models"].items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{100 * metrics['reward/gold_mean']:.1f}%" in row  # the table shows report.json's numbers
        assert f"{metrics['response/length_mean']:.1f}" in row
