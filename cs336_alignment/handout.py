"""Build the student handout from solution markers, and check it (the nbgrader/otter scheme, for pytest).

This repository is the reference solution; the student handout is a build artifact, never edited by hand:

    python -m cs336_alignment handout build OUT [--stub-adapters]   # copy the repo, strip the solutions
    python -m cs336_alignment handout check OUT                     # the invert gate (see `check` below)
    python -m cs336_alignment handout autograder autograder.zip     # Gradescope zip: setup.sh, run_autograder, handout/
    python -m cs336_alignment handout submit                        # (students) run the tests, zip the package

Markers are whole comment lines, exactly as written here, in .py files and notebook code cells:

    BEGIN SOLUTION ... END SOLUTION       -> at the same indentation, the hint
                                             "# TODO: implement this (the reference solution is N lines)"
                                             and `raise NotImplementedError`
    BEGIN INSTRUCTOR ... END INSTRUCTOR   -> dropped (a block left empty gets `pass`)

(each preceded by "# "). Nested, unterminated or misspelled markers are errors that name file:line; so is a
solution region at module level in a .py file (the module would not import). Files matching
`[tool.cs336_alignment.handout] exclude` in pyproject.toml are left out. `OUT.solution-lines.json`, written beside
OUT, lists every stripped line for the leak check.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tokenize
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MARKER_RE = re.compile(r"^\s*#+\s*(BEGIN|END)\s+(SOLUTION|INSTRUCTOR)\b")
STUB_HINT = "# TODO: implement this (the reference solution is {n} line{s})"
STUB_RAISE = "raise NotImplementedError"
ADAPTERS = "tests/adapters.py"
HIDDEN_TESTS = "tests/hidden/**"      # left out of the student handout, kept in the autograder

# Never copied, whatever pyproject.toml says: VCS, caches and run outputs.
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache"}
SKIP_TOP_DIRS = {"runs", "build", "dist"}

# Leak check: a solution line (the first line of a statement, or a comment) this long must not appear anywhere in
# the handout, unless it is generic: listed here or matching a pattern below (checked on the stripped line).
LEAK_MIN_CHARS = 12
LEAK_ALLOW = {
    "loss.backward()", "return loss.detach(), metadata", "return loss.detach(), metrics", "@torch.no_grad()",
    "with torch.no_grad():", "except (ValueError, ZeroDivisionError):", "raise NotImplementedError",
}
LEAK_ALLOW_PATTERNS = [re.compile(p) for p in (
    r"[\w, ]+ = [\w.]+\.shape(\[[-\d:]+\])?",              # B, T = input_ids.shape
    r"return [\w., ]+",                                      # return loss, metadata
    r"[\w.]+ = [\[{(]",                                      # metadata = {
    r"(el)?if (not )?[\w.]+( (==|!=|is|is not|in|>|<) [\w.'\"]+)?:",   # if loss_type == "grpo_clip":
    r"for \w+ in (reversed\()?range\(\w+\)\)?:",               # for t in reversed(range(T)):
)]


class HandoutError(Exception):
    """A build error (bad marker, bad output directory); the message names file:line where it can."""


# ---------------------------------------------------------------------------------------------------------
# Markers: one text in, the stripped text out
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Stripped:
    text: str
    solution: list[tuple[int, str, bool]] = field(default_factory=list)  # (source line, stripped text, continuation)
    instructor_lines: int = 0
    regions: int = 0


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _is_code(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _continuations(body: list[str]) -> set[int]:
    """Indices of the lines that continue a statement begun on an earlier line (inside brackets, strings, ...)."""
    starts, at_start = set(), True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent("".join(body))).readline):
            if tok.type == tokenize.NEWLINE:
                at_start = True
            elif tok.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER) and at_start:
                starts.add(tok.start[0] - 1)
                at_start = tok.type == tokenize.COMMENT
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()
    return {k for k, line in enumerate(body) if line.strip() and k not in starts}


def strip_markers(text: str, where: str, *, module_level_ok: bool = False) -> Stripped:
    """Replace solution regions by stubs and drop instructor regions; raise HandoutError naming `where:line`."""
    lines = text.splitlines(keepends=True)
    result, out = Stripped(text), []
    kind = start = indent = None
    body: list[str] = []
    for i, line in enumerate(lines, 1):
        m = MARKER_RE.match(line)
        if m is None:
            (body if kind else out).append(line)
            continue
        word, what = m.groups()
        if line.strip() != f"# {word} {what}":
            raise HandoutError(f"{where}:{i}: malformed marker {line.strip()!r}: write exactly '# {word} {what}'")
        if word == "BEGIN":
            if kind:
                raise HandoutError(f"{where}:{i}: nested '# BEGIN {what}' inside the {kind} region opened at line {start}")
            kind, start, indent, body = what, i, _indent(line), []
            continue
        if kind is None:
            raise HandoutError(f"{where}:{i}: '# END {what}' without a matching '# BEGIN {what}'")
        if what != kind:
            raise HandoutError(f"{where}:{i}: '# END {what}' closes the {kind} region opened at line {start}")
        eol = "\r\n" if line.endswith("\r\n") else "\n"
        if kind == "SOLUTION":
            if not indent and not module_level_ok:
                raise HandoutError(f"{where}:{start}: solution region at module level: the handout module would not "
                                   f"import; put regions inside function bodies")
            n = sum(map(_is_code, body))
            out.append(indent + STUB_HINT.format(n=n, s="" if n == 1 else "s") + eol)
            out.append(indent + STUB_RAISE + eol)
            cont = _continuations(body)
            result.solution += [(start + k + 1, b.strip(), k in cont) for k, b in enumerate(body) if b.strip()]
        else:
            result.instructor_lines += sum(1 for b in body if b.strip())
            previous = next((o for o in reversed(out) if _is_code(o)), None)
            following = next((x for x in lines[i:] if _is_code(x)), None)
            opens_block = previous is not None and len(_indent(previous)) < len(indent)
            if opens_block and (following is None or len(_indent(following)) < len(indent)):
                out.append(indent + "pass" + eol)  # the region was the whole block
        result.regions += 1
        kind = None
    if kind:
        raise HandoutError(f"{where}:{start}: '# BEGIN {kind}' is never closed")
    new = "".join(out)
    if text and not text.endswith(("\n", "\r")) and new.endswith("\n"):
        new = new.rstrip("\r\n")  # a notebook cell ending inside a region keeps its missing final newline
    result.text = new
    return result


def strip_notebook(raw: str, where: str) -> Stripped:
    """Strip markers in every code cell, clear outputs and execution counts; text is the re-serialized notebook."""
    nb = json.loads(raw)
    total = Stripped(raw)
    for k, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        s = strip_markers(text, f"{where} cell {k}", module_level_ok=True)
        if s.regions:
            cell["source"] = s.text.splitlines(keepends=True)
            total.solution += s.solution
            total.instructor_lines += s.instructor_lines
            total.regions += s.regions
        cell["outputs"], cell["execution_count"] = [], None
    total.text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # nbformat's own layout
    return total


def stub_adapter_functions(text: str) -> str:
    """CS336-style adapters: every top-level run_*/get_* body (after its docstring) becomes `raise NotImplementedError`."""
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.parse(text).body:
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(("run_", "get_"))):
            continue
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body or body[0].lineno == node.lineno or (len(body) == 1 and ast.unparse(body[0]) == STUB_RAISE):
            continue
        edits.append((body[0].lineno - 1, node.end_lineno, _indent(lines[body[0].lineno - 1])))
    for begin, end, indent in reversed(edits):
        lines[begin:end] = [indent + STUB_RAISE + "\n"]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------------------

def sidecar(out: Path, suffix: str) -> Path:
    """OUT.solution-lines.json etc.: written beside (never inside) the handout."""
    return out.parent / f"{out.name}.{suffix}"


def load_config(repo: Path) -> dict:
    path = repo / "pyproject.toml"
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text()).get("tool", {}).get("cs336_alignment", {}).get("handout", {})


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    return (any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1])
            or (len(parts) > 1 and parts[0] in SKIP_TOP_DIRS) or rel.endswith((".pyc", ".pyo")))


def list_files(repo: Path) -> list[str]:
    """Files to copy, relative posix paths: git's tracked + untracked-not-ignored files, or a walk of the tree."""
    if (repo / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    else:
        names = []
        for root, dirs, files in os.walk(repo):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            names += [Path(root, f).relative_to(repo).as_posix() for f in files]
    return sorted({n for n in names if not _skipped(n) and (repo / n).is_file()})


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) or (p.endswith("/**") and rel == p[:-3]) for p in patterns)


