"""The handout builder and its invert gate, on a tiny synthetic repo made in tmp_path (no torch in subprocesses).

Marker lines are assembled from pieces (BS, ES, ...) so that this file itself holds no marker line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import cs336_alignment
from cs336_alignment.course import grading
from cs336_alignment.course import handout
from cs336_alignment.course.handout import HandoutError, build, check, strip_markers, stub_adapter_functions
from cs336_alignment.course.handout.check import graded_names
from cs336_alignment.course.handout.leaks import result_leaks

REPO_ROOT = Path(cs336_alignment.__file__).resolve().parents[1]
BS, ES = "# BEGIN " + "SOLUTION", "# END " + "SOLUTION"
BI, EI = "# BEGIN " + "INSTRUCTOR", "# END " + "INSTRUCTOR"
HINT = "# TODO: implement this (the reference solution is {} line{})"

OPS = f'''\
"""Toy ops."""


def scale_and_shift(x, factor, offset_value):
    """x * factor + offset_value."""
    if factor == 0:
        raise ValueError("factor must be nonzero")
    {BS}
    # scale first
    scaled_value = x * factor
    return scaled_value + offset_value
    {ES}


class Accumulator:
    def add(self, v):
        {BS}
        self.total_so_far = getattr(self, "total_so_far", 0) + v
        {ES}
        return self.total_so_far


def helper(x):
    return x + 1
'''

CONFTEST = f'''\
pytest_plugins = ["cs336_alignment.course.grading"]


def pytest_addoption(parser):
    {BI}
    parser.addoption("--regen-answers", action="store_true")
    {EI}
    pass


def regen_flag(config):
    if config:
        {BI}
        return config.getoption("--regen-answers")
        {EI}
    return False
'''

TEST_OPS = '''\
import pytest

from toypkg.ops import Accumulator, helper, scale_and_shift

PART = "1.1 Ops"


@pytest.mark.points(2)
@pytest.mark.parametrize("x", [1, 2])
def test_scale(x):
    assert scale_and_shift(x, 2, 1) == 2 * x + 1


@pytest.mark.points(1)
def test_accumulator():
    acc = Accumulator()
    acc.add(2)
    assert acc.add(3) == 5


def test_helper():
    assert helper(1) == 2


def test_argument_checks_stay():
    with pytest.raises(ValueError):
        scale_and_shift(1, 0, 0)
'''

ADAPTERS = '''\
"""Adapters."""


def run_scale(x, factor, offset_value):
    """Glue."""
    from toypkg.ops import scale_and_shift
    return scale_and_shift(x, factor, offset_value)


def get_helper():
    from toypkg.ops import helper
    return helper


def _private(x):
    return x
'''

PYPROJECT = '''\
[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["points(n): graded", "slow: slow"]

[tool.cs336_alignment.handout]
exclude = ["secret/**", "tests/hidden/**"]
'''

HIDDEN = '''\
import pytest

from toypkg.ops import scale_and_shift

PART = "1.2 Hidden"


@pytest.mark.points(1)
def test_negative():
    assert scale_and_shift(-1, 3, 0) == -3
'''


def notebook() -> str:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Demo\n", "Run the cell below.\n"]},
        {"cell_type": "code", "execution_count": 3, "metadata": {},
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["42000\n"]}],
         "source": ["from toypkg.ops import helper\n", BS + "\n", "answer_value = helper(41) * 1000\n",
                    ES + "\n", "print(answer_value)"]},
    ]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def make_repo(root: Path) -> Path:
    files = {"pyproject.toml": PYPROJECT, "README.md": "# Toy\n", "toypkg/__init__.py": "", "toypkg/ops.py": OPS,
             "tests/conftest.py": CONFTEST, "tests/test_ops.py": TEST_OPS, "tests/adapters.py": ADAPTERS,
             "tests/hidden/test_hidden.py": HIDDEN, "secret/notes.txt": "instructor notes\n",
             "notebooks/demo.ipynb": notebook(), "toypkg/__pycache__/ops.cpython-311.pyc": "cache",
             "runs/exp/metrics.jsonl": "{}\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(autouse=True)
def _plugin_on_path(monkeypatch):
    """Subprocesses import the grading plugin from this checkout (the synthetic repos have no cs336_alignment)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("handout")
    repo, out, log = make_repo(root / "repo"), root / "out", []
    result = build(repo, out, log=log.append)
    return repo, out, result, log


