"""The leaderboard: held-out gold accuracy after post-training within a fixed CPU budget (the a5 leaderboard, on a CPU).

    python -m cs336_alignment leaderboard --ckpt runs/lb/ckpt.pt -- \
        python -m cs336_alignment grpo --init data/checkpoints/tiny/sft.pt --out runs/lb --n-eval-problems 0

1. Runs the training command (everything after `--`) with one thread (OMP_NUM_THREADS=1), polling the CPU time of
   its whole process tree (user + system, exited children included; Linux /proc). When the tree reaches
   `--budget-cpu-s` (default 600 = 10 CPU-minutes) it is stopped; the checkpoint at `--ckpt` as it stands then
   (checkpoints are written atomically) is what gets scored. Evaluations inside the training command count
   against the budget, so turn them off; the leaderboard's own evaluation below does not count.
2. Evaluates that checkpoint greedily (`python -m cs336_alignment eval`) on a fixed held-out set: the first
   LEADERBOARD_PROBLEMS problems of the task world's *test* split drawn with LEADERBOARD_SEED. The split is a hash
   of the question text (tasks.split_of), so no training code, which draws from the train split, ever sees them.
3. Writes the score file (`--out`, default next to the checkpoint): accuracy, its standard error, the CPU seconds
   the training used, the budget, whether it was stopped at the budget, the command, and the SHA-256 of the
   package's code and of the checkpoint, so a score can be traced to the code that made it.

Only a checkpoint the command made is scored (`created_by_command` in the score file): `--ckpt` must not exist
before the start, and the provenance record every training loop saves in its checkpoints (provenance.py: pid,
time, steps, CPU-s, the init checkpoint's SHA-256) must name a process of the command's tree, a time within the
run and no more CPU than the tree used. A checkpoint copied in (`cp`), or one from before the run, is refused with
one line, exit 2. Not detected: a command that loads a trained model and saves it again during the run (the score
file's `provenance` shows its steps, CPU-s and init hash).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cs336_alignment.lm.checkpoint import load_checkpoint_extra

LEADERBOARD_SEED = 2025            # the held-out set: never the seed the training loops evaluate on (0)
LEADERBOARD_PROBLEMS = 1000
DEFAULT_BUDGET_CPU_S = 600.0       # 10 CPU-minutes on one thread
POLL_S = 0.2
PACKAGE_DIR = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# CPU time of a process tree (Linux /proc)
# ---------------------------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of pid incl. its waited-for children) from /proc/<pid>/stat, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()       # after "pid (comm) ": state ppid ... utime stime cutime cstime
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / ticks


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used by `root` and every live descendant (exited ones are in their parent's cutime/cstime)."""
    return process_tree(root)[0]


def process_tree(root: int) -> tuple[float, set[int]]:
    """(CPU seconds as in tree_cpu_seconds, the pids of `root` and its live descendants)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = s
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += [child for child, (parent, _) in stats.items() if parent == pid]
    return total, seen


def run_with_cpu_budget(cmd: list[str], budget_s: float, *, log=print) -> dict:
    """Run `cmd` with one thread until it exits or its process tree has used `budget_s` CPU seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    start = time.time()
    usage_before = os.times()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    used, stopped, pids = 0.0, False, {proc.pid}
    while proc.poll() is None:
        if Path("/proc").is_dir():
            cpu, seen = process_tree(proc.pid)
            used, pids = max(used, cpu), pids | seen
            if used >= budget_s:
                log(f"leaderboard: the training command reached the budget ({used:.1f} >= {budget_s:g} CPU-s): "
                    f"stopping it")
                stopped = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
        time.sleep(POLL_S)
    after = os.times()
    waited = (after.children_user - usage_before.children_user) + (after.children_system - usage_before.children_system)
    return {"returncode": proc.returncode, "cpu_s": max(used, waited), "stopped_at_budget": stopped,
            "wall_s": time.time() - start, "start": start, "end": time.time(), "pids": sorted(pids)}


# ---------------------------------------------------------------------------------------------------------
# Provenance: the checkpoint was made by the command, during the run
# ---------------------------------------------------------------------------------------------------------