def _syntax_error(text: str) -> SyntaxError | None:
    try:
        ast.parse(text)
    except SyntaxError as e:
        return e
    return None


def _prepare_out(out: Path, repo: Path) -> None:
    if out == repo or out in repo.parents:
        raise HandoutError(f"refusing to build into {out}: it contains the repository")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out.is_dir() and sidecar(out, "solution-lines.json").exists()):
            raise HandoutError(f"{out} exists and is not a handout built by this tool: remove it or pick another path")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class BuildResult:
    files: int = 0                                              # files written to OUT
    solution: list[dict] = field(default_factory=list)          # {"file", "line", "text"} per stripped line
    stripped_files: list[str] = field(default_factory=list)
    instructor_lines: int = 0


def build(repo: Path, out: Path, *, stub_adapters: bool = False, keep: tuple[str, ...] = (), log=print) -> BuildResult:
    """Copy `repo` to `out` with solutions stubbed and instructor regions dropped; see the module docstring.

    `keep`: globs copied even when pyproject's exclude list names them (the autograder keeps tests/hidden/).
    Every file is transformed in memory first, so a marker error leaves no half-built tree behind.
    """
    repo, out = Path(repo).resolve(), Path(out).resolve()
    exclude = list(load_config(repo).get("exclude", []))
    inside = out.relative_to(repo).as_posix() if repo in out.parents else None  # OUT inside the repo: skip it
    result, errors, plan = BuildResult(), [], []
    for rel in list_files(repo):
        if (_matches(rel, exclude) and not _matches(rel, keep)) or (inside and (rel + "/").startswith(inside + "/")):
            continue
        if inside and rel in (inside + ".solution-lines.json", inside + ".check-results.json"):
            continue
        path, data = repo / rel, None
        if rel.endswith((".py", ".ipynb")):
            try:
                raw = path.read_bytes().decode("utf-8")
                s = strip_notebook(raw, rel) if rel.endswith(".ipynb") else strip_markers(raw, rel)
            except UnicodeDecodeError:
                s = None
            except (HandoutError, json.JSONDecodeError) as e:
                errors.append(str(e) if isinstance(e, HandoutError) else f"{rel}: not valid notebook JSON: {e}")
                continue
            if s is not None and (s.regions or rel.endswith(".ipynb")):
                data = s.text
                if rel.endswith(".py") and _syntax_error(raw) is None and (e := _syntax_error(data)) is not None:
                    errors.append(f"{rel}:{e.lineno}: the stripped file does not parse ({e.msg})")
                if s.regions:
                    result.stripped_files.append(rel)
                    result.solution += [{"file": rel, "line": n, "text": t, **({"continuation": True} if c else {})}
                                        for n, t, c in s.solution]
                    result.instructor_lines += s.instructor_lines
        if stub_adapters and rel == ADAPTERS:
            data = stub_adapter_functions(data if data is not None else path.read_text())
        plan.append((rel, data))
    if errors:
        raise HandoutError("\n".join(errors))

    _prepare_out(out, repo)
    for rel, data in plan:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            shutil.copy2(repo / rel, dest)
        else:
            dest.write_bytes(data.encode("utf-8"))
            shutil.copymode(repo / rel, dest)
    result.files = len(plan)
    n_files = len({s["file"] for s in result.solution})
    sidecar(out, "solution-lines.json").write_text(json.dumps(
        {"stub_adapters": stub_adapters, "n_lines": len(result.solution), "n_files": n_files,
         "lines": result.solution}, indent=1) + "\n")
    log(f"{len(result.solution)} solution lines stripped from {n_files} files")
    log(f"({result.instructor_lines} instructor lines dropped; {result.files} files written to {out})")
    return result


