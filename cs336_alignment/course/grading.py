"""Pytest grading plugin: points per graded test, a per-part table, and Gradescope's results.json.

In a test module (one module = one part, numbered like the handout's sections):

    PART = "2.3 SFT"

    @pytest.mark.points(2)             # graded; on a parametrized test the 2 points are split evenly across cases
    def test_sft_microbatch_train_step(): ...

Run it (tests/conftest.py already loads the plugin through `pytest_plugins`):

    python -m pytest -p cs336_alignment.course.grading --results-json results.json
    python -m cs336_alignment grade [pytest args]        # the same, plugin always loaded, table at the end

Every run ends with a "grade" section: one line per part, then TOTAL. A test scores its points only when it passes.
Tests with points but no module-level PART are graded under "misc"; tests without points are ungraded.

Two rules keep one unfinished or broken module from costing more than its own tests:
  * isolation: collection continues past a test module that cannot be imported (a syntax error in the student's
    advantages.py); that module's graded tests, read from its source, score 0 under its PART;
  * a handout stub raises NotImplementedError("<function> is not implemented yet (part <part>)"); an ungraded test
    that hits one is reported as skipped, "needs part <part>", instead of failing.

`--results-json PATH` writes Gradescope's results.json (https://gradescope-autograders.readthedocs.io):
  {"score", "execution_time", "output" (the grade table),
   "tests": [{"name" (node id), "number" (the part's number, e.g. "3.2"), "score", "max_score",
              "status" ("passed" when the full points were earned, else "failed"), "output" (the last 2 kB of the
              failure, with tensor/array reprs redacted), "tags": [part], "visibility": "after_due_date" for tests
              under tests/hidden/, plus our own "outcome", "exception", "exception_chain" (read by `handout check`)}],
   "extra_data": {"ungraded": [same fields, no points], "collection_errors": [{"name", "output"}]}}
Only graded tests go in "tests", so students see a clean point list on Gradescope; ungraded tests (the given
infrastructure) are kept under "extra_data" for `handout check`, which requires them to pass in the handout.

Trust: this plugin runs in the same process as the code it scores, so a submission can rewrite anything it
reports (its records, pytest's hooks, the assert helpers). Locally that only fools the student. On Gradescope the
verdict is not this plugin's: handout/judge.py copies only the graded modules of a submission, runs pytest in a
child process (as `nobody` when root) and re-derives every score in its own process (snapshots compared there:
every graded test records its outputs through one; canary tests that must fail; test files hashed). Its docstring says what it still cannot prevent.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression  # pytest's own -k/-m parser (internal module, stable since pytest 6)

MISC_PART = "misc"
OUTPUT_LIMIT = 2000  # characters of failure text kept per test in results.json
PLUGIN_NAME = "cs336_alignment.course.grading"
SCORE_DECIMALS = 2   # the table's precision: results.json's total is rounded to it, each test's score to 4 decimals
# A handout stub raises NotImplementedError("<function> is not implemented yet (part <part>)") (handout/markers.py);
# an ungraded test that hits one is skipped with a reason naming that part instead of failing.
STUB_MESSAGE_RE = re.compile(r"(?P<function>[\w.]+) is not implemented yet \(part (?P<part>.+)\)\s*$")


# ---------------------------------------------------------------------------------------------------------
# One record per collected test
# ---------------------------------------------------------------------------------------------------------

@dataclass
class TestRecord:
    nodeid: str
    points: float                  # 0.0 for ungraded tests
    graded: bool
    part: str | None               # the module's PART ("misc" for graded tests without one)
    hidden: bool                   # under tests/hidden/: Gradescope shows it after the due date
    outcome: str = "not run"       # passed | failed | error | skipped | xfailed | xpassed | not run
    exception: str | None = None   # type name of the exception that failed the test (call.excinfo.typename)
    exception_chain: list[str] = field(default_factory=list)  # that exception, then its __cause__/__context__ ...
    output: str = ""

    @property
    def score(self) -> float:
        return self.points if self.outcome == "passed" else 0.0


def part_number(part: str | None) -> str | None:
    """"3.2 SFT" -> "3.2"; None when the part has no leading number."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)\b", part or "")
    return m.group(1) if m else None


def _part_sort_key(part: str) -> tuple:
    number = part_number(part)
    if part == MISC_PART:
        return (2, (), part)
    if number is None:
        return (1, (), part)
    return (0, tuple(int(x) for x in number.split(".")), part)


def _exception_chain(exc: BaseException | None) -> list[str]:
    names, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names


