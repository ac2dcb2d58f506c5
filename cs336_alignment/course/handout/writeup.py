"""The assignment's writeup: problems with points and deliverables, parsed from `writeup.md` and rendered as the
handout's README.md (the solution repository's README keeps the library's own text).

The source is Markdown. A problem is a level-3 heading, then `- Key: value` lines, then free text:

    ### Problem (masked_reductions): Masked reductions (11 points)
    - Part: 2.2 Masked reductions                              <- code problems: the grader's PART (same points)
    - Code: cs336_alignment/masked.py: masked_mean, masked_normalize, masked_whiten
    - Command: `python -m cs336_alignment sft --n-examples 128`  <- experiments (one or more)
    - Smoke: --num-steps 2 --n-eval-problems 8                 <- appended to each command for CI's smoke run
    - CPU budget: 6 CPU-minutes
    - Plot: ...            - Look for: ...          - Deliverable: ...

The kind follows from the keys: `Part` -> code, `Command` -> experiment (`leaderboard` when the name is
leaderboard), otherwise written. Written answers live only in answers.md, which never ships. `{{points_table}}` in
the source becomes a table of every problem and its points. `Smoke:` lines are dropped from the rendered README.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PROBLEM_RE = re.compile(r"^### Problem \((?P<name>[a-z0-9_]+)\): (?P<title>.+) \((?P<points>\d+(?:\.\d+)?) points?\)\s*$")
ATTR_RE = re.compile(r"^- (?P<key>[A-Z][A-Za-z ]+): (?P<value>.+)$")
KEYS = {"Part", "Code", "Command", "Smoke", "CPU budget", "Plot", "Look for", "Deliverable", "Differs from CS336"}
BUDGET_RE = re.compile(r"^(?P<minutes>\d+(?:\.\d+)?) CPU-minutes?\b")
MAX_EXPERIMENT_MINUTES = 15          # no single experiment over 15 CPU-minutes on a laptop
MAX_TOTAL_MINUTES = 240              # the whole set (2025 + 2026 problems and the lessons) under 4 CPU-hours


class WriteupError(ValueError):
    """A malformed writeup source; the message names file:line."""


@dataclass
class Problem:
    name: str
    title: str
    points: float
    line: int                                            # the heading's line in writeup.md
    attrs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if "Part" in self.attrs:
            return "code"
        if "Command" in self.attrs:
            return "leaderboard" if self.name == "leaderboard" else "experiment"
        return "written"

    @property
    def part(self) -> str | None:
        return self.attrs.get("Part", [None])[0]

    @property
    def commands(self) -> list[str]:
        return [c.strip().strip("`") for c in self.attrs.get("Command", [])]

    @property
    def smoke_flags(self) -> str:
        return self.attrs.get("Smoke", [""])[0].strip().strip("`")

    @property
    def cpu_minutes(self) -> float | None:
        m = BUDGET_RE.match(self.attrs.get("CPU budget", [""])[0])
        return float(m.group("minutes")) if m else None


@dataclass
class Writeup:
    path: Path
    text: str
    problems: list[Problem]

    def function_parts(self) -> dict[str, dict[str, str]]:
        """{file: {qualified function name: part}} from every code problem's `Code:` lines."""
        out: dict[str, dict[str, str]] = {}
        for p in self.problems:
            for code in p.attrs.get("Code", []):
                rel, _, names = code.partition(":")
                for name in (n.strip() for n in names.split(",")):
                    if name:
                        out.setdefault(rel.strip(), {})[name] = p.part
        return out

    def points_by_part(self) -> dict[str, float]:
        return {p.part: p.points for p in self.problems if p.kind == "code"}

    def render(self) -> str:
        """The student's README.md: the source with the points table filled in and `Smoke:` lines dropped."""
        rows = ["| # | problem | kind | points |", "|---|---|---|---|"]
        for k, p in enumerate(self.problems, 1):
            rows.append(f"| {k} | `{p.name}`: {p.title} | {p.kind} | {p.points:g} |")
        rows.append(f"| | **total** | | **{sum(p.points for p in self.problems):g}** |")
        lines = [line for line in self.text.splitlines()
                 if not (line.startswith("- Smoke: ") or line.startswith("<!--") and line.endswith("-->"))]
        text = "\n".join(lines) + "\n"
        text = text.replace("{{points_table}}", "\n".join(rows))
        return re.sub(r"^- ([A-Z][A-Za-z0-9 ]+): ", lambda m: f"- **{m.group(1)}:** " if m.group(1) in KEYS
                      else m.group(0), text, flags=re.M)


