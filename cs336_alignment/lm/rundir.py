"""Run directories that never silently destroy each other: one run per `--out` at a time (a lock file), an existing
run replaced only on `--overwrite`, `--resume` only onto a checkpoint whose saved config matches the run's, and the
temporary files of a killed run removed on the next start.

    lock = RunLock.acquire(out)        # RunDirError naming the holder's pid if another live process holds out/
    clean_stale_temps(out)             # .<name>.<hex>.partial files a killed save_checkpoint left behind
    prepare(out, resume=..., overwrite=..., config=asdict(cfg), ckpt_name="ckpt.pt")
    ...
    lock.release()

The lock is an fcntl.flock on <out>/.lock, which holds the holder's pid: the kernel drops it when the holder dies,
so a lock file left by a killed run is taken over (with a note on stderr) instead of blocking the directory for
good. Where fcntl is missing (Windows), a lock whose pid is still running counts as held.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: pid liveness only
    fcntl = None

LOCK_NAME = ".lock"
TEMP_SUFFIX = ".partial"  # checkpoint.save_checkpoint's temporary files: .<name>.<hex>.partial
RUN_FILES = ("ckpt.pt", "metrics.jsonl", "generations.jsonl", "adapter.pt")  # what makes a directory hold a run
# Config fields that do not change what a run computes: a resumed run may differ from the saved one in these.
NOT_RUN_FIELDS = frozenset({"out", "name", "resume", "overwrite", "threads", "device", "quiet", "log_every",
                            "checkpoint_every", "log_generations_every", "log_generations_samples", "log_to"})


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (held by another run, holds a run, nothing to resume, ...);
    the message names the directory or file and what to do."""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """The lock of one run directory, held until `release()` (or the holder's death)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: str | os.PathLike) -> RunLock:
        """Take <out>/.lock (creating `out`), writing this process's pid into it.

        Raises:
            RunDirError: "<out>/.lock: run directory in use by pid N ..." when a live process holds it.
        """
        path = Path(out) / LOCK_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            previous = os.read(fd, 64).decode("ascii", "replace").strip()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise RunDirError(f"{path}: run directory in use by pid {previous or '?'} (another run writes "
                                      f"to {path.parent}; wait for it or choose another --out)") from None
                try:  # the holder we waited on may have released and removed the file meanwhile: lock the live one
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            elif previous.isdigit() and int(previous) != os.getpid() and _pid_running(int(previous)):
                os.close(fd)
                raise RunDirError(f"{path}: run directory in use by pid {previous} (another run writes to "
                                  f"{path.parent}; wait for it or choose another --out)")
            break
        if previous:
            print(f"note: {path}: taking over the lock of pid {previous}, which is no longer running",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd < 0:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def clean_stale_temps(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary checkpoint files (.<name>.<hex>.partial) in `out` that a killed run left; call it
    holding the lock (no live save then writes there). Says so on stderr; returns the removed paths."""
    removed = sorted(p for p in Path(out).glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for p in removed:
        p.unlink()
        print(f"note: removed {p}, a temporary file of an interrupted run", file=sys.stderr)
    return removed


def holds_run(out: str | os.PathLike) -> list[str]:
    """The RUN_FILES present in `out` (empty: no run there)."""
    return [name for name in RUN_FILES if (Path(out) / name).exists()]


def config_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first field (in `current`'s order) outside NOT_RUN_FIELDS whose value differs from `saved`'s, as
    "field 'seed' is 1 here, 0 in the saved run"; None when they agree. Fields absent from `saved` (added since
    it was written) are not compared."""
    for key, value in current.items():
        if key in NOT_RUN_FIELDS or key not in saved:
            continue
        if saved[key] != value and not (isinstance(value, tuple) and list(value) == saved[key]):
            return f"field {key!r} is {value!r} here, {saved[key]!r} in the saved run"
    return None


def prepare(out: str | os.PathLike, resume: bool, overwrite: bool, can_resume: bool) -> None:
    """Check what a run may do with `out` before it writes anything (call it holding the lock).

    * `out` holds a run (RUN_FILES) and neither resume nor overwrite: RunDirError naming the files;
    * overwrite: the previous run's RUN_FILES are removed (other files stay until the run rewrites them);
    * resume without <out>/ckpt.pt: RunDirError.
    The saved config is compared by the caller (it loads the checkpoint): see `config_difference`.

    Raises:
        RunDirError: as above, or for resume together with overwrite.
    """
    out = Path(out)
    present = holds_run(out)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite: choose one (continue the run in --out, or replace it)")
    if resume:
        if not (out / "ckpt.pt").is_file():
            raise RunDirError(f"{out / 'ckpt.pt'}: --resume but there is no checkpoint to continue "
                              f"(drop --resume to start a new run)")
        return
    if present and not overwrite:
        how = "--resume to continue it or --overwrite" if can_resume else "--overwrite"
        raise RunDirError(f"{out}: holds a run ({', '.join(present)}): pass {how} to replace it, or choose "
                          f"another --out")
    if overwrite:
        for name in present:
            (out / name).unlink()