def check_provenance(ckpt: Path, run: dict, slack_cpu_s: float = 2.0) -> tuple[dict, str | None]:
    """(the checkpoint's provenance record, None) when the training command's process tree wrote `ckpt` during
    `run` (run_with_cpu_budget's result) with no more CPU than the tree used; else (record, why not).

    The record is the one checkpoint.save_checkpoint stores (provenance.py). Checked: it exists, its pid is one of
    the pids seen in the command's process tree, it was written between the start and the end of the run, and
    its CPU seconds do not exceed what the leaderboard measured for the tree (plus `slack_cpu_s` for polling).
    """
    try:
        record = load_checkpoint_extra(ckpt).get("provenance")
    except Exception as err:             # noqa: BLE001 - any unreadable file is refused with its reason
        return {}, f"cannot be read as a checkpoint ({type(err).__name__})"
    if not isinstance(record, dict) or not {"pid", "written_at", "cpu_s"} <= set(record):
        return {}, "has no provenance record (not written by this package's training loops)"
    if record["pid"] not in run["pids"]:
        return record, f"was written by pid {record['pid']}, which is not in the training command's process tree"
    if not run["start"] <= record["written_at"] <= run["end"]:
        return record, "was written before the training command started"
    if record["cpu_s"] > run["cpu_s"] + slack_cpu_s:
        return record, (f"claims {record['cpu_s']:.1f} CPU-s, more than the {run['cpu_s']:.1f} CPU-s the training "
                        f"command used")
    return record, None


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------

def code_sha256(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the package's .py files (sorted relative paths and contents)."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def accuracy_and_se(rewards: list[float]) -> tuple[float, float]:
    """Mean gold reward (the fraction right when rewards are 0/1) and its standard error sqrt(var / n)."""
    n = len(rewards)
    if n == 0:
        raise ValueError("no evaluated problems")
    mean = sum(rewards) / n
    var = sum((r - mean) ** 2 for r in rewards) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def evaluate_checkpoint(ckpt: Path, n_problems: int, seed: int = LEADERBOARD_SEED) -> dict:
    """Greedy gold accuracy of `ckpt` on the leaderboard's held-out problems (the `eval` command, one thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, "-m", "cs336_alignment", "eval", "--ckpt", str(ckpt), "--split", "test",
               "--n-problems", str(n_problems), "--seed", str(seed), "--threads", "1", "--show", "0",
               "--out", str(out)]
        t0 = os.times()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        t1 = os.times()
        samples = json.loads(out.read_text())["samples"]
    accuracy, se = accuracy_and_se([float(s["reward"]) for s in samples])
    return {"accuracy": accuracy, "se": se, "n_problems": len(samples),
            "eval_cpu_s": (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m cs336_alignment leaderboard", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s --ckpt CKPT [options] -- TRAINING COMMAND ...")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint the training command writes (scored)")
    p.add_argument("--budget-cpu-s", type=float, default=DEFAULT_BUDGET_CPU_S,
                   help="CPU seconds the training command may use (its whole process tree)")
    p.add_argument("--n-problems", type=int, default=LEADERBOARD_PROBLEMS, help="held-out problems to score on")
    p.add_argument("--out", type=Path, default=None, help="score file (default: score.json beside the checkpoint)")
    args = p.parse_args(own)
    if not train_cmd:
        p.error("give the training command after `--`")
    if args.ckpt.exists():
        print(f"error: {args.ckpt}: exists before the run; the scored checkpoint must be written by the training "
              f"command (remove it or pick another --ckpt)", file=sys.stderr)
        raise SystemExit(2)
    run = run_with_cpu_budget(train_cmd, args.budget_cpu_s)
    if not args.ckpt.exists():
        print(f"error: {args.ckpt}: the training command wrote no checkpoint there (exit status "
              f"{run['returncode']})", file=sys.stderr)
        raise SystemExit(2)
    provenance, refused = check_provenance(args.ckpt, run)
    if refused:
        print(f"error: {args.ckpt}: refused: it {refused} (a copied checkpoint?)", file=sys.stderr)
        raise SystemExit(2)
    if run["returncode"] not in (0, None) and not run["stopped_at_budget"]:
        print(f"leaderboard: the training command failed (exit status {run['returncode']}); scoring the "
              f"checkpoint it left", file=sys.stderr)
    score = evaluate_checkpoint(args.ckpt, args.n_problems)
    result = {"accuracy": score["accuracy"], "se": score["se"], "n_problems": score["n_problems"],
              "split": "test", "seed": LEADERBOARD_SEED, "cpu_s": round(run["cpu_s"], 2),
              "budget_cpu_s": args.budget_cpu_s, "stopped_at_budget": run["stopped_at_budget"],
              "train_wall_s": round(run["wall_s"], 1), "eval_cpu_s": round(score["eval_cpu_s"], 2),
              "command": train_cmd, "code_sha256": code_sha256(),
              "created_by_command": True,    # check_provenance: written by the command's process tree, in the run
              "provenance": {k: provenance.get(k) for k in ("steps", "cpu_s", "init_sha256")},
              "ckpt_sha256": hashlib.sha256(args.ckpt.read_bytes()).hexdigest()}
    out = args.out or args.ckpt.parent / "score.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"leaderboard: accuracy {100 * result['accuracy']:.1f}% ± {100 * result['se']:.1f} on "
          f"{result['n_problems']} held-out problems, {result['cpu_s']:.0f} / {args.budget_cpu_s:g} CPU-s -> {out}")
    return result


if __name__ == "__main__":
    main()
