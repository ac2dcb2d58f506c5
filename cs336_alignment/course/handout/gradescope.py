"""Gradescope: the instructor's autograder zip and the student's submission zip.

    python -m cs336_alignment handout autograder autograder.zip   # setup.sh, run_autograder, helpers, handout/
    python -m cs336_alignment handout submit                      # (students) run the tests, zip the package

The shell and Python scripts that run on Gradescope are real files in `handout/scripts/`; the zip carries them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from cs336_alignment.course.handout.build import HIDDEN_TESTS, matches_any, is_skipped, build, list_files

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ZIP_SCRIPTS = ("setup.sh", "run_autograder", "no_results.py")   # at the zip's root
GRADED_MODULES = "graded_modules.json"   # at the zip's root: the package files with solution markers (judge.py)
SUBMIT_SKIP_FILES = ("*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "*.npz", "*.npy", "*.pyc", "*.zip")
SUBMIT_MAX_BYTES = 5_000_000
SUBMIT_RESULTS = "test_results.json"     # written by `submit`, zipped with the package, ignored by git


def autograder(zip_path: Path, repo: Path, *, package: str = "cs336_alignment", log=print) -> None:
    """Write the Gradescope autograder zip: setup.sh, run_autograder (+ helpers), a clean handout/ (hidden tests
    included: `tests/hidden/` is excluded from the student handout and kept here) and graded_modules.json (the
    package files the build stubbed: the only files judge.py takes from a submission)."""
    deps = tomllib.loads((repo / "pyproject.toml").read_text()).get("project", {}).get("dependencies", [])
    torch = next((d for d in deps if re.match(r"torch\b", d)), "torch")
    others = [d for d in deps if d != torch] + ["pytest>=8"]
    fill = {"@TORCH@": shlex.quote(torch), "@DEPS@": " ".join(map(shlex.quote, others)), "@PKG@": package}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "handout"
        result = build(repo, tree, keep=(HIDDEN_TESTS,), log=log)
        graded = sorted({f["file"] for f in result.functions if f["file"].startswith(package + "/")})
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for name in ZIP_SCRIPTS:
                text = (SCRIPTS / name).read_text()
                for key, value in fill.items():
                    text = text.replace(key, value)
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o100755 if not name.endswith(".py") else 0o100644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, text)
            z.writestr(GRADED_MODULES, json.dumps(graded, indent=1) + "\n")
            for rel in list_files(tree):
                z.write(tree / rel, f"handout/{rel}")
    log(f"wrote {zip_path}: setup.sh, run_autograder, handout/ (upload it as the Gradescope autograder)")


def submit(repo: Path, zip_path: Path, *, package: str = "cs336_alignment", run_tests: bool = True,
           pytest_args: list[str] | None = None, log=print) -> int:
    """Students: run the tests (grade table), then zip PACKAGE/ and notebooks/ without data, weights or caches."""
    repo = Path(repo).resolve()
    zip_path = Path(zip_path).resolve()
    results = repo / SUBMIT_RESULTS
    if run_tests:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "cs336_alignment.course.grading", f"--rootdir={repo}",
               f"--results-json={results}", *(pytest_args or ["-m", "not slow"])]
        subprocess.run(cmd, cwd=repo, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    names = []
    for top in (package, "notebooks"):
        for path in sorted((repo / top).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if not path.is_file() or is_skipped(rel) or "runs" in rel.split("/")[:-1] or matches_any(path.name, SUBMIT_SKIP_FILES):
                continue
            if path.stat().st_size > SUBMIT_MAX_BYTES:
                log(f"skipping {rel}: larger than {SUBMIT_MAX_BYTES // 1_000_000} MB")
                continue
            names.append(rel)
    if results.exists():
        names.append(results.relative_to(repo).as_posix())
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in names:
            z.write(repo / rel, rel)
    log(f"wrote {zip_path} ({len(names)} files, {zip_path.stat().st_size / 1e3:.0f} kB): upload it to Gradescope")
    return 0
