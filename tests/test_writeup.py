"""The assignment's writeup (cs336_alignment/course/handout/writeup.md): its points equal the grader's, its commands exist,
and (slow, CI) every experiment command runs at smoke size through the answer key's runner.
"""
from __future__ import annotations

import ast
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cs336_alignment
from cs336_alignment.course.handout.writeup import compare_points, grader_points, load

REPO_ROOT = Path(cs336_alignment.__file__).resolve().parents[1]
WRITEUP = load(REPO_ROOT / "cs336_alignment/course/handout/writeup.md")
EXPERIMENTS = [p for p in WRITEUP.problems if p.commands]


def _params(problems):
    return [pytest.param(p, id=p.name) for p in problems]


def test_code_problem_points_equal_the_graders_parts():
    assert compare_points(WRITEUP, grader_points(REPO_ROOT)) == []


def test_problems_cover_the_assignment():
    kinds = {p.kind for p in WRITEUP.problems}
    assert kinds == {"code", "experiment", "written", "leaderboard"}
    assert WRITEUP.problems[-1].name == "leaderboard"
    assert sum(p.cpu_minutes or 0 for p in WRITEUP.problems) < 240  # 2025 + 2026 problems and the lessons under 4 CPU-hours
    assert all((p.cpu_minutes or 0) <= 15 for p in WRITEUP.problems)
    mapped = WRITEUP.text[WRITEUP.text.index("## Mapping to CS336"):]
    for cs336 in ("math_baseline", "sft_experiment", "expert_iteration_experiment", "grpo_off_policy_sweep",
                  "grpo_prompt_ablation", "leaderboard", "dpo_training"):
        assert cs336 in mapped, f"the mapping table does not mention CS336's {cs336}"


def test_code_lines_name_real_functions():
    for rel, functions in WRITEUP.function_parts().items():
        tree = ast.parse((REPO_ROOT / rel).read_text())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {f"{c.name}.{m.name}" for c in tree.body if isinstance(c, ast.ClassDef)
                  for m in c.body if isinstance(m, ast.FunctionDef)}
        assert set(functions) <= names, f"{rel}: {set(functions) - names}"


_HELP: dict[tuple[str, ...], str] = {}


def _help(sub: tuple[str, ...]) -> str:
    if sub not in _HELP:
        _HELP[sub] = subprocess.run([sys.executable, "-m", "cs336_alignment", *sub, "--help"], cwd=REPO_ROOT,
                                    capture_output=True, text=True).stdout
    return _HELP[sub]


def _missing_flags(argv: list[str]) -> list[str]:
    """Flags of `python -m cs336_alignment CMD ...` that CMD's --help lacks, or values outside its {choices}."""
    assert argv[:3] == ["python", "-m", "cs336_alignment"], argv
    sub = tuple(argv[3:5] if argv[3] == "bench" else argv[3:4])
    text, missing = _help(sub), []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        if not re.search(rf"{re.escape(arg)}(?![\w-])", text):
            missing.append(arg)
            continue
        choices = re.search(rf"{re.escape(arg)} \{{([^}}]*)\}}", text)
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if choices and value not in choices.group(1).split(","):
            missing.append(f"{arg} {value}")
    return missing


@pytest.mark.parametrize("problem", _params(EXPERIMENTS))
def test_command_flags_exist(problem):
    """Every --flag (and every {choice} value) of every command is in that command's --help; smoke flags too."""
    texts = problem.commands
    texts = texts + [problem.smoke_flags] if problem.smoke_flags.startswith("python ") else \
        [f"{t} {problem.smoke_flags}" for t in texts]
    for text in texts:
        argv = shlex.split(text)
        pieces = [argv[:argv.index("--")], argv[argv.index("--") + 1:]] if "--" in argv else [argv]
        for piece in pieces:
            missing = _missing_flags(piece)
            assert not missing, f"{problem.name}: `{' '.join(piece[3:5])}` has no {missing}"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("answer_key_smoke")


@pytest.mark.slow
@pytest.mark.parametrize("problem", _params(EXPERIMENTS))
def test_experiment_command_runs_at_smoke_size(problem, smoke_dir):
    """Writeup order: best-of-N uses the reward model the previous problem trained."""
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    result = answer_key.run_problem(problem, smoke_dir, smoke=True, log=lambda *a: None)
    failed = [r for r in result["runs"] if r["returncode"] != 0]
    assert not failed, f"{failed[0]['command']}\n{failed[0]['log_tail']}"


