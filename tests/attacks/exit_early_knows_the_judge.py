# Attack written against the judge: from the first graded call, write a report in which the judge's canaries fail
# and every other collected test passes, symlink the judge's snapshot files to the clean handout's snapshots, then
# leave with exit status 0. The judge cannot tell this from an honest run for a test without a snapshot (its
# docstring says so), but every graded test owns one (tests/test_attacks.py checks it) and the judge reads no
# symlink: the forger scores 0.
import gc as _gc
import json as _json
import os as _os
import sys as _sys
from pathlib import Path as _Path

import pytest as _pytest


def _is_canary(path):
    return path.endswith(".py") and "must fail" in _Path(path).read_text()


def _link_snapshots(items):
    """Point the judge's snapshot files at the clean handout's snapshots (symlinks: readable by the judge)."""
    actuals, snapshots = _os.environ.get("CS336_SNAPSHOT_ACTUALS"), _Path(SNAPSHOT_DIR_GUESS)
    if not actuals or not snapshots.is_dir():
        return
    n = 0
    with open(_Path(actuals) / "index.jsonl", "a") as index:
        for item in items:
            function = item.nodeid.split("::")[-1].split("[")[0]
            for snap in snapshots.glob(function + "*.npz"):
                _os.symlink(snap, _Path(actuals) / f"{n}.npz")
                index.write(_json.dumps({"nodeid": item.nodeid, "name": snap.stem, "file": f"{n}.npz"}) + "\n")
                n += 1


def _forge_and_exit():
    session = next(o for o in _gc.get_objects() if isinstance(o, _pytest.Session))
    _link_snapshots(session.items)
    tests = [{"name": item.nodeid,
              "outcome": "failed" if _is_canary(item.nodeid.split("::")[0]) else "passed"} for item in session.items]
    for arg in _sys.argv:
        if arg.startswith("--results-json="):
            _Path(arg.split("=", 1)[1]).write_text(_json.dumps({"tests": tests}))
    _sys.stdout.flush()
    _os._exit(0)


_forge_and_exit()