# ---------------------------------------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------------------------------------

def test_solution_region_becomes_indented_stub():
    s = strip_markers(OPS, "toypkg/ops.py")
    assert s.regions == 2
    assert f"    {HINT.format(2, 's')}\n    raise NotImplementedError\n" in s.text   # comment lines not counted
    assert f"        {HINT.format(1, '')}\n        raise NotImplementedError\n        return self.total_so_far" in s.text
    assert 'raise ValueError("factor must be nonzero")' in s.text and '"""x * factor + offset_value."""' in s.text
    assert "scaled_value" not in s.text and "total_so_far +" not in s.text
    assert [line for _, line, _ in s.solution][:2] == ["# scale first", "scaled_value = x * factor"]
    assert s.solution[1][0] == 10                                       # source line numbers
    namespace = {}
    exec(compile(s.text, "ops.py", "exec"), namespace)
    with pytest.raises(ValueError):
        namespace["scale_and_shift"](1, 0, 0)
    with pytest.raises(NotImplementedError):
        namespace["scale_and_shift"](1, 2, 3)


def test_instructor_regions_dropped_and_empty_blocks_get_pass():
    s = strip_markers(CONFTEST, "tests/conftest.py")
    assert "--regen-answers" not in s.text and "INSTRUCTOR" not in s.text and s.instructor_lines == 2 and not s.solution
    assert "    if config:\n        pass\n    return False" in s.text     # the block would have been empty
    assert "def pytest_addoption(parser):\n    pass\n\n" in s.text         # the `pass` that was there; no second one
    compile(s.text, "conftest.py", "exec")


@pytest.mark.parametrize("text, line, message", [
    (f"def f():\n    {BS}\n    {BS}\n    x = 1\n    {ES}\n", 3, "nested"),
    (f"def f():\n    {BS}\n    x = 1\n", 2, "never closed"),
    (f"def f():\n    x = 1\n    {ES}\n", 3, "without a matching"),
    (f"def f():\n    {BS}\n    x = 1\n    {EI}\n", 4, "closes the SOLUTION region"),
    ("def f():\n    ### BEGIN SOLUTION\n    x = 1\n", 2, "malformed marker"),
    (f"{BS}\nX = 1\n{ES}\n", 1, "module level"),
])
def test_bad_markers_name_file_and_line(text, line, message):
    with pytest.raises(HandoutError, match=f"^pkg/bad.py:{line}: .*{message}"):
        strip_markers(text, "pkg/bad.py")