def load(path: Path) -> Writeup:
    """Parse writeup.md; raise WriteupError (file:line) on a malformed problem."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    problems: list[Problem] = []
    in_attrs = False
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("### Problem"):
            m = PROBLEM_RE.match(line)
            if m is None:
                raise WriteupError(f"{path}:{i}: write a problem heading as "
                                   f"'### Problem (name): Title (N points)', got {line!r}")
            if any(p.name == m["name"] for p in problems):
                raise WriteupError(f"{path}:{i}: problem name {m['name']!r} is used twice")
            problems.append(Problem(m["name"], m["title"], float(m["points"]), i))
            in_attrs = True
            continue
        m = ATTR_RE.match(line)
        if in_attrs and m:
            if m["key"] not in KEYS:
                raise WriteupError(f"{path}:{i}: unknown key {m['key']!r} (one of: {', '.join(sorted(KEYS))})")
            problems[-1].attrs.setdefault(m["key"], []).append(m["value"])
        elif line.strip() and not line.startswith("  "):
            in_attrs = False
    for p in problems:
        where = f"{path}:{p.line}: problem {p.name}"
        if p.kind == "code" and not p.attrs.get("Code"):
            raise WriteupError(f"{where}: a code problem names its functions on a 'Code:' line")
        if p.kind in ("experiment", "leaderboard"):
            for key in ("CPU budget", "Plot", "Look for"):
                if key not in p.attrs:
                    raise WriteupError(f"{where}: an experiment states its {key!r}")
            if p.cpu_minutes is None or p.cpu_minutes > MAX_EXPERIMENT_MINUTES:
                raise WriteupError(f"{where}: 'CPU budget' must read 'N CPU-minutes' with N <= "
                                   f"{MAX_EXPERIMENT_MINUTES}")
        if "Deliverable" not in p.attrs and p.kind != "code":
            raise WriteupError(f"{where}: say what the student hands in on a 'Deliverable:' line")
    total = sum(p.cpu_minutes or 0 for p in problems)
    if total >= MAX_TOTAL_MINUTES:
        raise WriteupError(f"{path}: the experiments add up to {total:g} CPU-minutes (limit {MAX_TOTAL_MINUTES})")
    return Writeup(path, text, problems)


def grader_points(repo: Path) -> dict[str, float]:
    """{part: points} as the grading plugin counts them: `pytest --collect-only` with --results-json."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "r.json"
        subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-p", "cs336_alignment.course.grading", f"--rootdir={repo}", f"--results-json={results}"],
                       cwd=repo, capture_output=True, text=True, check=False)
        if not results.exists():
            raise WriteupError(f"pytest --collect-only in {repo} wrote no results.json")
        out: dict[str, float] = {}
        for t in json.loads(results.read_text())["tests"]:
            out[t["tags"][0]] = out.get(t["tags"][0], 0.0) + t["max_score"]
        return {part: round(points, 2) for part, points in out.items()}   # each test's max_score has 4 decimals


def compare_points(w: Writeup, grader: dict[str, float]) -> list[str]:
    """Every code problem's points equal its part's points in the grader, and every graded part has a problem."""
    mine = w.points_by_part()
    bad = [f"part {part!r}: writeup {mine.get(part, 0):g} points, grader {grader.get(part, 0):g}"
           for part in sorted(set(mine) | set(grader)) if abs(mine.get(part, 0) - grader.get(part, 0)) > 1e-6]
    return bad


def main(repo: Path, render: Path | None = None, source: str = "cs336_alignment/course/handout/writeup.md") -> int:
    """Print the problems and points; check them against the grader; optionally write the rendered README."""
    w = load(repo / source)
    for p in w.problems:
        extra = f"  [{p.part}]" if p.part else (f"  ({p.cpu_minutes:g} CPU-min)" if p.cpu_minutes else "")
        print(f"{p.points:5g}  {p.kind:<11} {p.name}{extra}")
    print(f"{sum(p.points for p in w.problems):5g}  total; experiments "
          f"{sum(p.cpu_minutes or 0 for p in w.problems):g} CPU-minutes")
    bad = compare_points(w, grader_points(repo))
    for line in bad:
        print(f"points differ: {line}", file=sys.stderr)
    if render:
        render.write_text(w.render(), encoding="utf-8")
    return 1 if bad else 0