DERIVATIONS = ("baseline_calcs", "think_about_rft", "derive_difficulty_reweightings", "derive_surrogate_objectives")


def test_derivations_have_exact_checks():
    """Each CS336 2026 derivation's model answer names a check command (answers.md `Check:`), which the answer key
    runs: `python -m cs336_alignment.course.bandits <derivation> --out runs/...json`."""
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    bandits = pytest.importorskip("cs336_alignment.course.bandits", reason="instructor-only (not in the handout)")
    checks = answer_key.check_commands()
    assert set(DERIVATIONS) <= set(checks) <= {p.name for p in WRITEUP.problems if p.kind == "written"}
    for name in DERIVATIONS:
        (command,) = checks[name]
        argv = shlex.split(command)
        assert argv[:4] == ["python", "-m", "cs336_alignment.course.bandits", name] and name in bandits.REPORTS, command
        assert argv[4] == "--out" and argv[5].startswith("runs/"), command


@pytest.mark.slow
@pytest.mark.parametrize("name", DERIVATIONS)
def test_derivation_check_runs_through_the_answer_key(name, smoke_dir):
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    problem = next(p for p in WRITEUP.problems if p.name == name)
    result = answer_key.run_problem(problem, smoke_dir, smoke=True, log=lambda *a: None)
    (run,) = result["runs"]
    assert run["returncode"] == 0, run["log_tail"]
    assert run["metrics"] and all(math.isfinite(v) for v in run["metrics"].values()), run["metrics"]


def test_written_problems_have_model_answers():
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    answers = answer_key.answers()
    missing = [p.name for p in WRITEUP.problems if p.kind != "code" and p.name not in answers]
    assert not missing, f"answers.md has no model answer for {missing}"
    assert set(answers) <= {p.name for p in WRITEUP.problems}


def test_answer_key_waits_only_for_the_outputs_it_reads(tmp_path):
    """best-of-N reads the reward model's checkpoint (runs/exp/rm/ckpt.pt), so with --jobs > 1 it waits for
    reward_model_experiment; independent experiments wait for nothing."""
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    needs = answer_key.dependencies([p for p in WRITEUP.problems if p.commands], tmp_path, smoke=False)
    assert needs["best_of_n_overoptimization"] == {"reward_model_experiment"}
    assert needs["grpo_baselines"] == set() and needs["reward_model_experiment"] == set()


def test_answer_key_counts_the_cpu_of_each_command_alone(tmp_path):
    """Two commands at once, the shorter one ending while the longer runs: each one's CPU seconds are its own
    (wait4). Counting the parent's children time over each command's interval instead would give the longer one
    both (~1.3 s)."""
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    import sys
    from concurrent.futures import ThreadPoolExecutor
    burn = [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"]
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(answer_key.run_command, [burn[0], burn[1], burn[2].format(0.8)], tmp_path / "a.log")
        b = pool.submit(answer_key.run_command, [burn[0], burn[1], burn[2].format(0.5)], tmp_path / "b.log")
        (code_a, cpu_a, _), (code_b, cpu_b, _) = a.result(), b.result()
    assert code_a == code_b == 0
    assert 0.8 <= cpu_a < 1.15 and 0.5 <= cpu_b < 0.85, (cpu_a, cpu_b)


def test_answer_key_averages_seeds():
    """Runs whose commands differ only in --seed and --out are one variant: mean ± SE over its seeds (hand values)."""
    answer_key = pytest.importorskip("cs336_alignment.course.handout.answer_key", reason="instructor-only (not in the handout)")
    base = "python -m cs336_alignment grpo --baseline {b} --seed {s} --out runs/exp/{name}_s{s}"
    runs = [{"command": base.format(b=b, s=s, name=name), "outputs": [f"runs/exp/{name}_s{s}"], "cpu_s": 10.0,
             "metrics": {"eval/accuracy/greedy": acc}}
            for (b, name, accs) in (("mean", "dr", (0.5, 0.7)), ("none", "rft", (0.4, 0.4)))
            for s, acc in enumerate(accs)]
    groups = answer_key.seed_groups(runs)
    assert {k: len(v) for k, v in groups.items()} == {"dr": 2, "rft": 2}
    table = "\n".join(answer_key.seed_table(runs))
    assert "| dr | 2 | 0.6 ± 0.1 | 10 |" in table      # mean 0.6, sd 0.1414, SE = sd / sqrt(2) = 0.1
    assert "| rft | 2 | 0.4 ± 0 | 10 |" in table
