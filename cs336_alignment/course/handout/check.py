"""`handout check`: the invert gate on a built handout (`nbgrader validate --invert`, rebuilt for pytest; STYLE §4.5).

    python -m cs336_alignment handout check OUT [PACKAGE]

Fails when a marker survives, a module does not import, a graded test does anything but fail with
NotImplementedError, an ungraded test neither passes nor is skipped, a solution body leaks (verbatim or renamed,
see leaks.py) or a measured result does, building again changes anything, or a notebook keeps outputs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cs336_alignment.course.handout.build import build, list_files, sidecar
from cs336_alignment.course.handout.leaks import clone_leaks, exact_leaks, result_leaks
from cs336_alignment.course.handout.markers import MARKER_RE, HandoutError

IMPORT_SCRIPT = Path(__file__).resolve().parent / "scripts" / "import_check.py"


def _env(out: Path) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # leave no __pycache__ in the handout
    env["PYTHONPATH"] = os.pathsep.join([str(out)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _check_markers(out: Path, files: list[str]) -> list[str]:
    bad = []
    for rel in (f for f in files if f.endswith((".py", ".ipynb"))):
        try:
            text = (out / rel).read_text(encoding="utf-8")
            if rel.endswith(".ipynb"):  # only code cells matter (markdown may explain markers)
                cells = json.loads(text).get("cells", [])
                text = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            bad.append(f"{rel}: unreadable ({type(e).__name__})")
            continue
        bad += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if MARKER_RE.match(line)]
    return bad


def _check_notebook_outputs(out: Path, files: list[str]) -> list[str]:
    bad = []
    for rel in (f for f in files if f.endswith(".ipynb")):
        try:
            cells = json.loads((out / rel).read_text()).get("cells", [])
        except json.JSONDecodeError:
            continue  # reported by the marker check
        for k, c in enumerate(cells):
            if c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count") is not None):
                bad.append(f"{rel} cell {k}: has outputs or an execution count")
    return bad


def _check_idempotent(out: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "again"
        try:
            res = build(out, again, log=lambda *a: None)
        except HandoutError as e:
            return [f"building from the handout fails: {e}"]
        a, b = set(list_files(out)), set(list_files(again))
        bad = [f"{rel}: left out when building from the handout (an excluded file was copied?)" for rel in sorted(a - b)]
        bad += [f"{rel}: changes when building from the handout" for rel in sorted(a & b)
                if (out / rel).read_bytes() != (again / rel).read_bytes()]
        if res.solution:
            bad.append(f"building from the handout strips {len(res.solution)} more solution lines")
        return bad


def _check_imports(out: Path, package: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(IMPORT_SCRIPT), package], cwd=out, env=_env(out),
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("IMPORT-RESULT:")), None)
    if line is None:
        return [f"the import script crashed:\n{(proc.stdout + proc.stderr)[-2000:]}"]
    r = json.loads(line[len("IMPORT-RESULT:"):])
    bad = [f"{name}: {tb.strip().splitlines()[-1]}" for name, tb in r["failed"].items()]
    if r["file"] and out.resolve() not in Path(r["file"]).resolve().parents:
        bad.append(f"`import {package}` found {r['file']}, not the handout's package")
    return bad


def _check_tests(out: Path, results_path: Path, slow: bool, nie_ok: bool, log) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "cs336_alignment.course.grading", "-p", "no:cacheprovider",
           f"--rootdir={out}", f"--results-json={results_path}"] + ([] if slow else ["-m", "not slow"])
    if results_path.exists():
        results_path.unlink()
    proc = subprocess.run(cmd, cwd=out, env=_env(out), capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    log(f"  pytest in the handout: {tail[-1] if tail else '(no output)'}")
    if not results_path.exists():
        return ["pytest wrote no results.json:\n" + "\n".join(tail[-30:])]
    r = json.loads(results_path.read_text())
    bad = [f"{e['name']}: collection error: {(e['output'].strip().splitlines() or [''])[-1]}"
           for e in r["extra_data"]["collection_errors"]]
    if not r["tests"]:
        bad.append("no graded tests were collected (@pytest.mark.points)")
    for t in r["tests"]:
        if t["outcome"] == "passed":
            bad.append(f"{t['name']}: graded test passes in the handout (free points)")
        elif t["outcome"] not in ("failed", "error") or "NotImplementedError" not in t["exception_chain"]:
            how = f"{t['outcome']} with {t['exception']}" if t["exception"] else t["outcome"]
            bad.append(f"{t['name']}: graded test {how}, not NotImplementedError")
    for t in r["extra_data"]["ungraded"]:
        if t["outcome"] in ("passed", "skipped", "xfailed"):
            continue
        if nie_ok and "NotImplementedError" in t["exception_chain"]:
            continue  # --stub-adapters (every adapter raises) or --allow-ungraded-nie
        bad.append(f"{t['name']}: ungraded test {t['outcome']}" + (f" with {t['exception']}" if t["exception"] else ""))
    total = sum(t["max_score"] for t in r["tests"])
    log(f"  handout score: {r['score']:g} / {total:g} points over {len(r['tests'])} graded tests")
    return bad


def graded_names(meta: dict) -> set[str]:
    """Names of the module-level functions whose bodies were stripped (methods are left out: `forward`...)."""
    return {f["function"] for f in meta.get("functions", []) if "." not in f["function"]}


def check(out: Path, package: str = "cs336_alignment", *, slow: bool = False, allow_ungraded_nie: bool = False,
          log=print) -> list[str]:
    """Run every check on a built handout; print a report and return the failures (empty when it is fine).

    1 markers: no BEGIN/END SOLUTION|INSTRUCTOR line in .py files or notebook code cells;
    2 imports: every module of `package` imports from the handout (pkgutil.walk_packages, in a subprocess);
    3 graded tests: each fails (or errors) with NotImplementedError somewhere in its exception chain;
    4 ungraded tests: each passes or is skipped (the grading plugin skips an ungraded test that needs an unfinished
      part, naming the part); failing with NotImplementedError is fine too when the handout was built with
      --stub-adapters (every adapter raises) or with allow_ungraded_nie;
    5 leaks: no solution line (a statement's first line or a comment; see leaks.is_generic) in any text file, and
      no renamed copy of a solution body (leaks.clone_leaks), and no measured result in a data README or a
      "Look for" line of the README (leaks.result_leaks);
    6 idempotence: building from the handout changes nothing;
    7 notebooks: no outputs or execution counts.
    Tests marked slow (notebooks) are deselected unless slow=True. The pytest results go to OUT.check-results.json.
    """
    out = Path(out).resolve()
    meta_path = sidecar(out, "solution-lines.json")
    if not out.is_dir() or not meta_path.exists():
        msg = f"{out} is not a built handout (no {meta_path.name} beside it): run `handout build` first"
        log(msg)
        return [msg]
    meta = json.loads(meta_path.read_text())
    files = list_files(out)
    log(f"handout check {out} ({len(files)} files, {meta['n_lines']} solution lines)")
    checks = [
        ("markers", lambda: _check_markers(out, files)),
        ("notebook outputs", lambda: _check_notebook_outputs(out, files)),
        ("idempotence", lambda: _check_idempotent(out)),
        ("solution leaks", lambda: exact_leaks(out, files, meta["lines"])),
        ("renamed copies", lambda: clone_leaks(out, files, meta["lines"], graded_names(meta))),
        ("results", lambda: result_leaks(out, files)),
        ("imports", lambda: _check_imports(out, package)),
        ("tests", lambda: _check_tests(out, sidecar(out, "check-results.json"), slow,
                                       allow_ungraded_nie or meta.get("stub_adapters", False), log)),
    ]
    failures = []
    for name, run in checks:
        bad = run()
        log(f"[{'FAIL' if bad else ' ok '}] {name}" + (f": {len(bad)} problem(s)" if bad else ""))
        for line in bad[:25]:
            log("         " + line.replace("\n", "\n         "))
        if len(bad) > 25:
            log(f"         ... and {len(bad) - 25} more")
        failures += [f"{name}: {b}" for b in bad]
    log(f"handout check: {'FAILED' if failures else 'passed'}")
    return failures
