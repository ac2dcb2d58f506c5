"""Run directories never silently destroy each other: one run per --out (a lock naming its pid, a dead holder's
lock taken over), no overwrite without --overwrite, --resume only onto a checkpoint whose saved config matches,
a torn last metrics line dropped on resume, a killed run's temp files removed, checkpoints with the umask's mode."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from cs336_alignment.__main__ import main
from cs336_alignment.lm.checkpoint import save_checkpoint
from cs336_alignment.lm.rundir import LOCK_NAME, RunLock, config_difference
from cs336_alignment.train import pretrain as pretrain_loop
from cs336_alignment.train.common import read_metrics

TINY = ["--d-model", "16", "--num-layers", "1", "--num-heads", "2", "--d-ff", "32", "--context-length", "32",
        "--n-problems", "40", "--batch-size", "2", "--eval-every", "1000", "--log-every", "1", "--quiet",
        "--threads", "1", "--device", "cpu"]


def pretrain(out, *extra: str, steps: int = 2) -> int:
    return main(["pretrain", *TINY, "--out", str(out), "--num-steps", str(steps), *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def iteration(out) -> int:
    return torch.load(out / "ckpt.pt", weights_only=True)["iteration"]


@pytest.fixture
def holder(tmp_path):
    """Another live process holding tmp_path/run's lock; yields (run dir, its pid)."""
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from cs336_alignment.lm.rundir import RunLock
        RunLock.acquire({str(out)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_on_a_locked_out_exits_2_naming_the_holders_pid(holder, capsys):
    out, pid = holder
    assert pretrain(out) == 2
    line = one_error_line(capsys)
    assert str(out / LOCK_NAME) in line and f"pid {pid}" in line, line
    assert not (out / "metrics.jsonl").exists()  # nothing written beside the other run


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(holder, capsys):
    out, pid = holder
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert (out / LOCK_NAME).read_text().strip() == str(pid)  # the killed run never removed it
    assert pretrain(out) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of pid {pid}" in err
    assert not (out / LOCK_NAME).exists()  # released when the run ended


def test_the_lock_is_released_when_a_run_fails(tmp_path, capsys):
    assert pretrain(tmp_path, "--lr", "nan") == 2  # fails inside the loop
    capsys.readouterr()
    assert not (tmp_path / LOCK_NAME).exists()
    lock = RunLock.acquire(tmp_path)  # and can be taken again
    lock.release()


def test_an_existing_run_is_kept_without_overwrite_and_replaced_with_it(tmp_path, capsys):
    assert pretrain(tmp_path, steps=3) == 0
    before = ((tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "metrics.jsonl").read_text())
    assert pretrain(tmp_path, steps=2) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {tmp_path}: holds a run (ckpt.pt, metrics.jsonl)") and "--overwrite" in line
    assert ((tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "metrics.jsonl").read_text()) == before

    assert pretrain(tmp_path, "--overwrite", steps=2) == 0
    assert iteration(tmp_path) == 2 and len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert pretrain(tmp_path, "--resume") == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'ckpt.pt'}: --resume but there is no checkpoint")
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("flag,value,field", [("--seed", "1", "seed"), ("--d-model", "32", "d_model"),
                                              ("--n-problems", "41", "n_problems"),
                                              ("--data", "corpus.txt", "data")])
def test_resume_with_a_config_that_changes_the_run_is_an_error_naming_the_field(tmp_path, capsys, flag, value, field):
    out = tmp_path / "run"
    assert pretrain(out) == 0
    before = (out / "ckpt.pt").read_bytes()
    if flag == "--data":
        (tmp_path / value).write_text("some text " * 200)
        value = str(tmp_path / value)
    assert pretrain(out, "--resume", flag, value) == 2  # the same --num-steps: the flag is the one difference
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out / 'ckpt.pt'}: --resume with another config: field {field!r}"), line
    assert (out / "ckpt.pt").read_bytes() == before


def test_config_difference_ignores_only_fields_that_do_not_change_the_run():
    saved = {"seed": 0, "out": "a", "threads": 1, "device": "cpu", "quiet": False, "betas": [0.9, 0.95], "lr": 1e-3}
    assert config_difference(saved, {**saved, "out": "b", "threads": 4, "device": "cuda", "quiet": True}) is None
    assert config_difference(saved, {**saved, "betas": (0.9, 0.95)}) is None  # a tuple saved as a list
    assert config_difference(saved, {**saved, "lr": 2e-3}) == "field 'lr' is 0.002 here, 0.001 in the saved run"
    assert config_difference(saved, {**saved, "new_field": 1}) is None  # a field the checkpoint predates


def test_resume_drops_a_torn_last_metrics_line_and_says_so(tmp_path, capsys, monkeypatch):
    real_save = pretrain_loop.save_checkpoint

    def save_then_stop(*a, **k):  # the disk fills up right after step 2's checkpoint, mid-way through a line
        real_save(*a, **k)
        with (tmp_path / "metrics.jsonl").open("a") as f:
            f.write('{"step": 3, "loss/tr')
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_loop, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path, "--checkpoint-every", "2", steps=4)
    monkeypatch.setattr(pretrain_loop, "save_checkpoint", real_save)
    n_lines = len((tmp_path / "metrics.jsonl").read_text().splitlines())
    assert pretrain(tmp_path, "--resume", "--checkpoint-every", "2", steps=4) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'metrics.jsonl'}:{n_lines}: dropped a torn last line" in err
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert iteration(tmp_path) == 4


def test_a_torn_line_before_the_last_is_an_error_naming_it(tmp_path, capsys):
    assert pretrain(tmp_path, "--checkpoint-every", "1") == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert pretrain(tmp_path, "--resume", "--checkpoint-every", "1") == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'metrics.jsonl'}:2: malformed JSON")


def test_a_killed_runs_temp_files_are_removed_on_the_next_start(tmp_path, capsys):
    assert pretrain(tmp_path) == 0
    stale = [tmp_path / ".ckpt.pt.0123456789ab.partial", tmp_path / ".ckpt.pt.ba9876543210.partial"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.partial.txt"
    keep.write_text("mine")
    assert pretrain(tmp_path, "--overwrite") == 0
    assert not any(p.exists() for p in stale) and keep.exists()
    assert f"removed {stale[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_get_the_umasks_file_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(torch.nn.Linear(2, 2), None, 1, tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt.pt").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_pipeline_rerun_into_the_same_out_needs_overwrite_and_a_locked_out_is_refused(tmp_path, holder, capsys):
    """The pipeline's --out follows the loops' rules (its stages write their runs under it)."""
    out = tmp_path / "p"
    args = ["pipeline", "--preset", "smoke", "--out", str(out), "--jobs", "1", "--skip", "rm,grpo_gold,ei",
            "--threads", "1", "--device", "cpu"]
    assert main(args) == 0
    first = (out / "sft" / "ckpt.pt").read_bytes()
    assert main(args) == 2  # refused before any stage trains
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out}: holds a pipeline run (report.json, pretrain/ckpt.pt")
    assert "--overwrite" in line
    assert (out / "sft" / "ckpt.pt").read_bytes() == first
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["base_sft"] == "trained"
    assert not list(out.rglob(LOCK_NAME))  # every stage's lock and the pipeline's released

    locked, pid = holder
    assert main(["pipeline", "--preset", "smoke", "--out", str(locked), "--jobs", "1"]) == 2
    assert f"pid {pid}" in one_error_line(capsys)
