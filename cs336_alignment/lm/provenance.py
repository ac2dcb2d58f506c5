"""Provenance of a checkpoint: which process wrote it, when, after how many steps and how much CPU, from what.

`checkpoint.save_checkpoint` stores `provenance_record(...)` under `extra["provenance"]` of every checkpoint, so
every training loop writes one (a caller may pass provenance=None: `stages.ship` does, so that the shipped models
stay a pure function of their command). The leaderboard (leaderboard.py) reads it back to tell a checkpoint that its
training command made during the run from one copied in:

    {"pid": 4242,                # the process that wrote it
     "written_at": 1765131000.5, # time.time() when it was written
     "steps": 120,               # the iteration saved with it
     "cpu_s": 431.2,             # user + system CPU seconds of that process and its waited-for children so far
     "init_sha256": "ab12..."}   # SHA-256 of the config's `init` checkpoint file (None: no init or not a file)

It imports nothing from the package (checkpoint.py, below everything that trains, imports it).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance_record(iteration: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record above for a checkpoint saved now at `iteration`; `config` is the run's config dict (its `init`
    names the checkpoint training started from). Only str/int/float/None values: weights_only-safe."""
    t = os.times()
    init = (config or {}).get("init") if isinstance(config, dict) else None
    init_sha = file_sha256(init) if isinstance(init, str) and init and Path(init).is_file() else None
    return {"pid": os.getpid(), "written_at": time.time(), "steps": int(iteration),
            "cpu_s": round(t.user + t.system + t.children_user + t.children_system, 3), "init_sha256": init_sha}