def unfinished_part(exc: BaseException | None) -> tuple[str, str] | None:
    """(function, part) when a handout stub's NotImplementedError is in the chain of `exc`, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NotImplementedError):
            m = STUB_MESSAGE_RE.search(str(exc))
            if m:
                return m["function"], m["part"]
        exc = exc.__cause__ or exc.__context__
    return None


def graded_tests_in_source(path: Path) -> list[tuple[str, float, str | None, set[str]]]:
    """(test name, points, PART, marks) of every `@pytest.mark.points(n)` test function in a test file's source.

    Used when the module cannot be imported: its graded tests still count, each for its whole points (a
    parametrized test's cases share them), so a broken module scores 0 for its own part and nothing else.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    part, found = None, []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PART" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                part = node.value.value
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
            continue
        points, marks = None, set()
        for dec in node.decorator_list:
            call = dec.func if isinstance(dec, ast.Call) else dec
            text = ast.unparse(call)
            if text.startswith("pytest.mark."):
                marks.add(text.split(".")[2])
            if text == "pytest.mark.points" and isinstance(dec, ast.Call) and dec.args:
                if isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, (int, float)):
                    points = float(dec.args[0].value)
        if points:
            found.append((node.name, points, part, marks))
    return found


def grade_table(records) -> list[str]:
    """The grade table: one line per part of the graded `records` (score / points, tests passed), then TOTAL."""
    parts: dict[str, list[TestRecord]] = {}
    for record in records:
        if record.graded:
            parts.setdefault(record.part or MISC_PART, []).append(record)
    if not parts:
        return []
    width = max(40, max(len(p) for p in parts) + 2)
    lines = []
    for part in sorted(parts, key=_part_sort_key):
        records = parts[part]
        n_passed = sum(r.outcome == "passed" for r in records)
        lines.append(f"{part:<{width}} {sum(r.score for r in records):7.2f} / {sum(r.points for r in records):7.2f}"
                     f"   ({n_passed}/{len(records)} tests passed)")
    graded = [r for group in parts.values() for r in group]
    lines.append(f"{'TOTAL':<{width}} {sum(r.score for r in graded):7.2f} / {sum(r.points for r in graded):7.2f}")
    return lines


_REPR_START = re.compile(r"\b(tensor|array|Parameter containing:\s*tensor)\(")


