"""The grading plugin: points per part, parametrize splits, Gradescope results.json, no answers in the output; and
the parts of the Gradescope judge (handout/judge.py) that need no pytest run.

Each test runs pytest in a subprocess on a tiny synthetic test tree (no torch), with the plugin loaded both from
the tree's conftest (as tests/conftest.py does) and with `-p` (as the CLI does).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cs336_alignment
from cs336_alignment.course.grading import part_number, redact
from cs336_alignment.course.handout import judge

REPO_ROOT = Path(cs336_alignment.__file__).resolve().parents[1]

PYPROJECT = """
[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["points(n): graded", "slow: slow"]
"""

CONFTEST = 'pytest_plugins = ["cs336_alignment.course.grading"]\n'

TEST_PART = '''
import pytest

PART = "2.1 Losses"


@pytest.mark.points(3)
@pytest.mark.parametrize("x", [1, 2, 3])
def test_param(x):
    assert x != 3, "third case fails"


@pytest.mark.points(2)
def test_pass():
    pass


@pytest.mark.points(1)
def test_chained():
    try:
        raise NotImplementedError
    except NotImplementedError as e:
        raise ValueError("wrapped") from e


@pytest.mark.points(1)
def test_leaky():
    expected = "tensor([0.123456, (0.654321)])"
    raise AssertionError("y" * 5000 + " expected " + expected)


def test_ungraded():
    pass


@pytest.mark.skip(reason="not today")
def test_ungraded_skipped():
    pass


def test_ungraded_fails():
    raise KeyError("oops")
'''

TEST_MISC = '''
import pytest


@pytest.mark.points(2)
def test_no_part():
    pass
'''

TEST_HIDDEN = '''
import pytest

PART = "9 Hidden"


@pytest.mark.points(1)
def test_hidden():
    pass
'''


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    code = "import sys; from cs336_alignment.course.grading import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "-p", "no:cacheprovider", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = _tree(tmp_path_factory.mktemp("suite"), {
        "pyproject.toml": PYPROJECT, "tests/conftest.py": CONFTEST, "tests/test_part.py": TEST_PART,
        "tests/test_misc.py": TEST_MISC, "tests/hidden/test_hidden.py": TEST_HIDDEN,
        "tests/test_broken.py": "import a_module_that_does_not_exist\n"})
    proc = _run(root, "--results-json", "out/results.json", "--continue-on-collection-errors")
    results = json.loads((root / "out/results.json").read_text())
    return root, proc, results


def test_results_json_scores_and_parametrize_split(suite):
    _, _, r = suite
    tests = {t["name"]: t for t in r["tests"]}
    param = [tests[f"tests/test_part.py::test_param[{x}]"] for x in (1, 2, 3)]
    assert [t["max_score"] for t in param] == [1.0, 1.0, 1.0]            # 3 points over 3 cases
    assert [t["score"] for t in param] == [1.0, 1.0, 0.0]
    assert [t["status"] for t in param] == ["passed", "passed", "failed"]
    assert tests["tests/test_part.py::test_pass"]["score"] == 2.0
    assert r["score"] == 2 + 2 + 2 + 1                                    # param, pass, misc, hidden
    assert sum(t["max_score"] for t in r["tests"]) == 3 + 2 + 1 + 1 + 2 + 1
    assert set(tests) == {t["name"] for t in r["tests"]}                  # graded only in "tests"
    assert not any("ungraded" in name for name in tests)
    assert isinstance(r["execution_time"], float)


def test_results_json_fields(suite):
    _, _, r = suite
    tests = {t["name"]: t for t in r["tests"]}
    t = tests["tests/test_part.py::test_pass"]
    assert t["number"] == "2.1" and t["tags"] == ["2.1 Losses"] and "visibility" not in t
    assert t["outcome"] == "passed" and t["exception"] is None and t["output"] == ""
    misc = tests["tests/test_misc.py::test_no_part"]
    assert misc["tags"] == ["misc"] and "number" not in misc
    hidden = tests["tests/hidden/test_hidden.py::test_hidden"]
    assert hidden["visibility"] == "after_due_date" and hidden["number"] == "9"
    chained = tests["tests/test_part.py::test_chained"]
    assert chained["outcome"] == "failed" and chained["exception"] == "ValueError"
    assert chained["exception_chain"] == ["ValueError", "NotImplementedError"]
    ungraded = {u["name"].split("::")[1]: u for u in r["extra_data"]["ungraded"]}
    assert ungraded["test_ungraded"]["outcome"] == "passed"
    assert ungraded["test_ungraded_skipped"]["outcome"] == "skipped"
    assert ungraded["test_ungraded_fails"]["outcome"] == "failed"
    assert ungraded["test_ungraded_fails"]["exception"] == "KeyError"
    assert ungraded["test_ungraded_fails"]["tags"] == ["2.1 Losses"] and "score" not in ungraded["test_ungraded"]
    (err,) = r["extra_data"]["collection_errors"]
    assert err["name"] == "tests/test_broken.py" and "a_module_that_does_not_exist" in err["output"]
    assert "could not be collected" in r["output"]


def test_failure_output_is_short_and_redacted(suite):
    _, _, r = suite
    leaky = next(t for t in r["tests"] if t["name"].endswith("test_leaky"))
    assert 0 < len(leaky["output"]) <= 2000
    assert "0.123456" not in leaky["output"] and "0.654321" not in leaky["output"]
    assert "tensor(<redacted>)" in leaky["output"]
    assert redact("x = tensor([[1., 2.]], dtype=torch.float64) + array([3])") == \
        "x = tensor(<redacted>) + array(<redacted>)"


def test_terminal_table_per_part(suite):
    _, proc, _ = suite
    out = proc.stdout
    assert proc.returncode == 1, out[-2000:]                              # some tests fail
    section = out[out.index("= grade ="):]
    lines = [line.split() for line in section.splitlines()[1:5]]
    assert lines[0][:2] == ["2.1", "Losses"] and lines[0][2:5] == ["4.00", "/", "7.00"]
    assert lines[1][:2] == ["9", "Hidden"] and lines[1][2:5] == ["1.00", "/", "1.00"]
    assert lines[2][:4] == ["misc", "2.00", "/", "2.00"]
    assert lines[3][:4] == ["TOTAL", "7.00", "/", "10.00"]


def test_deselection_keeps_the_parametrize_split(tmp_path):
    root = _tree(tmp_path, {"pyproject.toml": PYPROJECT, "tests/conftest.py": CONFTEST,
                            "tests/test_part.py": TEST_PART})
    proc = _run(root, "-k", "test_param and 1", "--results-json", "r.json")
    (t,) = json.loads((root / "r.json").read_text())["tests"]
    assert t["name"].endswith("test_param[1]") and t["max_score"] == 1.0 and t["score"] == 1.0, proc.stdout[-1000:]


def test_points_marker_must_be_a_positive_number(tmp_path):
    root = _tree(tmp_path, {"pyproject.toml": PYPROJECT, "tests/conftest.py": CONFTEST, "tests/test_bad.py": '''
        import pytest

        @pytest.mark.points("two")
        def test_bad():
            pass
        '''})
    proc = _run(root)
    assert proc.returncode != 0 and "positive number" in proc.stdout + proc.stderr


def test_part_number():
    assert part_number("3.2 SFT") == "3.2"
    assert part_number("10 Everything") == "10"
    assert part_number("SFT") is None and part_number(None) is None


ISOLATION_OK = '''
import pytest

PART = "1.1 Fine"


@pytest.mark.points(1)
@pytest.mark.parametrize("x", [1, 2, 3])
def test_thirds(x):
    pass


def test_ungraded_needs_a_stub():
    raise NotImplementedError("masked_mean is not implemented yet (part 2.2 Masked reductions (all))")


def test_ungraded_plain_nie():
    raise NotImplementedError
'''

ISOLATION_BROKEN = '''
import pytest

from brokenpkg import something

PART = "2.1 Broken (a part)"


@pytest.mark.points(3)
@pytest.mark.parametrize("x", [1, 2])
def test_split(x):
    pass


@pytest.mark.points(2)
@pytest.mark.slow
def test_slow_one():
    pass


def test_ungraded():
    pass
'''


def test_a_module_that_does_not_import_costs_only_its_own_graded_tests(tmp_path):
    root = _tree(tmp_path, {"pyproject.toml": PYPROJECT, "tests/conftest.py": CONFTEST,
                            "tests/test_ok.py": ISOLATION_OK, "tests/test_broken.py": ISOLATION_BROKEN,
                            "brokenpkg/__init__.py": "def something(:\n    pass\n"})
    proc = _run(root, "-rs", "-m", "not slow", "--results-json", "r.json", "-k", "not nothing_matches_this")
    r = json.loads((root / "r.json").read_text())
    tests = {t["name"]: t for t in r["tests"]}
    assert tests["tests/test_broken.py::test_split"]["max_score"] == 3.0, proc.stdout[-2000:]
    assert tests["tests/test_broken.py::test_split"]["score"] == 0 and \
        tests["tests/test_broken.py::test_split"]["exception"] == "SyntaxError"
    assert "tests/test_broken.py::test_slow_one" not in tests                  # -m "not slow" applies too
    assert [tests[f"tests/test_ok.py::test_thirds[{x}]"]["score"] for x in (1, 2, 3)] == [0.3333] * 3
    assert r["score"] == 1.0                                                   # rounded: not 0.9999 or 1.0000000002
    ungraded = {u["name"].split("::")[1]: u for u in r["extra_data"]["ungraded"]}
    assert ungraded["test_ungraded_needs_a_stub"]["outcome"] == "skipped"
    assert ungraded["test_ungraded_plain_nie"]["outcome"] == "failed"          # only a stub's message is skipped
    assert "SKIPPED" in proc.stdout and "needs part 2.2 Masked reductions (all) (masked_mean is not implemented yet)" \
        in proc.stdout
    lines = [line.split() for line in proc.stdout[proc.stdout.index("= grade ="):].splitlines()[1:4]]
    assert lines[0][:2] == ["1.1", "Fine"] and lines[0][2:5] == ["1.00", "/", "1.00"]
    assert lines[1][:4] == ["2.1", "Broken", "(a", "part)"] and lines[1][4:7] == ["0.00", "/", "3.00"]


# ---------------------------------------------------------------------------------------------------------
# The judge's parts that need no pytest run (tests/test_attacks.py grades attack submissions through it)
# ---------------------------------------------------------------------------------------------------------

def test_the_judge_overlays_only_graded_modules(tmp_path):
    tree, sub = tmp_path / "tree", tmp_path / "sub" / "repo" / "pkg"
    for rel in ("pkg/__init__.py", "pkg/ops.py", "pkg/grading.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("clean\n")
    for rel in ("__init__.py", "ops.py", "grading.py", "extra.py"):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_text("submitted\n")
    judge.overlay(tmp_path / "sub", tree, ["pkg/ops.py"], log=lambda *a: None)
    assert (tree / "pkg/ops.py").read_text() == "submitted\n"
    assert [(tree / f"pkg/{n}").read_text() for n in ("__init__.py", "grading.py")] == ["clean\n", "clean\n"]
    assert not (tree / "pkg/extra.py").exists()
    (sub / "ops.py").unlink()
    (sub / "ops.py").symlink_to(tmp_path / "secret.txt")              # a link is never followed
    (tmp_path / "secret.txt").write_text("secret\n")
    (tree / "pkg/ops.py").write_text("clean\n")
    judge.overlay(tmp_path / "sub", tree, ["pkg/ops.py"], log=lambda *a: None)
    assert (tree / "pkg/ops.py").read_text() == "clean\n"


def test_the_judge_reads_no_link_fifo_or_oversized_file_for_the_child(tmp_path):
    (tmp_path / "real.json").write_text('{"a": 1}')
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "big.json").write_bytes(b"x" * 100)
    assert judge.read_untrusted(tmp_path / "real.json") == b'{"a": 1}'
    assert judge.read_untrusted(tmp_path / "link.json") is None and judge.read_untrusted(tmp_path / "fifo.json") is None
    assert judge.read_untrusted(tmp_path / "big.json", limit=10) is None
    (tmp_path / "linked_dir").symlink_to(tmp_path)
    assert judge.read_untrusted(tmp_path / "linked_dir" / "real.json") is None


def test_the_judge_scores_only_what_its_own_checks_confirm(tmp_path):
    collected = {"tests": [{"name": "tests/test_a.py::test_mean[0]", "max_score": 1.0, "tags": ["1.1 A"]},
                           {"name": "tests/test_a.py::test_mean_hand", "max_score": 2.0, "tags": ["1.1 A"]},
                           {"name": "tests/test_a.py::test_other", "max_score": 4.0, "tags": ["1.1 A"]}]}
    report = {"tests": [{"name": t["name"], "outcome": "passed"} for t in collected["tests"]]
              + [{"name": "tests/test_planted.py::test_free", "outcome": "passed", "score": 100}]}
    snapshots = {"test_mean_dim0": {"array": np.array([1.0, 2.0])}, "test_other": {"array": np.array([0.0])}}
    (tmp_path / "h/tests").mkdir(parents=True)
    (tmp_path / "h/tests/test_a.py").write_text(
        "def test_mean(numpy_snapshot, dim):\n    numpy_snapshot.assert_match(1, f'test_mean_dim{dim}')\n\n\n"
        "def test_mean_hand():\n    pass\n")
    owners = judge.snapshot_owners(tmp_path / "h", snapshots)
    assert owners == {"test_mean_dim0": "tests/test_a.py::test_mean"}       # test_other: no test names it
    # test_mean[0] owns a snapshot and wrote none: 0; the others have no snapshot: the child's word counts.
    r = judge.verdict(collected, report, snapshots, owners, tmp_path, None)
    assert [t["score"] for t in r["tests"]] == [0.0, 2.0, 4.0] and r["score"] == 6.0
    assert "wrote none of its snapshots" in r["tests"][0]["output"]
    np.savez(tmp_path / "0.npz", array=np.array([1.0, 2.0]))
    np.savez(tmp_path / "1.npz", array=np.array([1.0, 2.5]))
    index = {"nodeid": "tests/test_a.py::test_mean[0]", "name": "test_mean_dim0"}
    (tmp_path / "index.jsonl").write_text(json.dumps({**index, "file": "0.npz"}) + "\n")
    assert judge.verdict(collected, report, snapshots, owners, tmp_path, None)["score"] == 7.0
    (tmp_path / "index.jsonl").write_text(json.dumps({**index, "file": "1.npz"}) + "\n")   # a wrong array
    assert judge.verdict(collected, report, snapshots, owners, tmp_path, None)["score"] == 6.0
    tampered = judge.verdict(collected, report, snapshots, owners, tmp_path, "a canary test that must fail was reported passed")
    assert tampered["score"] == 0 and "tampered" in tampered["output"]
