"""The leaderboard command: the CPU budget is enforced on the training command's process tree, the score's standard
error is right, and the code hash tracks the code. (The full command, training then scoring held-out problems, runs
at smoke size in tests/test_writeup.py.)"""
from __future__ import annotations

import math
import sys

import pytest

from cs336_alignment import leaderboard

BURN = "import sys, time\nopen(sys.argv[1], 'w').write('x')\nwhile True:\n    pass\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the budget is read from /proc (Linux)")
def test_a_training_command_is_stopped_at_its_cpu_budget(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    run = leaderboard.run_with_cpu_budget([sys.executable, "-c", BURN, str(ckpt)], budget_s=1.0, log=lambda *a: None)
    assert run["stopped_at_budget"] and run["cpu_s"] >= 1.0 and ckpt.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the budget is read from /proc (Linux)")
def test_children_of_the_training_command_count_too(tmp_path):
    parent = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BURN!r}, {str(tmp_path / 'c')!r}])\n"
    run = leaderboard.run_with_cpu_budget([sys.executable, "-c", parent], budget_s=1.0, log=lambda *a: None)
    assert run["stopped_at_budget"] and run["cpu_s"] >= 1.0


def test_a_command_under_budget_runs_to_the_end():
    run = leaderboard.run_with_cpu_budget([sys.executable, "-c", "print('done')"], budget_s=30.0, log=lambda *a: None)
    assert run["returncode"] == 0 and not run["stopped_at_budget"]


def test_accuracy_and_standard_error_hand_example():
    accuracy, se = leaderboard.accuracy_and_se([1.0, 0.0, 1.0, 1.0])
    assert accuracy == 0.75
    assert math.isclose(se, math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3 / 4))   # unbiased variance / n
    with pytest.raises(ValueError):
        leaderboard.accuracy_and_se([])


def test_code_hash_tracks_the_code(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = leaderboard.code_sha256(tmp_path)
    assert leaderboard.code_sha256(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert leaderboard.code_sha256(tmp_path) != before


def test_no_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        leaderboard.main(["--ckpt", str(tmp_path / "none.pt"), "--", sys.executable, "-c", "pass"])
    assert e.value.code == 2 and "wrote no checkpoint there" in capsys.readouterr().err