def redact(text: str) -> str:
    """Replace `tensor(...)` / `array(...)` reprs by `tensor(<redacted>)`: failure output must not leak answers."""
    out, i = [], 0
    for m in _REPR_START.finditer(text):
        if m.start() < i:
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
        out.append(text[i:m.end()] + "<redacted>)")
        i = j
    out.append(text[i:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# The plugin: collects points, records outcomes, prints the table, writes results.json
# ---------------------------------------------------------------------------------------------------------

class Grader:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.start = time.time()
        self.points: dict[str, float] = {}       # nodeid -> points of that case (after the parametrize split)
        self.records: dict[str, TestRecord] = {}
        self.collection_errors: list[dict] = []

    @pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so a parametrized test's split never changes
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        def key(item):
            return (item.parent.nodeid if item.parent else "", getattr(item, "originalname", item.name))

        marked = [item for item in items if item.get_closest_marker("points") is not None]
        n_cases = Counter(key(item) for item in marked)
        for item in marked:
            marker = item.get_closest_marker("points")
            n = marker.args[0] if marker.args else marker.kwargs.get("n")
            if isinstance(n, bool) or not isinstance(n, (int, float)) or n <= 0:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.points needs a positive number, got {n!r}")
            self.points[item.nodeid] = float(n) / n_cases[key(item)]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            module = getattr(item, "module", None)
            part = getattr(module, "PART", None)
            graded = item.nodeid in self.points
            if graded and not part:
                part = MISC_PART
            path_parts = Path(item.nodeid.split("::")[0]).parts
            self.records[item.nodeid] = TestRecord(
                nodeid=item.nodeid, points=self.points.get(item.nodeid, 0.0), graded=graded,
                part=str(part) if part else None, hidden="hidden" in path_parts[:-1])

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if not report.failed:
            return
        output = redact(report.longreprtext)[-OUTPUT_LIMIT:]
        self.collection_errors.append({"name": report.nodeid, "output": output})
        # Isolation: a module that does not import (a syntax error in the student's advantages.py) costs only the
        # graded tests of the test modules that could not be collected; they are read from the test file's source
        # and scored 0, so the part keeps its full points in the table and everything else is still graded.
        path = self.config.rootpath / report.nodeid.split("::")[0]
        if path.suffix != ".py" or not path.exists():
            return
        raised = re.findall(r"^E\s+(\w+(?:Error|Exception))\b", report.longreprtext, flags=re.M)
        exception = raised[-1] if raised else "CollectionError"
        for name, points, part, markers in graded_tests_in_source(path):
            if not self._selected(name, path, markers):
                continue
            nodeid = f"{report.nodeid.split('::')[0]}::{name}"
            self.records[nodeid] = TestRecord(
                nodeid=nodeid, points=points, graded=True, part=part or MISC_PART,
                hidden="hidden" in Path(nodeid.split("::")[0]).parts[:-1], outcome="error", exception=exception,
                exception_chain=[exception], output="This test module could not be collected:\n" + output)

    def _selected(self, name: str, path: Path, markers: set[str]) -> bool:
        """-k / -m applied to a test known only from its source (function and module names; decorator marks)."""
        keyword, markexpr = self.config.option.keyword, self.config.option.markexpr
        names = {name, path.stem, path.name, path.parent.name}
        if keyword and not Expression.compile(keyword).evaluate(
                lambda sub, **kw: any(sub.lower() in n.lower() for n in names)):
            return False
        return not markexpr or Expression.compile(markexpr).evaluate(lambda mark, **kw: mark in markers)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        record = self.records.get(item.nodeid)
        if record is not None and not record.graded and report.failed and call.excinfo is not None:
            stub = unfinished_part(call.excinfo.value)
            if stub is not None:          # an ungraded test that needs a part the student has not done yet
                function, part = stub
                report.outcome = "skipped"
                report.longrepr = (str(item.path), item.location[1] or 0,
                                   f"Skipped: needs part {part} ({function} is not implemented yet)")
        if record is not None:
            self._update(record, report, call)
        return report

    @staticmethod
    def _update(record: TestRecord, report: pytest.TestReport, call: pytest.CallInfo) -> None:
        xfail = hasattr(report, "wasxfail")
        if report.when == "setup" and report.skipped:
            record.outcome = "xfailed" if xfail else "skipped"
        elif report.when == "setup" and report.failed:
            record.outcome = "error"
        elif report.when == "call":
            if xfail:
                record.outcome = "xfailed" if report.skipped else ("xpassed" if report.passed else "failed")
            else:
                record.outcome = report.outcome
        elif report.when == "teardown" and report.failed and record.outcome not in ("failed", "error"):
            record.outcome = "error"
        if report.failed and record.exception is None:
            excinfo = call.excinfo
            record.exception = excinfo.typename if excinfo is not None else None
            record.exception_chain = _exception_chain(excinfo.value if excinfo is not None else None)
            record.output = redact(report.longreprtext)[-OUTPUT_LIMIT:]

    # ---- reporting

    def table(self) -> list[str]:
        return grade_table(self.records.values())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        lines = self.table()
        if lines:
            terminalreporter.write_sep("=", "grade")
            for line in lines:
                terminalreporter.write_line(line)

    def results(self) -> dict:
        def entry(r: TestRecord) -> dict:
            d = {"name": r.nodeid}
            if r.graded:
                number = part_number(r.part)
                if number:
                    d["number"] = number
                d.update(score=round(r.score, 4), max_score=round(r.points, 4))
            ok = ("passed",) if r.graded else ("passed", "skipped", "xfailed", "not run")
            d["status"] = "passed" if r.outcome in ok else "failed"
            d["output"] = r.output
            d["tags"] = [r.part] if r.part else []
            if r.hidden:
                d["visibility"] = "after_due_date"
            d.update(outcome=r.outcome, exception=r.exception, exception_chain=r.exception_chain)
            return d

        graded = [entry(r) for r in self.records.values() if r.graded]
        total = round(sum(r.score for r in self.records.values() if r.graded), SCORE_DECIMALS)
        output = "\n".join(self.table())
        if self.collection_errors:
            output += (f"\n{len(self.collection_errors)} test module(s) could not be collected (their tests are "
                       f"missing above): " + ", ".join(e["name"] for e in self.collection_errors))
        return {
            "score": total + 0.0,        # rounded to SCORE_DECIMALS: 31, not 30.999999999999996
            "execution_time": round(time.time() - self.start, 1),
            "output": output.strip(),
            "tests": graded,
            "extra_data": {"ungraded": [entry(r) for r in self.records.values() if not r.graded],
                           "collection_errors": self.collection_errors},
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.config.getoption("results_json")
        if path:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.results(), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Plugin entry points (module-level hooks) and `python -m cs336_alignment grade`
# ---------------------------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "points per part (cs336_alignment.course.grading)")
    group.addoption("--results-json", dest="results_json", default=None, metavar="PATH",
                    help="write Gradescope's results.json (scores per graded test) to PATH")


def pytest_configure(config: pytest.Config) -> None:
    # Isolation: keep collecting and running past a test module that cannot be imported (its graded tests score 0
    # through Grader.pytest_collectreport), instead of stopping the whole session at the first collection error.
    config.option.continue_on_collection_errors = True
    config.addinivalue_line("markers", "points(n): points this graded test is worth (split evenly across "
                                       "parametrized cases)")
    if not config.pluginmanager.has_plugin("cs336-grader"):
        config.pluginmanager.register(Grader(config), "cs336-grader")


def main(argv: list[str] | None = None) -> int:
    """`python -m cs336_alignment grade [pytest args]`: run pytest with this plugin and print the grade table."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Pass the module object (not `-p`): it is already imported, and pytest warns when it cannot rewrite it.
    return int(pytest.main(args, plugins=[importlib.import_module(PLUGIN_NAME)]))


if __name__ == "__main__":
    sys.exit(main())
