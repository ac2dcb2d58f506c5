"""The hallucination lesson end to end at smoke size (`pipeline --preset hallucination_smoke`): every stage runs,
every model is measured on held-out facts, and report.json / report.md / the plot are written."""
from __future__ import annotations

import json
import math

import pytest

from cs336_alignment.pipeline.hallucination import preset, schedule
from cs336_alignment.pipeline.runner import main


@pytest.mark.slow
def test_hallucination_smoke_writes_its_report(tmp_path):
    report = main(["--preset", "hallucination_smoke", "--out", str(tmp_path), "--jobs", "2"])  # worker processes
    assert set(report["runs"]) == {"sft_answer", "sft_abstain", "sft_omit", "rl_p0", "rl_p3"}
    for run in report["runs"].values():
        m = run["metrics"]
        assert m["knowledge/n_known"] > 0 and m["knowledge/n_unknown"] > 0
        for key in ("accuracy_known", "false_abstention_rate", "fabrication_rate", "abstention_rate"):
            assert 0.0 <= m[f"knowledge/{key}"] <= 1.0 and not math.isnan(m[f"knowledge/{key}_se"])
        # an unknown-fact response is an abstention, a fabrication or neither (malformed): never both
        assert m["knowledge/fabrication_rate"] + m["knowledge/abstention_rate"] <= 1.0 + 1e-9
    assert json.loads((tmp_path / "report.json").read_text())["runs"].keys() == report["runs"].keys()
    assert "| sft_abstain |" in (tmp_path / "report.md").read_text()
    assert report["jobs"] == 2 and set(report["seconds"]) >= {"midtrain", "sft_omit", "rl_p3", "eval rl_p3"}
    for name in ("rl_p0", "rl_p3"):  # the GRPO runs' logs: the fraction of groups with one reward (no signal)
        assert 0.0 <= report["runs"][name]["rl_log"]["zero_variance_fraction"] <= 1.0
    assert report["world"]["rl_facts"] > 0 and report["world"]["sft_facts"] > 0
    assert (tmp_path / "accuracy_vs_abstention.png").stat().st_size > 0


def test_smoke_preset_is_smaller_than_the_lesson():
    smoke, full = preset("hallucination_smoke"), preset("hallucination")
    assert smoke.mid_steps < full.mid_steps and smoke.sft_steps < full.sft_steps and smoke.rl_steps < full.rl_steps


def test_schedule_runs_a_task_after_the_one_it_needs():
    ran = []

    def step(name: str) -> str:
        ran.append(name)
        return name.upper()

    tasks = {"eval b": (step, ("eval b",), "b"), "b": (step, ("b",), "a"), "a": (step, ("a",), None),
             "c": (step, ("c",), None)}
    results, seconds = schedule(tasks, jobs=1)  # this process: the order is observable
    assert results == {"a": "A", "b": "B", "c": "C", "eval b": "EVAL B"}
    assert ran.index("a") < ran.index("b") < ran.index("eval b") and set(seconds) == set(tasks)
    assert all(s["wall_s"] >= 0 and s["cpu_s"] >= 0 for s in seconds.values())
    with pytest.raises(ValueError, match="needs 'z'"):
        schedule({"a": (step, ("a",), "z")}, jobs=1)
