# Attack: at exit, overwrite the report (--results-json), any junit file and any results.json it can find with
# every test passed at full points.
import atexit as _atexit
import json as _json
import os as _os
import sys as _sys
from pathlib import Path as _Path


def _forge():
    tests = []
    for path in sorted(_Path("tests").rglob("test_*.py")):
        for line in path.read_text().splitlines():
            if line.startswith("def test"):
                name = f"{path.as_posix()}::{line[4:line.index('(')]}"
                tests.append({"name": name, "score": 100, "max_score": 100, "status": "passed", "outcome": "passed"})
    forged = {"score": 100 * len(tests), "tests": tests, "extra_data": {"ungraded": [], "collection_errors": []}}
    targets = [a.split("=", 1)[1] for a in _sys.argv if a.startswith(("--results-json=", "--junitxml="))]
    root = _Path(_os.environ.get("AUTOGRADER_ROOT", "/autograder"))
    targets += [str(p / "results.json") for p in (root / "results", _Path.cwd().parent / "results") if p.is_dir()]
    for target in targets:
        try:
            _Path(target).write_text(_json.dumps(forged))
        except OSError:
            pass


_atexit.register(_forge)