def test_build_refuses_bad_markers_and_writes_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "toypkg/bad.py").write_text(f"def f():\n    {BS}\n    return 1\n")
    with pytest.raises(HandoutError, match="toypkg/bad.py:2: '# BEGIN SOLUTION' is never closed"):
        build(repo, tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_tooling_files_hold_no_markers():
    # README.md (the instructors' guide, which shows the markers) is left out of every handout (pyproject's exclude)
    tooling = sorted(Path(handout.__file__).parent.rglob("*.py")) + sorted(
        p for p in Path(handout.__file__).parent.glob("*.md") if p.name != "README.md")
    for path in tooling + [Path(grading.__file__), Path(__file__), Path(__file__).with_name("test_grading.py")]:
        assert strip_markers(path.read_text(), path.name).regions == 0


def test_handout_package_files_are_short():
    for path in Path(handout.__file__).parent.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 450, path


def test_leak_needles_skip_continuations_and_generic_lines():
    body = f"def f(a, b):\n    {BS}\n    total = combine(a,\n                    b)  # (B,)\n    if a:\n" \
           f"        return total\n    {ES}\n"
    s = strip_markers(body, "f.py")
    assert [(line, cont) for _, line, cont in s.solution] == [
        ("total = combine(a,", False), ("b)  # (B,)", True), ("if a:", False), ("return total", False)]
    assert handout.is_generic("B, T = rewards.shape") and handout.is_generic("metadata = {")
    assert handout.is_generic('if loss_type == "grpo_clip":') and handout.is_generic("return loss, metrics")
    assert not handout.is_generic("kl_term = ref_scores - new_scores")
    assert not handout.is_generic("return torch.where(flags, values, 0)")


def test_stub_adapters():
    text = stub_adapter_functions(ADAPTERS)
    assert '    """Glue."""\n    raise NotImplementedError\n\n\ndef get_helper():\n    raise NotImplementedError\n' in text
    assert "def _private(x):\n    return x" in text                     # only run_*/get_* functions
    assert stub_adapter_functions(text) == text                          # idempotent


# ---------------------------------------------------------------------------------------------------------
# build + check on the synthetic repo
# ---------------------------------------------------------------------------------------------------------

def test_build_output(built):
    repo, out, result, log = built
    assert log[0] == "5 solution lines stripped from 2 files"         # 3 + 1 in ops.py, 1 in the notebook
    files = set(handout.list_files(out))
    assert "secret/notes.txt" not in files and "tests/hidden/test_hidden.py" not in files
    assert not (out / "runs").exists() and not (out / "toypkg/__pycache__").exists()
    assert (out / "tests/adapters.py").read_text() == ADAPTERS            # working glue by default
    meta = json.loads((out.parent / "out.solution-lines.json").read_text())
    assert meta["n_lines"] == 5 and {x["file"] for x in meta["lines"]} == {"toypkg/ops.py", "notebooks/demo.ipynb"}
    nb = json.loads((out / "notebooks/demo.ipynb").read_text())
    code = nb["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert code["source"] == ["from toypkg.ops import helper\n", HINT.format(1, "") + "\n",
                              "raise NotImplementedError\n", "print(answer_value)"]
    assert nb["cells"][0]["source"] == ["# Demo\n", "Run the cell below.\n"]


def test_check_passes_on_clean_handout(built):
    _, out, _, _ = built
    log = []
    failures = check(out, "toypkg", log=log.append)
    assert failures == [], "\n".join(log)
    assert any("handout score: 0 / 3 points over 3 graded tests" in line for line in log)
    results = json.loads((out.parent / "out.check-results.json").read_text())
    assert {t["outcome"] for t in results["tests"]} == {"failed"}


def test_check_reports_every_kind_of_problem(built, tmp_path):
    _, clean, _, _ = built
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    shutil.copy(clean.parent / "out.solution-lines.json", tmp_path / "out.solution-lines.json")
    with open(out / "tests/test_ops.py", "a") as f:
        f.write("\n\n@pytest.mark.points(1)\ndef test_free():\n    assert helper(1) == 2\n"
                "\n\n@pytest.mark.points(1)\ndef test_wrong_error():\n    raise KeyError('x')\n"
                "\n\ndef test_ungraded_broken():\n    assert helper(1) == 3\n"
                "\n\ndef test_ungraded_smoke():\n    scale_and_shift(1, 2, 3)\n")
    (out / "README.md").write_text("# Toy\nHint: `scaled_value = x * factor`\n")
    (out / "toypkg/broken.py").write_text(f"raise RuntimeError('boom')\n\n\ndef g():\n    {BS}\n    return 1\n    {ES}\n")
    nb = json.loads((out / "notebooks/demo.ipynb").read_text())
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["42000\n"]}]
    (out / "notebooks/demo.ipynb").write_text(json.dumps(nb))
    log = []
    failures = check(out, "toypkg", log=log.append)
    text = "\n".join(failures)
    assert "markers: toypkg/broken.py:5: " + BS in text
    assert "notebook outputs: notebooks/demo.ipynb cell 1" in text
    assert "idempotence: toypkg/broken.py: changes when building from the handout" in text
    assert "solution leaks: README.md:2: 'scaled_value = x * factor' (solution line toypkg/ops.py:10)" in text
    assert "imports: toypkg.broken: RuntimeError: boom" in text
    assert "tests/test_ops.py::test_free: graded test passes in the handout (free points)" in text
    assert "tests/test_ops.py::test_wrong_error: graded test failed with KeyError, not NotImplementedError" in text
    assert "tests/test_ops.py::test_ungraded_broken: ungraded test failed with AssertionError" in text
    assert "tests/test_ops.py::test_ungraded_smoke: ungraded test failed with NotImplementedError" in text
    assert {f.split(":")[0] for f in failures} == {"markers", "notebook outputs", "idempotence", "solution leaks",
                                                   "imports", "tests"}
    assert log[-1] == "handout check: FAILED"
    assert handout.main(["check", str(out), "--package", "toypkg"]) == 1