# ---------------------------------------------------------------------------------------------------------
# check: the invert gate (nbgrader validate --invert, rebuilt for pytest)
# ---------------------------------------------------------------------------------------------------------

_IMPORT_SCRIPT = r"""
import importlib, json, pkgutil, sys, traceback
name, failed, mods = sys.argv[1], {}, [sys.argv[1]]
try:
    pkg = importlib.import_module(name)
except BaseException:
    print("IMPORT-RESULT:" + json.dumps({"file": None, "modules": mods, "failed": {name: traceback.format_exc()}}))
    raise SystemExit
def onerror(n):
    failed[n] = traceback.format_exc()
for info in pkgutil.walk_packages(pkg.__path__, name + ".", onerror=onerror):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    mods.append(info.name)
    try:
        importlib.import_module(info.name)
    except BaseException:
        failed[info.name] = traceback.format_exc()
print("IMPORT-RESULT:" + json.dumps({"file": pkg.__file__, "modules": mods, "failed": failed}))
"""


def _env(out: Path) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # leave no __pycache__ in the handout
    env["PYTHONPATH"] = os.pathsep.join([str(out)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _text_of(path: Path) -> str | None:
    """A file's text for the leak and marker scans (notebooks: raw JSON plus decoded cell sources); None if binary."""
    if path.stat().st_size > 5_000_000:
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(text).get("cells", [])
            text += "\n" + "\n".join("".join(c.get("source", "")) for c in cells)
        except (json.JSONDecodeError, AttributeError):
            pass
    return text


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


def is_generic(line: str) -> bool:
    """Too short or too generic for the leak check (LEAK_MIN_CHARS, LEAK_ALLOW, LEAK_ALLOW_PATTERNS)."""
    return len(line) < LEAK_MIN_CHARS or line in LEAK_ALLOW or any(p.fullmatch(line) for p in LEAK_ALLOW_PATTERNS)


def _check_leaks(out: Path, files: list[str], solution: list[dict]) -> list[str]:
    needles: dict[str, str] = {}
    for rec in solution:
        if rec.get("continuation"):          # `old_log_probs, cliprange)`: the statement's first line is checked
            continue
        line = rec["text"]
        for candidate in {line, line.split("  # ")[0].rstrip()}:  # also the code without its end-of-line comment
            if not is_generic(candidate):
                needles.setdefault(candidate, f"{rec['file']}:{rec['line']}")
    bad = []
    for rel in files:
        text = _text_of(out / rel)
        if text is None:
            continue
        for needle, origin in needles.items():
            idx = text.find(needle)
            if idx >= 0:
                where = f"{rel}:{text.count(chr(10), 0, idx) + 1}" if not rel.endswith(".ipynb") else rel
                bad.append(f"{where}: {needle!r} (solution line {origin})")
    return bad


def _check_imports(out: Path, package: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, package], cwd=out, env=_env(out),
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
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "cs336_alignment.grading", "-p", "no:cacheprovider",
           "--results-json", str(results_path)] + ([] if slow else ["-m", "not slow"])
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


def check(out: Path, package: str = "cs336_alignment", *, slow: bool = False, allow_ungraded_nie: bool = False,
          log=print) -> list[str]:
    """Run every check on a built handout; print a report and return the failures (empty when it is fine).

    1 markers: no BEGIN/END SOLUTION|INSTRUCTOR line in .py files or notebook code cells;
    2 imports: every module of `package` imports from the handout (pkgutil.walk_packages, in a subprocess);
    3 graded tests: each fails (or errors) with NotImplementedError somewhere in its exception chain;
    4 ungraded tests: each passes or is skipped; failing with NotImplementedError is fine too with
      allow_ungraded_nie (STYLE's rule: e.g. ungraded smoke tests of loops that call student code) or when the
      handout was built with --stub-adapters;
    5 leaks: no solution line (a statement's first line or a comment; see `is_generic`) in any text file;
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
        ("solution leaks", lambda: _check_leaks(out, files, meta["lines"])),
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


# ---------------------------------------------------------------------------------------------------------
# Gradescope autograder zip and the student's submission zip
# ---------------------------------------------------------------------------------------------------------

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image: Python, CPU torch and the handout's dependencies.
set -euo pipefail
apt-get update && apt-get install -y python3 python3-pip
python3 -m pip install --index-url https://download.pytorch.org/whl/cpu @TORCH@
python3 -m pip install @DEPS@
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope entry point: overlay the student's @PKG@/**/*.py on a clean handout built from the same commit and
# grade it. Tests, adapters, snapshots and the grading plugin stay the instructor's (grading.py is never overlaid).
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
WORK="$ROOT/work"
rm -rf "$WORK" && cp -r "$ROOT/source/handout" "$WORK" && mkdir -p "$ROOT/results"
python3 - "$ROOT/submission" "$WORK/@PKG@" <<'EOF'
import shutil, sys
from pathlib import Path
sub, dest = Path(sys.argv[1]), Path(sys.argv[2])
found = sorted((p for p in sub.rglob("@PKG@") if p.is_dir() and "__MACOSX" not in p.parts), key=lambda p: len(p.parts))
if not found:
    print("no @PKG@/ folder in the submission: grading the untouched handout")
    raise SystemExit
for f in sorted(found[0].rglob("*.py")):
    rel = f.relative_to(found[0])
    if rel.as_posix() != "grading.py" and "__pycache__" not in rel.parts:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)
        print(f"using the submitted @PKG@/{rel.as_posix()}")
EOF
cd "$WORK"
PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider \
    -p cs336_alignment.grading -m "not slow" --results-json "$ROOT/results/results.json" 2>&1 | tee "$WORK/pytest.log"
if [ ! -s "$ROOT/results/results.json" ]; then    # pytest could not even start (e.g. a broken __init__.py)
    python3 - "$ROOT/results/results.json" "$WORK/pytest.log" <<'EOF'
import json, sys
log = open(sys.argv[2]).read()[-3000:]
json.dump({"score": 0, "output": "The tests could not run:\n" + log}, open(sys.argv[1], "w"))
EOF
fi
"""


def autograder(zip_path: Path, repo: Path, *, package: str = "cs336_alignment", log=print) -> None:
    """Write the Gradescope autograder zip: setup.sh, run_autograder and a clean handout/ (hidden tests included)."""
    deps = tomllib.loads((repo / "pyproject.toml").read_text()).get("project", {}).get("dependencies", [])
    torch = next((d for d in deps if re.match(r"torch\b", d)), "torch")
    others = [d for d in deps if d != torch] + ["pytest>=8"]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "handout"
        build(repo, tree, keep=(HIDDEN_TESTS,), log=log)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text in [("setup.sh", SETUP_SH.replace("@TORCH@", shlex.quote(torch))
                                .replace("@DEPS@", " ".join(map(shlex.quote, others)))),
                               ("run_autograder", RUN_AUTOGRADER.replace("@PKG@", package))]:
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o100755 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, text)
            for rel in list_files(tree):
                z.write(tree / rel, f"handout/{rel}")
    log(f"wrote {zip_path}: setup.sh, run_autograder, handout/ (upload it as the Gradescope autograder)")


