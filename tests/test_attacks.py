"""The Gradescope judge (cs336_alignment/course/handout/judge.py) against submissions that want points without the work.

Every graded test records the outputs it checks through the snapshot fixture (checked here, fast): the judge
compares those in its own process, so a forged "passed" earns nothing. Each attack in tests/attacks/ is appended to the handout's stubbed masked.py (part 2.2) and graded through the
judge on the autograder's clean handout, with the part's tests; it must score what its honest functions earn (0:
they are stubs or wrong) and, where the attack forged the child's report, the judge must say it was tampered with.
The honest baselines: the reference masked.py earns every point; masked_mean alone earns masked_mean's tests.
"""
from __future__ import annotations

import ast
import inspect
import json
import zipfile
from pathlib import Path

import pytest

import cs336_alignment
from cs336_alignment import masked
from cs336_alignment.course.handout import autograder, judge

REPO_ROOT = Path(cs336_alignment.__file__).resolve().parents[1]
ATTACKS = Path(__file__).parent / "attacks"
SELECTION = ["tests/test_masked.py"]
MASKED = "cs336_alignment/masked.py"

slow = pytest.mark.slow             # 12 graded runs of part 2.2 in a child process (about 5 s each); CI runs it


def _graded_functions() -> dict[str, float]:
    """{"tests/test_x.py::test_function": points} for every `@pytest.mark.points` test function, from the source."""
    graded = {}
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        for fn in ast.parse(path.read_text(encoding="utf-8")).body:
            for d in getattr(fn, "decorator_list", []):
                if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "points":
                    graded[f"{path.relative_to(REPO_ROOT).as_posix()}::{fn.name}"] = d.args[0].value
    return graded


def test_every_graded_test_owns_a_snapshot():
    """The judge trusts a graded test's "passed" only with the arrays it wrote (compared in the judge's process):
    each graded test function must call `numpy_snapshot.assert_match` and own (in judge.snapshot_owners' sense) at
    least one snapshot in tests/_snapshots. Points of graded tests without one: 0 (81 of 128 before this check)."""
    graded = _graded_functions()
    snapshots = [p.stem for p in (REPO_ROOT / "tests" / "_snapshots").glob("*.npz")]
    owners = set(judge.snapshot_owners(REPO_ROOT, snapshots).values())
    unchecked = {name: points for name, points in graded.items() if name not in owners}
    assert sum(graded.values()) > 100 and not unchecked, f"graded tests owning no snapshot ({sum(unchecked.values())} " \
                                                 f"points): {sorted(unchecked)}"


def test_every_snapshot_belongs_to_a_graded_test():
    """No snapshot without an owner (the judge would demand it of no test) or owned by an ungraded test."""
    graded = _graded_functions()
    snapshots = [p.stem for p in (REPO_ROOT / "tests" / "_snapshots").glob("*.npz")]
    owners = judge.snapshot_owners(REPO_ROOT, snapshots)
    assert set(owners) == set(snapshots), sorted(set(snapshots) - set(owners))
    assert {name: owner for name, owner in owners.items() if owner not in graded} == {}


def _quiet(*args):
    pass


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("ag")
    autograder(root / "autograder.zip", REPO_ROOT, log=_quiet)
    with zipfile.ZipFile(root / "autograder.zip") as z:
        z.extractall(root / "source")
    handout = root / "source" / "handout"
    graded = json.loads((root / "source" / "graded_modules.json").read_text())
    return {"handout": handout, "graded": graded, "collected": judge.collect(handout, SELECTION),
            "stub": (handout / MASKED).read_text()}


def _grade(clean, tmp_path, files: dict[str, str]) -> dict:
    sub = tmp_path / "submission" / "my-repo"
    for rel, text in files.items():
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_text(text)
    return judge.judge(clean["handout"], clean["graded"], tmp_path / "submission", tmp_path / "results.json",
                       SELECTION, log=_quiet, collected=clean["collected"])


def _attack(clean, name: str) -> str:
    return clean["stub"] + "\n\n" + (ATTACKS / name).read_text()


def _points(clean, keep=lambda function: True) -> float:
    return round(sum(t["max_score"] for t in clean["collected"]["tests"]
                     if keep(t["name"].split("::")[-1].split("[")[0])), 2)


