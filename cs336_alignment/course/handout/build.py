"""`handout build`: copy the solution repository to OUT with the solutions stubbed (STYLE.md §4.3).

Files matching `[tool.cs336_alignment.handout] exclude` in pyproject.toml are left out. `OUT.solution-lines.json`,
written beside OUT, lists every stripped line for the leak check. When pyproject names a `writeup` (the
assignment's source, `cs336_alignment/course/handout/writeup.md`), the handout's README.md is the rendered writeup and
each stub's NotImplementedError names the part that grades its function.
"""
from __future__ import annotations

import ast
import fnmatch
import json
import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cs336_alignment.course.handout import writeup
from cs336_alignment.course.handout.markers import HandoutError, strip_markers, strip_notebook, stub_adapter_functions

ADAPTERS = "tests/adapters.py"
HIDDEN_TESTS = "tests/hidden/**"      # left out of the student handout, kept in the autograder
README = "README.md"

# Never copied, whatever pyproject.toml says: VCS, caches and run outputs.
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache"}
SKIP_TOP_DIRS = {"runs", "build", "dist"}


def sidecar(out: Path, suffix: str) -> Path:
    """OUT.solution-lines.json etc.: written beside (never inside) the handout."""
    return out.parent / f"{out.name}.{suffix}"


def load_config(repo: Path) -> dict:
    path = repo / "pyproject.toml"
    if not path.exists():
        return {}
    return tomllib.loads(path.read_text()).get("tool", {}).get("cs336_alignment", {}).get("handout", {})


def is_skipped(rel: str) -> bool:
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
    return sorted({n for n in names if not is_skipped(n) and (repo / n).is_file()})


def matches_any(rel: str, patterns) -> bool:
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
    functions: list[dict] = field(default_factory=list)         # {"file", "line", "function"} per region
    stripped_files: list[str] = field(default_factory=list)
    instructor_lines: int = 0


def build(repo: Path, out: Path, *, stub_adapters: bool = False, keep: tuple[str, ...] = (), log=print) -> BuildResult:
    """Copy `repo` to `out` with solutions stubbed and instructor regions dropped; see the module docstring.

    `keep`: globs copied even when pyproject's exclude list names them (the autograder keeps tests/hidden/).
    Every file is transformed in memory first, so a marker error leaves no half-built tree behind.
    """
    repo, out = Path(repo).resolve(), Path(out).resolve()
    config = load_config(repo)
    exclude = list(config.get("exclude", []))
    source = writeup.load(repo / config["writeup"]) if config.get("writeup") else None
    parts = source.function_parts() if source else None        # {"cs336_alignment/masked.py": {"masked_mean": ...}}
    inside = out.relative_to(repo).as_posix() if repo in out.parents else None  # OUT inside the repo: skip it
    result, errors, plan = BuildResult(), [], []
    for rel in list_files(repo):
        if (matches_any(rel, exclude) and not matches_any(rel, keep)) or (inside and (rel + "/").startswith(inside + "/")):
            continue
        if inside and rel in (inside + ".solution-lines.json", inside + ".check-results.json"):
            continue
        path, data = repo / rel, None
        if rel.endswith((".py", ".ipynb")):
            try:
                raw = path.read_bytes().decode("utf-8")
                s = strip_notebook(raw, rel) if rel.endswith(".ipynb") else strip_markers(
                    raw, rel, parts=None if parts is None else parts.get(rel, {}))
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
                    result.functions += [{"file": rel, "line": n, "function": f} for n, f in s.functions]
        if stub_adapters and rel == ADAPTERS:
            data = stub_adapter_functions(data if data is not None else path.read_text())
        if source is not None and rel == README:
            data = source.render()     # the student's README is the writeup, never the solution's README
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
         "functions": result.functions, "lines": result.solution}, indent=1) + "\n")
    log(f"{len(result.solution)} solution lines stripped from {n_files} files")
    log(f"({result.instructor_lines} instructor lines dropped; {result.files} files written to {out})")
    return result

