"""The instructor's answer key: the reference solution's measured results for every experiment of the writeup,
plus model answers to its written questions (answers.md). Never shipped (pyproject's exclude list).

    python -m cs336_alignment.course.handout.answer_key --out runs/answer_key            # full size, by hand (< 3 CPU-h)
    python -m cs336_alignment.course.handout.answer_key --out /tmp/key --smoke           # CI: every command, tiny sizes
    python -m cs336_alignment.course.handout.answer_key --out runs/answer_key --only grpo_baselines dpo_beta
    python -m cs336_alignment.course.handout.answer_key --out runs/answer_key --jobs 2     # two experiments at a time

A derivation (a written problem) whose model answer in answers.md has a line starting "Check:" with a command in
backquotes is run the same way, at full size with --smoke too (a check takes seconds): it prints the derivation's
closed forms beside an exact or Monte-Carlo check and writes them as json metrics.

For each experiment every command runs with its `runs/` paths moved under OUT (and, with --smoke, the problem's
`Smoke:` flags appended, or its `Smoke:` command instead). Experiments run in writeup order, --jobs at a time; one
that reads another's output (best-of-N reads the reward model's checkpoint) waits for it. Each command's output
goes to OUT/logs/. It records the CPU seconds each command used (user + system time of its process tree, from
wait4: exact with --jobs > 1 too) against the problem's budget, the last metrics of each run (its last held-out
`eval/...` record, or an `eval` json's metrics, or a leaderboard score), and a plot of the first metric named on
the problem's `Plot:` line. It writes OUT/answer_key.md and OUT/answer_key.json, keeping the results of the
experiments that --only did not rerun; the exit status is 1 if a command failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cs336_alignment.course.handout.writeup import Problem, Writeup, load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
METRIC_RE = re.compile(r"`((?:eval|reward|loss|policy|response|rm|dpo|value|kl)/[\w/]+)`")


def answers(path: Path = HERE / "answers.md") -> dict[str, str]:
    """{problem name: model answer} from answers.md (`## name` sections)."""
    out, name = {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^## (\w+)\s*$", line)
        if m:
            name = m.group(1)
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return {k: v.strip() for k, v in out.items()}


TRAINS = ("pipeline", "pretrain", "sft", "ei", "rm", "dpo", "grpo", "ppo", "bon")  # commands that take --overwrite


def check_commands(path: Path = HERE / "answers.md") -> dict[str, list[str]]:
    """{problem name: its check commands}: the `Check: `...`` lines of the model answers in answers.md."""
    found = {name: re.findall(r"^Check: `([^`]+)`", text, flags=re.M) for name, text in answers(path).items()}
    return {name: commands for name, commands in found.items() if commands}


def commands_for(problem: Problem, out: Path, smoke: bool) -> list[list[str]]:
    """The problem's commands (or its answer's check commands) as argument lists, `runs/` moved under OUT,
    smoke-sized if asked."""
    texts = problem.commands
    if not texts:
        texts = check_commands().get(problem.name, [])  # a derivation's check: full size, with --smoke too
    elif smoke and problem.smoke_flags.startswith("python "):
        texts = [problem.smoke_flags]
    elif smoke:
        texts = [f"{t} {problem.smoke_flags}" for t in texts]
    result = []
    for text in texts:
        argv = shlex.split(text)
        argv = [str(out / a) if a.startswith("runs/") else a for a in argv]
        if argv[0] == "python":
            argv[0] = sys.executable
        if argv[1:3] == ["-m", "cs336_alignment"] and argv[3:4] and argv[3] in TRAINS and "--resume" not in argv:
            argv.append("--overwrite")  # a rerun of the key replaces its runs (a run directory is never reused silently)
        result.append(argv)
    return result


def run_outputs(argv: list[str]) -> list[Path]:
    """Paths the command writes: its --out / --ckpt values (the leaderboard's score.json sits beside --ckpt)."""
    paths = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--out", "--ckpt")]
    return paths[:1] if "leaderboard" in argv[:4] else paths


def last_metrics(path: Path) -> dict:
    """The last held-out record of a run directory, an eval json's metrics, or a leaderboard score file."""
    if path.suffix == ".pt":
        path = path.parent / "score.json"
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        return data.get("metrics", data) if isinstance(data, dict) else {}
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        return {}
    records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    return (evals or records or [{}])[-1]


def run_command(argv: list[str], log_path: Path) -> tuple[int, float, str]:
    """Run one command (output to log_path). Returns (exit code, CPU seconds of its process tree, output tail).
    The CPU time is the child's own rusage from wait4 (its user + system time plus that of the descendants it
    waited for), so commands running at the same time in other threads are not counted."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, log_path.read_text(encoding="utf-8", errors="replace")[-1500:]


def dependencies(problems: list[Problem], out: Path, smoke: bool) -> dict[str, set[str]]:
    """{problem: the problems whose outputs (--out / --ckpt paths) its commands read}."""
    writes = {q.name: [p for argv in commands_for(q, out, smoke) for p in run_outputs(argv)] for q in problems}
    needs = {}
    for q in problems:
        read = {Path(a) for argv in commands_for(q, out, smoke) for a in argv[1:] if a.startswith(str(out))}
        read -= set(writes[q.name])
        needs[q.name] = {other for other, paths in writes.items() if other != q.name
                         and any(r == w or w in r.parents for r in read for w in paths)}
    return needs


def run_problem(problem: Problem, out: Path, smoke: bool, log=print) -> dict:
    runs = []
    for i, argv in enumerate(commands_for(problem, out, smoke)):
        log(f"[{problem.name}] $ {shlex.join(argv)}")
        w0 = time.time()
        returncode, cpu, tail = run_command(argv, out / "logs" / f"{problem.name}_{i}.log")
        outputs = run_outputs(argv)
        runs.append({"command": shlex.join(argv), "returncode": returncode, "cpu_s": round(cpu, 1),
                     "wall_s": round(time.time() - w0, 1), "outputs": [str(p) for p in outputs],
                     "metrics": {k: v for p in outputs for k, v in last_metrics(p).items()
                                 if isinstance(v, (int, float))},
                     "log_tail": tail if returncode else ""})
        log(f"[{problem.name}]   exit {returncode}, {cpu:.1f} CPU-s")
    plot = None
    keys = METRIC_RE.findall(problem.attrs.get("Plot", [""])[0])
    dirs = [p for r in runs for p in r["outputs"] if Path(p).is_dir()]
    if keys and dirs:
        plot = out / "plots" / f"{problem.name}.png"
        subprocess.run([sys.executable, "-m", "cs336_alignment", "plot", *dirs, "--metric", keys[0],
                        "--out", str(plot)], cwd=REPO, capture_output=True)
        plot = str(plot) if plot.exists() else None
    cpu = sum(r["cpu_s"] for r in runs)
    return {"name": problem.name, "budget_cpu_min": problem.cpu_minutes, "cpu_min": round(cpu / 60, 2),
            "over_budget": bool(problem.cpu_minutes and cpu / 60 > problem.cpu_minutes), "runs": runs, "plot": plot}


SEEDED = ("eval/accuracy/greedy", "eval/reward/gold_mean", "reward/gold_mean", "response/length_mean")


def seed_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """{variant: its runs} for the runs whose commands differ only in --seed and --out (the course's "4 seeds each"):
    the variant is the first run's --out with a trailing _s<N> / _seed<N> dropped."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        argv = shlex.split(run["command"])
        key = tuple(a for i, a in enumerate(argv) if a not in ("--seed", "--out") and
                    (i == 0 or argv[i - 1] not in ("--seed", "--out")) and a != "--overwrite")
        groups.setdefault(key, []).append(run)
    named = {}
    for members in groups.values():
        first = members[0]["outputs"][0] if members[0]["outputs"] else members[0]["command"]
        named[re.sub(r"_s(eed)?\d+$", "", Path(first).name)] = members
    return named


def seed_table(runs: list[dict]) -> list[str]:
    """Mean ± standard error over seeds of each variant's last held-out metrics (only variants with >= 2 seeds)."""
    groups = {name: members for name, members in seed_groups(runs).items() if len(members) >= 2}
    keys = [k for k in SEEDED if any(k in r["metrics"] for members in groups.values() for r in members)]
    if not groups or not keys:
        return []
    lines = ["", "| variant | seeds | " + " | ".join(f"`{k}`" for k in keys) + " | CPU-s per run |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for name, members in groups.items():
        cells = []
        for key in keys:
            values = [r["metrics"][key] for r in members if key in r["metrics"]]
            mean = sum(values) / len(values) if values else float("nan")
            se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5 \
                if len(values) > 1 else float("nan")
            cells.append(f"{mean:.4g} ± {se:.2g}")
        cpu = sum(r["cpu_s"] for r in members) / len(members)
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + f" | {cpu:.0f} |")
    return lines


def write_key(w: Writeup, results: list[dict], model_answers: dict[str, str], out: Path, smoke: bool) -> Path:
    lines = [f"# Answer key ({'smoke size: numbers are meaningless, commands ran' if smoke else 'full size'})", "",
             "Instructor-only. Built by `python -m cs336_alignment.course.handout.answer_key`.", "",
             "| problem | points | CPU budget (min) | measured (min) | status |", "|---|---|---|---|---|"]
    by_name = {r["name"]: r for r in results}
    for p in w.problems:
        r = by_name.get(p.name)
        if r:
            ok = all(run["returncode"] == 0 for run in r["runs"])
            status = ("FAILED" if not ok else "over budget" if r["over_budget"] else "ok")
            budget = "—" if p.cpu_minutes is None else f"{p.cpu_minutes:g}"
            lines.append(f"| {p.name} | {p.points:g} | {budget} | {r['cpu_min']:g} | {status} |")
    lines.append("")
    for p in w.problems:
        if p.kind == "code":
            continue
        lines += [f"## {p.name} ({p.points:g} points, {p.kind})", ""]
        r = by_name.get(p.name)
        for run in (r or {}).get("runs", []):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(run["metrics"].items())
                              if not k.startswith(("perf/", "step", "lr")))
            lines += [f"- `{run['command']}`: exit {run['returncode']}, {run['cpu_s']:g} CPU-s", f"  - {shown or '—'}"]
            if run["log_tail"]:
                lines += ["  ```", *("  " + x for x in run["log_tail"].splitlines()[-8:]), "  ```"]
        lines += seed_table((r or {}).get("runs", []))
        if r and r["plot"]:
            lines += ["", f"![{p.name}]({os.path.relpath(r['plot'], out)})"]
        if p.name in model_answers:
            lines += ["", "**Model answer.** " + model_answers[p.name]]
        lines.append("")
    path = out / "answer_key.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "answer_key.json").write_text(json.dumps(results, indent=1) + "\n")
    return path


def run_all(problems: list[Problem], out: Path, smoke: bool, jobs: int) -> list[dict]:
    """Run the problems, `jobs` at a time, each after the problems it depends on (`dependencies`)."""
    needs = dependencies(problems, out, smoke)
    done = {q.name: threading.Event() for q in problems}
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    def task(q: Problem) -> dict:
        for other in needs[q.name]:
            done[other].wait()
        try:
            return run_problem(q, out, smoke, log)
        finally:
            done[q.name].set()

    # A problem is submitted after the ones it needs (writeup order), so a waiting task never blocks them all.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(task, q) for q in problems]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cs336_alignment.course.handout.answer_key", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "answer_key")
    p.add_argument("--smoke", action="store_true", help="append each problem's Smoke: flags (CI)")
    p.add_argument("--only", nargs="*", default=None,
                   help="problem names to run (default: every experiment and every derivation's check)")
    p.add_argument("--jobs", type=int, default=1, help="experiments run at the same time (default 1)")
    args = p.parse_args(argv)
    w = load(HERE / "writeup.md")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checked = check_commands()
    runnable = [q for q in w.problems if q.commands or q.name in checked]
    chosen = [q for q in runnable if args.only is None or q.name in args.only]
    unknown = set(args.only or []) - {q.name for q in runnable}
    if unknown:
        p.error(f"no experiment named {', '.join(sorted(unknown))}")
    results = run_all(chosen, out, args.smoke, max(1, args.jobs))
    previous = out / "answer_key.json"  # keep the experiments this call did not rerun
    if previous.exists() and args.only is not None:
        ran = {r["name"] for r in results}
        results += [r for r in json.loads(previous.read_text()) if r["name"] not in ran]
    order = {q.name: i for i, q in enumerate(w.problems)}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    path = write_key(w, results, answers(), out, args.smoke)
    failed = [r["name"] for r in results if any(run["returncode"] for run in r["runs"])]
    print(f"wrote {path}; {len(results)} experiments, "
          f"{sum(r['cpu_min'] for r in results):.1f} CPU-minutes" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