@slow
def test_graded_modules_are_the_files_with_solution_markers(clean):
    marked = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "cs336_alignment").rglob("*.py")
                    if "# BEGIN SOLUTION" in p.read_text() and "handout" not in p.parts)
    assert clean["graded"] == marked and MASKED in marked


@slow
def test_the_reference_earns_every_point(clean, tmp_path):
    results = _grade(clean, tmp_path, {MASKED: (REPO_ROOT / MASKED).read_text()})
    assert results["score"] == _points(clean) > 0, results["output"]


@slow
def test_stubs_earn_nothing(clean, tmp_path):
    assert _grade(clean, tmp_path, {MASKED: clean["stub"]})["score"] == 0


@slow
def test_an_honest_masked_mean_alone_earns_exactly_its_tests(clean, tmp_path):
    text = clean["stub"] + "\n\n" + inspect.getsource(masked.masked_mean)
    results = _grade(clean, tmp_path, {MASKED: text})
    assert results["score"] == _points(clean, lambda f: f.startswith("test_masked_mean")) > 0, results["output"]


@slow
@pytest.mark.parametrize("attack", ["forge_plugin.py", "patch_asserts_at_import.py", "patch_asserts_in_call.py",
                                    "write_results.py", "exit_early.py", "plant_tests.py"])
def test_an_attack_scores_nothing_and_is_called_tampering(clean, tmp_path, attack):
    results = _grade(clean, tmp_path, {MASKED: _attack(clean, attack)})
    assert results["score"] == 0, results["output"]
    if attack == "plant_tests.py" and judge._unprivileged() is not None:
        return  # as `nobody` the grading tree is read-only to the child: the plant fails, nothing to call tampering
    assert "tampered" in results["output"], results["output"]


@slow
def test_files_outside_the_graded_modules_are_ignored(clean, tmp_path):
    forge = (ATTACKS / "forge_plugin.py").read_text()
    results = _grade(clean, tmp_path, {MASKED: clean["stub"], "cs336_alignment/__init__.py": forge,
                                       "cs336_alignment/course/grading.py": forge, "tests/conftest.py": forge,
                                       "conftest.py": forge, "tests/test_masked.py": "def test_free():\n    pass\n"})
    assert results["score"] == 0 and "tampered" not in results["output"], results["output"]


@slow
def test_a_forger_that_knows_the_judge_earns_nothing(clean, tmp_path):
    """Canaries recognised, every other test reported passed, the snapshot files symlinked to the clean handout's,
    exit 0 before any test runs: every graded test owns a snapshot (see above), which the forger did not compute, so
    it earns what its stubs earn (0; 81 of the 128 points when graded tests could go without a snapshot)."""
    snapshots = [p.stem for p in (REPO_ROOT / "tests/_snapshots").glob("*.npz")]
    owners = {o.split("::")[-1] for o in judge.snapshot_owners(REPO_ROOT, snapshots).values()}
    guess = clean["handout"] / "tests" / "_snapshots"
    text = _attack(clean, "exit_early_knows_the_judge.py").replace("SNAPSHOT_DIR_GUESS", repr(str(guess)))
    results = _grade(clean, tmp_path, {MASKED: text})
    assert _points(clean, lambda f: f not in owners) == 0 < _points(clean), "a graded test of part 2.2 owns none"
    assert results["score"] == 0, results["output"]


@slow
def test_reading_the_snapshots(clean, tmp_path):
    """As root with a Python `nobody` can run, the snapshots are out of reach: 0. Otherwise (documented) the attack
    reads them and earns the snapshot cases it fitted (masked_mean's and masked_normalize's parametrized tests),
    exactly as a student who hard-codes the handout's values would."""
    guess = clean["handout"] / "tests" / "_snapshots"
    text = _attack(clean, "read_snapshots.py").replace("SNAPSHOT_DIR_GUESS", repr(str(guess)))
    results = _grade(clean, tmp_path, {MASKED: text})
    if judge._unprivileged() is not None:
        assert results["score"] == 0, results["output"]
    else:
        fitted = _points(clean, lambda f: f in ("test_masked_mean", "test_masked_normalize"))
        assert results["score"] == fitted, results["output"]
