"""The Gradescope judge: score a submission from a process its code never runs in (run_autograder calls it).

    python -m cs336_alignment.course.handout.judge --handout H --graded graded_modules.json --submission S \
        --results results.json [-- PYTEST ARGS]

The student's code and pytest run in a child process; this (trusted) process decides every score:

1. Before any submitted code runs, it reads what it trusts from the clean handout H: the graded tests and their
   points (`pytest --collect-only` on H, whose graded modules are stubs), the snapshots (into memory), and a hash
   of every file. Only the *graded modules* (graded_modules.json: the files the handout build stubbed, i.e. the
   files with solution markers) are copied from the submission onto a copy of H; nothing else of a submission
   (`__init__.py`, `grading.py`, `conftest.py`, tests) reaches the grading tree. The copy has no snapshots.
2. The child runs pytest on that copy. As root, the child runs as `nobody`: the copy is root-owned and read-only
   to it, and H (snapshots, pristine tests), the submission and the results folder are mode 0700. The child's
   snapshot fixture writes the arrays it would compare into a scratch folder instead (`CS336_SNAPSHOT_ACTUALS`).
   Randomly named canary tests, which must fail (an `assert`, `torch.testing.assert_close`, `np.allclose`), are
   added to the run.
3. The child's own report is evidence, not the verdict. A graded test earns its points only when (a) the child
   reports it passed, (b) every snapshot the test wrote matches the snapshot in memory here (same keys, shapes,
   values within rtol=1e-4 / atol=1e-5), and a test whose function owns snapshots (its `assert_match` names
   them, read from the clean test source) wrote at least one of its own, and (c) the run was not tampered with: every canary
   was reported failed, and no test or other non-graded file of the copy changed and no test file was added.
   Tests the child did not report (it exited early) score 0; tests the child invented are ignored; points come
   from the collection in step 1. This process writes results.json, after the child's process group is killed.

What this still cannot prevent, plainly:
  * The child's report is written in the process the submission runs in. A submission written against this judge
    (it recognises the canaries in its own process and forges "passed" only for the real tests) would earn the
    points of every graded test that has no snapshot, without the work. Every graded test owns one (all 145 code
    points; tests/test_attacks.py fails on a graded test without one), and their values are compared here, so
    such a forger earns what its honest functions earn (0 for stubs).
  * Hard-coding the handout's own snapshot values for the handout's own test inputs (the student has both) passes
    those snapshot checks; only hidden tests with other inputs (tests/hidden/) catch that.
  * Without root (CI, laptops), or when `nobody` cannot run this Python (as in a Python under a 0700 home
    directory; the judge says so in one line): the child runs as the same user, so it can read the clean handout
    (its snapshots and tests), write anywhere that user can, and a process that leaves its session (setsid) can
    outlive the run and rewrite results.json afterwards. The in-memory snapshots, the hashes taken before the run
    and the canaries still hold.
  * Resource abuse (a fork bomb, filling the disk) is left to the container's limits.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cs336_alignment.course.grading import OUTPUT_LIMIT, SCORE_DECIMALS, TestRecord, grade_table, redact

SNAPSHOTS = "tests/_snapshots"
ACTUALS_ENV = "CS336_SNAPSHOT_ACTUALS"
RTOL, ATOL = 1e-4, 1e-5            # the loosest tolerance any snapshot test uses
CHILD_TIMEOUT_S = 3600
MAX_REPORT_BYTES = 50_000_000
UNPRIVILEGED_USER = "nobody"

CANARY = '''"""Canaries of the judge (handout/judge.py): each must fail; one reported passed means the run was tampered."""
import numpy as np
import pytest

PART = "canary {tag}"


@pytest.mark.points(1)
def test_{tag}_assert():
    assert [1, 2] == [1, 3]


@pytest.mark.points(1)
def test_{tag}_assert_close():
    import torch
    torch.testing.assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))


@pytest.mark.points(1)
def test_{tag}_allclose():
    assert np.allclose(np.array([1.0, 2.0]), np.array([1.0, 3.0]))
'''
CANARY_TESTS = ("assert", "assert_close", "allclose")


# ---------------------------------------------------------------------------------------------------------
# What the judge reads before any submitted code runs
# ---------------------------------------------------------------------------------------------------------

def file_hashes(tree: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `tree` (caches excluded)."""
    return {p.relative_to(tree).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def load_snapshots(handout: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted((handout / SNAPSHOTS).glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out[path.stem] = {k: z[k] for k in z.files}
    return out


def collect(handout: Path, pytest_args: list[str]) -> dict:
    """The graded tests, their points and parts: pytest --collect-only on the clean handout (stubs, our code)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "collected.json"
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join([str(handout)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                               "-p", "cs336_alignment.course.grading", f"--rootdir={handout}", f"--results-json={out}",
                               *pytest_args], cwd=handout, env=env, capture_output=True, text=True)
        if not out.exists():
            raise SystemExit(f"judge: error: the clean handout's tests do not collect:\n{proc.stdout[-3000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------------
# The grading tree and the child
# ---------------------------------------------------------------------------------------------------------

def overlay(submission: Path, tree: Path, graded: list[str], log=print) -> None:
    """Copy the submission's graded modules (and nothing else) onto `tree`. The shallowest package folder wins."""
    package = graded[0].split("/")[0]
    found = sorted((p for p in submission.rglob(package) if p.is_dir() and not p.is_symlink()
                    and "__MACOSX" not in p.parts), key=lambda p: len(p.parts))
    if not found:
        log(f"no {package}/ folder in the submission: grading the untouched handout")
        return
    for rel in graded:
        src = found[0] / Path(rel).relative_to(package)
        if src.is_file() and not src.is_symlink():
            shutil.copyfile(src, tree / rel)
            log(f"using the submitted {rel}")
    ignored = sorted(p.relative_to(found[0]).as_posix() for p in found[0].rglob("*.py")
                     if f"{package}/{p.relative_to(found[0]).as_posix()}" not in graded and "__pycache__" not in p.parts)
    if ignored:
        log(f"ignored (only graded modules are used): {', '.join(ignored)}")


def _unprivileged():
    """preexec_fn dropping the child to `nobody` (root only), or None where that is not possible."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam(UNPRIVILEGED_USER)

    def drop():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    try:
        ok = subprocess.run([sys.executable, "-c", "import pytest"], preexec_fn=drop, capture_output=True).returncode == 0
    except OSError:
        ok = False
    if not ok:
        print(f"judge: warning: {UNPRIVILEGED_USER} cannot run {sys.executable}; the submission runs as root, so "
              f"the clean handout, its snapshots and the results folder are NOT hidden from it", flush=True)
        return None
    return drop


def run_child(tree: Path, scratch: Path, pytest_args: list[str], drop, log_path: Path) -> int | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOGRADER", "CS336"))}
    env.update(PYTHONPATH=os.pathsep.join([str(tree)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               PYTHONDONTWRITEBYTECODE="1", HOME=str(scratch), TMPDIR=str(scratch / "tmp"),
               **{ACTUALS_ENV: str(scratch / "actuals")})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tree}",
           "-p", "cs336_alignment.course.grading", f"--results-json={scratch / 'report.json'}", *pytest_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=drop)
        try:
            proc.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)        # whatever the run left behind in its session
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode


def read_untrusted(path: Path, limit: int = MAX_REPORT_BYTES) -> bytes | None:
    """The bytes of a file the child wrote, or None unless it is a regular file (no symlink, FIFO or device) of at
    most `limit` bytes in a folder that is not a symlink either: the child must not make us read for it."""
    try:
        if path.parent.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or os.fstat(f.fileno()).st_size > limit:
                return None
            return f.read(limit + 1)[:limit]
    except OSError:
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(read_untrusted(path) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------------------

def snapshot_owners(handout: Path, names) -> dict[str, str]:
    """{snapshot name: "tests/test_x.py::test_function" that compares it}, read from the clean tests' source: the
    test whose `.assert_match(value, NAME)` names the snapshot exactly, or whose f-string NAME has the longest
    literal prefix the snapshot's name starts with. A snapshot no test names has no owner (it is still compared
    when a test writes it)."""
    calls = []                                                  # (owner, literal name or f-string prefix, exact)
    for path in sorted((handout / "tests").rglob("test_*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for fn in (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            owner = f"{path.relative_to(handout).as_posix()}::{fn.name}"
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "assert_match"):
                    continue
                arg = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "name"), None)
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    calls.append((owner, arg.value, True))
                elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                    calls.append((owner, str(arg.values[0].value), False))
    owners = {}
    for name in names:
        exact = [o for o, text, is_exact in calls if is_exact and text == name]
        prefixed = sorted((len(text), o) for o, text, is_exact in calls if not is_exact and name.startswith(text))
        if exact or prefixed:
            owners[name] = exact[0] if exact else prefixed[-1][1]
    return owners


def _matches(path: Path, expected: dict[str, np.ndarray]) -> bool:
    data = read_untrusted(path)
    if data is None:
        return False
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return set(z.files) == set(expected) and all(
                z[k].shape == v.shape and np.allclose(z[k], v, rtol=RTOL, atol=ATOL, equal_nan=True)
                for k, v in expected.items())
    except Exception:          # noqa: BLE001 - anything the child wrote that is not a matching array fails
        return False


def snapshot_verdicts(actuals: Path, snapshots: dict, owners: dict[str, str],
                      nodeids: list[str]) -> dict[str, str | None]:
    """{nodeid: None when its snapshots hold, else the reason} for every graded test (owners: snapshot_owners)."""
    owned = set(owners.values())
    written: dict[str, list[tuple[str, bool]]] = {}
    lines = (read_untrusted(actuals / "index.jsonl") or b"").decode("utf-8", "replace").splitlines()
    for line in lines:
        try:
            rec = json.loads(line)
            nodeid, name, file = str(rec["nodeid"]), str(rec["name"]), str(rec["file"])
        except (ValueError, KeyError, TypeError):
            continue
        ok = name in snapshots and "/" not in file and _matches(actuals / file, snapshots[name])
        written.setdefault(nodeid, []).append((name, ok))
    verdicts = {}
    for nodeid in nodeids:
        function, mine = nodeid.split("[")[0], written.get(nodeid, [])
        bad = [name for name, ok in mine if not ok]
        if bad:
            verdicts[nodeid] = f"the judge: snapshot {bad[0]} does not match"
        elif function in owned and not any(owners.get(name) == function for name, _ in mine):
            verdicts[nodeid] = "the judge: this test wrote none of its snapshots"
        else:
            verdicts[nodeid] = None
    return verdicts


def tampering(tree: Path, before: dict[str, str], graded: list[str], canary: str, tag: str, report: dict) -> str | None:
    """Why the child's report cannot be believed, or None."""
    entries = {e.get("name"): e for e in report.get("tests", []) if isinstance(e, dict)}
    for test in CANARY_TESTS:
        entry = entries.get(f"{canary}::test_{tag}_{test}", {})
        if entry.get("outcome") != "failed":
            return f"a canary test that must fail was reported {entry.get('outcome', 'missing')}"
    after = file_hashes(tree)
    for rel, digest in before.items():
        if rel not in graded and rel != canary and after.get(rel) != digest:
            return f"{rel} was changed during the run"
    planted = sorted(rel for rel in after if rel.startswith("tests/") and rel not in before and rel != canary)
    return f"{planted[0]} was added during the run" if planted else None


def verdict(collected: dict, report: dict, snapshots: dict, owners: dict[str, str], actuals: Path,
            tamper: str | None) -> dict:
    """results.json: the collection's graded tests, each scored from the child's report and the checks above."""
    child = {e.get("name"): e for e in report.get("tests", []) if isinstance(e, dict)}
    tests = [dict(t) for t in collected.get("tests", [])]
    checks = snapshot_verdicts(actuals, snapshots, owners, [t["name"] for t in tests])
    records = []
    for t in tests:
        entry = child.get(t["name"], {})
        outcome = entry.get("outcome") if isinstance(entry.get("outcome"), str) else "not run"
        # A module that could not be collected is reported per function, without parametrize ids: its failure
        # text and exception are shown on every case (the outcome only ever comes from the exact test).
        entry = entry or child.get(t["name"].split("[")[0], {})
        note = tamper and f"the judge: the run was tampered with ({tamper}); no test counts"
        note = note or (checks[t["name"]] if outcome == "passed" else None)
        passed = outcome == "passed" and note is None
        output = redact(str(entry.get("output", "")))[-OUTPUT_LIMIT:]
        t.update(score=t["max_score"] if passed else 0.0, status="passed" if passed else "failed",
                 outcome=outcome if note is None else "failed", output=(note + "\n" + output).strip() if note else output,
                 exception=entry.get("exception") if isinstance(entry.get("exception"), str) else None,
                 exception_chain=[str(x) for x in entry.get("exception_chain", [])][:20]
                 if isinstance(entry.get("exception_chain"), list) else [])
        records.append(TestRecord(nodeid=t["name"], points=t["max_score"], graded=True,
                                  part=(t.get("tags") or [None])[0], hidden=False, outcome=t["outcome"]))
    output = "\n".join(grade_table(records))
    extra = report.get("extra_data") if isinstance(report.get("extra_data"), dict) else {}
    raw = extra.get("collection_errors") if isinstance(extra.get("collection_errors"), list) else []
    errors = [{"name": str(e.get("name")), "output": redact(str(e.get("output", "")))[-OUTPUT_LIMIT:]}
              for e in raw[:100] if isinstance(e, dict)]
    names = [e["name"] for e in errors]
    if names:
        output += f"\n{len(names)} test module(s) could not be collected: " + ", ".join(names)
    if tamper:
        output += f"\nThe run was tampered with ({tamper}): every test scores 0."
    total = round(sum(t["score"] for t in tests), SCORE_DECIMALS)
    return {"score": total + 0.0, "output": output.strip(), "tests": tests,
            "extra_data": {"ungraded": [], "collection_errors": errors}}


# ---------------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------------

def judge(handout: Path, graded: list[str], submission: Path, results: Path, pytest_args: list[str],
          log=print, collected: dict | None = None) -> dict:
    """Grade `submission` against the clean `handout` and write `results` (see the module docstring).

    `collected`: the clean handout's collection for these pytest_args, when the caller already has it (tests).
    """
    start = time.time()
    handout, results = handout.resolve(), results.resolve()
    drop = _unprivileged()
    if drop is not None:
        for private in (handout, submission, results.parent):
            private.mkdir(parents=True, exist_ok=True)
            os.chmod(private, 0o700)
    collected = collected or collect(handout, pytest_args)
    snapshots = load_snapshots(handout)
    owners = snapshot_owners(handout, snapshots)
    work = Path(tempfile.mkdtemp(prefix="cs336-judge-"))
    try:
        os.chmod(work, 0o755)
        tree, scratch = work / "tree", work / "scratch"
        shutil.copytree(handout, tree, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        shutil.rmtree(tree / SNAPSHOTS, ignore_errors=True)
        overlay(submission, tree, graded, log=log)
        tag = secrets.token_hex(6)
        canary = f"tests/test_zz_{tag}.py"
        (tree / canary).write_text(CANARY.format(tag=tag))
        before = file_hashes(tree)
        for path in [tree, *tree.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for sub in (scratch, scratch / "tmp", scratch / "actuals"):
            sub.mkdir()
            if drop is not None:
                user = pwd.getpwnam(UNPRIVILEGED_USER)
                os.chown(sub, user.pw_uid, user.pw_gid)
        os.chmod(scratch, 0o700)
        has_tests = any(not a.startswith("-") and (tree / a.split("::")[0]).exists() for a in pytest_args)
        child_args = [*pytest_args, *(["tests"] if not has_tests else []), canary]
        code = run_child(tree, scratch, child_args, drop, work / "pytest.log")
        log_text = (work / "pytest.log").read_bytes()[-20_000:].decode("utf-8", "replace")
        log(log_text)
        report = _read_json(scratch / "report.json")
        tamper = tampering(tree, before, graded, canary, tag, report)
        result = verdict(collected, report, snapshots, owners, scratch / "actuals", tamper)
        if not report:
            result["output"] = (f"The tests could not run (pytest exit status {code}):\n{log_text[-3000:]}\n"
                                + result["output"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["execution_time"] = round(time.time() - start, 1)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(results.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, results)
    log(f"judge: {result['score']:g} / {sum(t['max_score'] for t in result['tests']):g} points -> {results}")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m cs336_alignment.course.handout.judge", description=__doc__.split("\n\n")[0])
    p.add_argument("--handout", type=Path, required=True, help="the clean handout (hidden tests included)")
    p.add_argument("--graded", type=Path, required=True, help="graded_modules.json written by `handout autograder`")
    p.add_argument("--submission", type=Path, required=True, help="the unzipped submission")
    p.add_argument("--results", type=Path, required=True, help="where results.json goes")
    args = p.parse_args(own)
    graded = json.loads(args.graded.read_text())
    judge(args.handout, graded, args.submission, args.results, pytest_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