SUBMIT_SKIP_FILES = ("*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "*.npz", "*.npy", "*.pyc", "*.zip")
SUBMIT_MAX_BYTES = 5_000_000


def submit(repo: Path, zip_path: Path, *, package: str = "cs336_alignment", run_tests: bool = True,
           pytest_args: list[str] | None = None, log=print) -> int:
    """Students: run the tests (grade table), then zip PACKAGE/ and notebooks/ without data, weights or caches."""
    repo = Path(repo).resolve()
    zip_path = Path(zip_path).resolve()
    results = repo / "test_results.json"
    if run_tests:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "cs336_alignment.grading", "--results-json", str(results),
               *(pytest_args or ["-m", "not slow"])]
        subprocess.run(cmd, cwd=repo, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    names = []
    for top in (package, "notebooks"):
        for path in sorted((repo / top).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if not path.is_file() or _skipped(rel) or "runs" in rel.split("/")[:-1] or _matches(path.name, SUBMIT_SKIP_FILES):
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


# ---------------------------------------------------------------------------------------------------------
# CLI: python -m cs336_alignment handout {build,check,autograder,submit}
# ---------------------------------------------------------------------------------------------------------

def _default_repo() -> Path:
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cs336_alignment handout",
                                description="Build and check the student handout; make Gradescope zips.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="copy the repo to OUT with solutions stubbed (instructor)")
    b.add_argument("out", type=Path)
    b.add_argument("--stub-adapters", action="store_true", help="tests/adapters.py raises too (the CS336 way)")
    b.add_argument("--repo", type=Path, default=None, help="solution repository (default: this package's repo)")
    c = sub.add_parser("check", help="the invert gate on a built handout (instructor, CI)")
    c.add_argument("out", type=Path)
    c.add_argument("package", nargs="?", default=None)
    c.add_argument("--package", dest="package_opt", default=None, help="package to import (default cs336_alignment)")
    c.add_argument("--slow", action="store_true", help="also run tests marked slow (notebooks)")
    c.add_argument("--allow-ungraded-nie", action="store_true",
                   help="ungraded tests may fail with NotImplementedError (smoke tests that call student code)")
    a = sub.add_parser("autograder", help="write the Gradescope autograder zip (instructor)")
    a.add_argument("zip", type=Path)
    a.add_argument("--repo", type=Path, default=None)
    s = sub.add_parser("submit", help="run the tests and zip your package for Gradescope (students)")
    s.add_argument("--out", type=Path, default=Path("submission.zip"))
    s.add_argument("--repo", type=Path, default=None)
    s.add_argument("--skip-tests", action="store_true")
    s.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest after --")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.repo or _default_repo(), args.out, stub_adapters=args.stub_adapters)
        elif args.cmd == "check":
            return 1 if check(args.out, args.package_opt or args.package or "cs336_alignment", slow=args.slow,
                              allow_ungraded_nie=args.allow_ungraded_nie) else 0
        elif args.cmd == "autograder":
            autograder(args.zip, (args.repo or _default_repo()).resolve())
        else:
            extra = [a for a in args.pytest_args if a != "--"] or None
            return submit(args.repo or _default_repo(), args.out, run_tests=not args.skip_tests, pytest_args=extra)
    except HandoutError as e:
        print(f"handout {args.cmd}: error\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