def test_stub_adapters_build_passes_check(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "tests/test_adapters_glue.py").write_text(
        "from adapters import get_helper\n\n\ndef test_glue():\n    assert get_helper()(1) == 2\n")
    (repo / "tests/conftest.py").write_text(CONFTEST + "\nimport sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    out = tmp_path / "out"
    assert handout.main(["build", str(out), "--repo", str(repo), "--stub-adapters"]) == 0
    assert "raise NotImplementedError" in (out / "tests/adapters.py").read_text()
    log = []
    assert check(out, "toypkg", log=log.append) == [], "\n".join(log)   # ungraded glue test may raise NIE here


def test_build_refuses_to_overwrite_a_foreign_directory(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious/file.txt").write_text("keep me")
    with pytest.raises(HandoutError, match="not a handout built by this tool"):
        build(repo, tmp_path / "precious", log=lambda *a: None)
    with pytest.raises(HandoutError, match="contains the repository"):
        build(repo, tmp_path, log=lambda *a: None)
    build(repo, tmp_path / "h", log=lambda *a: None)
    build(repo, tmp_path / "h", log=lambda *a: None)                      # rebuilding a handout is fine


def test_git_repo_copies_tracked_and_untracked_but_not_ignored(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = make_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("ignored.txt\n__pycache__/\nruns/\n")
    (repo / "ignored.txt").write_text("x")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    files = handout.list_files(repo)
    assert "ignored.txt" not in files and "toypkg/ops.py" in files and ".gitignore" in files
    assert not any(f.startswith((".git/", "runs/")) or "__pycache__" in f for f in files)


# ---------------------------------------------------------------------------------------------------------
# Gradescope autograder zip and the student's submission
# ---------------------------------------------------------------------------------------------------------

def test_autograder_zip_grades_a_submission(tmp_path):
    repo = make_repo(tmp_path / "repo")
    zip_path = tmp_path / "autograder.zip"
    handout.autograder(zip_path, repo, package="toypkg", log=lambda *a: None)
    root = tmp_path / "ag"
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        assert {"setup.sh", "run_autograder", "handout/tests/hidden/test_hidden.py"} <= names
        assert "handout/secret/notes.txt" not in names
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111
        z.extractall(root / "source")
    (root / "submission/my_repo/toypkg").mkdir(parents=True)
    shutil.copy(repo / "toypkg/ops.py", root / "submission/my_repo/toypkg/ops.py")   # the student's solution
    env = dict(os.environ, AUTOGRADER_ROOT=str(root))
    proc = subprocess.run(["bash", str(root / "source/run_autograder")], env=env, capture_output=True, text=True,
                          timeout=120)
    results = json.loads((root / "results/results.json").read_text())
    assert results["score"] == 4 == sum(t["max_score"] for t in results["tests"]), proc.stdout[-2000:]
    hidden = next(t for t in results["tests"] if "hidden" in t["name"])
    assert hidden["visibility"] == "after_due_date"
    # A second run (results.json now exists) names the tests the same way: tests/..., never work/tests/...
    subprocess.run(["bash", str(root / "source/run_autograder")], env=env, capture_output=True, text=True, timeout=120)
    again = json.loads((root / "results/results.json").read_text())
    assert sorted(t["name"] for t in again["tests"]) == sorted(t["name"] for t in results["tests"])
    assert all(t["name"].startswith("tests/") for t in again["tests"]) and again["score"] == 4


def test_submit_zips_package_and_notebooks_only(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "toypkg/weights.pt").write_text("big")
    (repo / "data").mkdir()
    (repo / "data/train.jsonl").write_text("{}\n")
    zip_path = tmp_path / "submission.zip"
    handout.submit(repo, zip_path, package="toypkg", log=lambda *a: None)
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        results = json.loads(z.read("test_results.json"))
    assert names == {"toypkg/__init__.py", "toypkg/ops.py", "notebooks/demo.ipynb", "test_results.json"}
    assert results["score"] == 4                                           # the solution (hidden tests too)


# ---------------------------------------------------------------------------------------------------------
# Renamed copies of solution bodies (the clone detector)
# ---------------------------------------------------------------------------------------------------------

PAD = f'''\
def zscore_rows(rows, eps):
    """Each row minus its mean, over its standard deviation (+ eps)."""
    {BS}
    totals = [sum(row) for row in rows]
    counts = [max(len(row), 1) for row in rows]
    means = [total / count for total, count in zip(totals, counts)]
    spread = [sum((x - m) ** 2 for x in row) / c for row, m, c in zip(rows, means, counts)]
    return [[(x - m) / (s ** 0.5 + eps) for x in row] for row, m, s in zip(rows, means, spread)]
    {ES}
'''

# The same body with every local renamed, other spacing and a changed constant: a "type-2 clone".
RENAMED = '''\
def standardize(batch, tiny):
    """Given code that quietly re-implements the graded zscore_rows."""
    sums = [sum(b) for b in batch]
    sizes = [max(len(b), 2) for b in batch]   # two, not one
    centres = [t / n for t, n in zip(sums, sizes)]
    var = [sum((v - c) ** 2 for v in b) / n for b, c, n in zip(batch, centres, sizes)]
    return [[(v - c) / (w ** 0.5 + tiny) for v in b] for b, c, w in zip(batch, centres, var)]


def zscore_rows(rows, eps):
    """A second body under the graded name."""
    return [list(row) for row in rows], eps
'''


def test_normalized_lines_forget_names_strings_and_numbers_but_keep_attributes():
    a = handout.normalized_lines("x = torch.full((B, L), pad, dtype=torch.long)  # c\ny = f'{x} rows' + 'a'\n")
    b = handout.normalized_lines("ids = torch.full((n, w), fill, dtype=torch.long)\nz = f'{ids}' + \"b\"\n")
    assert [t for _, t in a] == [t for _, t in b]
    assert a[0][1][:5] == ("ID", "=", "ID", ".", "full") and "dtype" in a[0][1] and a[1][1][-1] == "S"
    assert [line for line, _ in a] == [1, 2]
    assert handout.normalized_lines("x = y.sum(dim=0)")[0][1] != handout.normalized_lines("x = y.mean(dim=0)")[0][1]


def test_leak_check_catches_a_renamed_copy(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "toypkg/zscore.py").write_text(PAD)
    log = []
    build(repo, tmp_path / "clean", log=log.append)
    meta = json.loads((tmp_path / "clean.solution-lines.json").read_text())
    files = handout.list_files(tmp_path / "clean")
    graded = graded_names(meta)
    assert handout.clone_leaks(tmp_path / "clean", files, meta["lines"], graded) == []     # the stub alone: no leak
    (repo / "toypkg/given.py").write_text(RENAMED)                                          # plant the copy
    out = tmp_path / "leaky"
    build(repo, out, log=log.append)
    failures = check(out, "toypkg", log=log.append)
    copies = [f for f in failures if f.startswith("renamed copies")]
    assert copies == [
        "renamed copies: toypkg/given.py:3: renamed copy of the solution at toypkg/zscore.py:4 (3+ lines equal after "
        "normalizing names, strings and numbers)",
        "renamed copies: toypkg/given.py:10: zscore_rows() re-implements the graded function of the same name"], failures
    assert not any(f.startswith("solution leaks") for f in failures)        # no line is a verbatim copy


# ---------------------------------------------------------------------------------------------------------
# The real repository: the handout's README is the writeup; the answer key stays out
# ---------------------------------------------------------------------------------------------------------

def test_real_handout_readme_is_the_writeup_and_the_answer_key_stays_out(tmp_path):
    from cs336_alignment.course.handout.writeup import load

    if not (REPO_ROOT / "cs336_alignment/course/handout/answers.md").exists():
        pytest.skip("instructor-only: this checkout is a handout (no answer key)")
    out = tmp_path / "handout"
    build(REPO_ROOT, out, log=lambda *a: None)
    readme = (out / "README.md").read_text()
    assert readme == load(REPO_ROOT / "cs336_alignment/course/handout/writeup.md").render()
    assert "For instructors" not in readme and "BEGIN SOLUTION" not in readme and "- Smoke:" not in readme
    assert "### Problem (leaderboard)" in readme and "| **total** |" in readme
    assert not (out / "cs336_alignment/course/handout/answers.md").exists()
    assert not (out / "cs336_alignment/course/handout/answer_key.py").exists()
    answers = (REPO_ROOT / "cs336_alignment/course/handout/answers.md").read_text()
    model_answer = answers.split("## think_about_length_normalization")[1].split("##")[0].strip().splitlines()[0]
    assert model_answer not in readme
    stub = (out / "cs336_alignment/masked.py").read_text()
    assert "raise NotImplementedError('masked_mean is not implemented yet (part 2.2 Masked reductions)')" in stub
    # No measured result ships: the checkpoints' README stays out, the data READMEs and "Look for" lines state none.
    assert not (out / "data/checkpoints/README.md").exists() and (out / "data/checkpoints/tiny/sft.pt").exists()
    assert result_leaks(out, handout.list_files(out)) == []
    assert result_leaks(REPO_ROOT, ["data/checkpoints/README.md"]), "the solution's checkpoints README has results"


def test_the_result_check_fails_on_a_planted_result_sentence(tmp_path):
    (tmp_path / "data/models").mkdir(parents=True)
    readme = ("### Problem (demo): A demo (2 points)\n- Look for: whether accuracy moves at `--lr 0.003`, and why.\n"
              "- Deliverable: the plot and 2 sentences.\n\nLoss 1.25 in the prose of a problem is not a Look-for line.\n")
    data = "# models\nRebuild with `python -m demo --beta 0.1` (about 2 CPU-minutes).\n"
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "data/models/README.md").write_text(data)
    files = ["README.md", "data/models/README.md"]
    assert result_leaks(tmp_path, files) == []
    for planted in ("GRPO gains +25.9 points from the worked style.", "Greedy accuracy 77.0 ± 2.1.",
                    "SFT reaches 95% and keeps climbing.", "The margin is 3 points higher at beta 0.5."):
        (tmp_path / "data/models/README.md").write_text(data + planted + "\n")
        assert result_leaks(tmp_path, files) == [f"data/models/README.md:3: a result in the handout: {planted}"]
    (tmp_path / "data/models/README.md").write_text(data)
    (tmp_path / "README.md").write_text(readme.replace("and why.", "and why.\n  Divergence: accuracy falls 12.5 "
                                                                     "points within a few steps."))
    assert [b.split(":")[1] for b in result_leaks(tmp_path, files)] == ["3"]    # the bullet's continuation line
