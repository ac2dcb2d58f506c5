"""The leaderboard command: the CPU budget is enforced on the training command's process tree, the score's standard
error is right, the code hash tracks the code, and only a checkpoint the command wrote during the run is scored. (The full command, training then scoring held-out problems, runs
at smoke size in tests/test_writeup.py.)"""
from __future__ import annotations

import hashlib
import math
import os
import sys

import pytest
import torch

from cs336_alignment.course import leaderboard

from cs336_alignment.lm import provenance
from cs336_alignment.lm.checkpoint import save_checkpoint

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


# ---------------------------------------------------------------------------------------------------------
# Provenance: only a checkpoint the command made during the run is scored
# ---------------------------------------------------------------------------------------------------------

SAVE = ("import sys, torch\nfrom cs336_alignment.lm.checkpoint import save_checkpoint\n"
        "save_checkpoint(torch.nn.Linear(2, 2), None, 3, sys.argv[1], config={'init': sys.argv[2]})\n")


def _save_here(path):
    save_checkpoint(torch.nn.Linear(2, 2), None, 7, path)


def test_the_provenance_record_names_the_writer_steps_cpu_and_init(tmp_path):
    init = tmp_path / "init.pt"
    init.write_bytes(b"weights")
    record = provenance.provenance_record(5, {"init": str(init)})
    assert record["pid"] == os.getpid() and record["steps"] == 5 and record["cpu_s"] > 0
    assert record["init_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert provenance.provenance_record(0, {"init": ""})["init_sha256"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process tree is read from /proc (Linux)")
def test_a_checkpoint_the_command_writes_passes_and_a_forged_one_does_not(tmp_path):
    ckpt, init = tmp_path / "ckpt.pt", tmp_path / "init.pt"
    init.write_bytes(b"init")
    run = leaderboard.run_with_cpu_budget([sys.executable, "-c", SAVE, str(ckpt), str(init)], 60.0, log=lambda *a: None)
    record, refused = leaderboard.check_provenance(ckpt, run)
    assert refused is None and record["steps"] == 3 and record["pid"] in run["pids"]
    assert record["init_sha256"] == hashlib.sha256(b"init").hexdigest()
    assert leaderboard.check_provenance(ckpt, {**run, "cpu_s": record["cpu_s"] - 10})[1].startswith("claims")
    assert "before the training command started" in leaderboard.check_provenance(ckpt, {**run, "start": run["end"]})[1]
    torch.save({"model": {}, "optimizer": None, "iteration": 1, "extra": {}}, tmp_path / "bare.pt")
    assert "no provenance record" in leaderboard.check_provenance(tmp_path / "bare.pt", run)[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process tree is read from /proc (Linux)")
def test_a_copied_checkpoint_is_refused_with_one_line(tmp_path, capsys):
    trained = tmp_path / "trained.pt"
    _save_here(trained)                                   # a real checkpoint, written by another process (this one)
    ckpt = tmp_path / "lb" / "ckpt.pt"
    ckpt.parent.mkdir()
    with pytest.raises(SystemExit) as e:
        leaderboard.main(["--ckpt", str(ckpt), "--", "bash", "-c", f"cp {trained} {ckpt}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "refused" in err and "not in the training command's process tree" in err


def test_a_checkpoint_that_exists_before_the_run_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    _save_here(ckpt)
    with pytest.raises(SystemExit) as e:
        leaderboard.main(["--ckpt", str(ckpt), "--", sys.executable, "-c", "pass"])
    assert e.value.code == 2 and "exists before the run" in capsys.readouterr().err
