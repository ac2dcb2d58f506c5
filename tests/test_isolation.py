"""One broken module costs only the tests that need it: a syntax error planted in the solution's advantages.py
costs the parts whose code is in it (4.1, 6.1) or imports it (6.3: grpo_step.py calls 6.1's functions) and leaves
every other part at full points, run locally and through the Gradescope autograder.

The handout is built from this repository and the reference solution is put back in as a student would submit it
(the autograder's overlay of cs336_alignment/**/*.py), so every test that does not need advantages.py passes.
Marked slow (it runs the graded suite twice, about a minute each); CI runs it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import cs336_alignment
from cs336_alignment.course.handout import autograder, build
from cs336_alignment.course.handout.writeup import load as load_writeup

REPO_ROOT = Path(cs336_alignment.__file__).resolve().parents[1]
BROKEN = "advantages.py"
BROKEN_PART = "4.1 Advantages (GRPO, RLOO, GAE)"
# every part whose tests import advantages.py: its own functions (4.1, 6.1) or a module that imports it (6.3)
BROKEN_PARTS = {BROKEN_PART, "6.1 Rollout rewards and group normalisation", "6.3 GRPO train step"}
LOCAL_TESTS = ["tests/test_masked.py", "tests/test_sft.py", "tests/test_advantages.py", "tests/test_policy_losses.py",
               "tests/test_dpo.py"]

pytestmark = pytest.mark.slow


def _student_package(dest: Path) -> None:
    """The reference solution as a student submission, with a syntax error planted in advantages.py."""
    shutil.copytree(REPO_ROOT / "cs336_alignment", dest, ignore=shutil.ignore_patterns("__pycache__"))
    with open(dest / BROKEN, "a") as f:
        f.write("\n\ndef half_written(rewards:\n    return rewards\n")


def _points_by_part(results: dict) -> dict[str, tuple[float, float]]:
    parts: dict[str, list[float]] = {}
    for t in results["tests"]:
        score, total = parts.setdefault(t["tags"][0], [0.0, 0.0])
        parts[t["tags"][0]] = [score + t["score"], total + t["max_score"]]
    return {k: (round(s, 2), round(m, 2)) for k, (s, m) in parts.items()}


def _assert_isolated(results: dict, parts_expected: set[str]) -> None:
    writeup_points = load_writeup(REPO_ROOT / "cs336_alignment/course/handout/writeup.md").points_by_part()
    parts = _points_by_part(results)
    assert parts_expected <= set(parts), sorted(parts)
    for part, (score, max_score) in parts.items():
        if part in BROKEN_PARTS:
            assert score == 0 and max_score == writeup_points[part], (part, score, max_score)
        else:
            assert score == max_score > 0, f"{part}: {score} / {max_score}: a syntax error elsewhere cost points"
    broken = [t for t in results["tests"] if t["tags"][0] in BROKEN_PARTS]
    assert broken and all(t["exception"] == "SyntaxError" for t in broken), broken[:1]
    assert "could not be collected" in results["output"]


def test_syntax_error_costs_only_its_part_locally(tmp_path):
    out = tmp_path / "handout"
    build(REPO_ROOT, out, log=lambda *a: None)
    shutil.rmtree(out / "cs336_alignment")
    _student_package(out / "cs336_alignment")
    env = dict(os.environ, PYTHONPATH=str(out), PYTHONDONTWRITEBYTECODE="1")
    results_path = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={out}",
                           f"--results-json={results_path}", *LOCAL_TESTS], cwd=out, env=env,
                          capture_output=True, text=True, timeout=900)
    assert results_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_isolated(json.loads(results_path.read_text()),
                     {"2.2 Masked reductions", "2.3 SFT", BROKEN_PART, "4.2 Policy losses (REINFORCE, GRPO, PPO)",
                      "5.1 DPO"})


def test_syntax_error_costs_only_its_part_on_gradescope(tmp_path):
    zip_path = tmp_path / "autograder.zip"
    autograder(zip_path, REPO_ROOT, log=lambda *a: None)
    root = tmp_path / "ag"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root / "source")
    _student_package(root / "submission" / "my-repo" / "cs336_alignment")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root))
    env.pop("PYTHONPATH", None)
    env["PYTHONPATH"] = ""                                                # only the handout's package is importable
    proc = subprocess.run(["bash", str(root / "source/run_autograder")], env=env, capture_output=True, text=True,
                          timeout=1800)
    results = json.loads((root / "results/results.json").read_text())
    assert "tests" in results, proc.stdout[-3000:]
    writeup = load_writeup(REPO_ROOT / "cs336_alignment/course/handout/writeup.md")
    _assert_isolated(results, set(writeup.points_by_part()))
    expected_total = sum(v for part, v in writeup.points_by_part().items() if part not in BROKEN_PARTS)
    assert results["score"] == round(expected_total, 2), results["score"]
