"""Command line: `python -m cs336_alignment <command> [flags]`; `<command> --help` lists each command's flags.

    pipeline   pretrain -> sft -> eval on the task world; writes runs/<name>/report.md, report.json, plots
    pretrain   pretrain a TransformerLM on raw text (the task world's documents or --data FILE.txt)
    sft        supervised fine-tuning on chat demonstrations (the task world or --data FILE.jsonl)
    rm         train a reward model on preference pairs
    dpo        direct preference optimization
    grpo       REINFORCE / GRPO against a verifiable or learned reward
    ppo        PPO with a value head and a KL penalty to the reference
    bon        best-of-N sampling with a reward model
    eval       accuracy, format rate and length of a checkpoint on the held-out split
    bench      speed benchmarks (ratios against a baseline measured in the same run)
    leaderboard  post-train within a CPU budget, then score held-out accuracy (the assignment's last problem)
    plot       plot one metric of several runs' metrics.jsonl against the step
    handout    build / check the student handout
    grade      grading helpers
"""
from __future__ import annotations

import os
import sys

# Before torch is imported anywhere: OpenMP's default busy-wait made each small parallel op cost ~ms on
# 2-core machines (token-by-token sampling, chunked kernels); PASSIVE threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib  # noqa: E402

COMMANDS = {  # command -> module with a main(argv)
    "pipeline": "cs336_alignment.pipeline",
    "pretrain": "cs336_alignment.train.pretrain",
    "sft": "cs336_alignment.train.sft",
    "rm": "cs336_alignment.train.reward_model",
    "dpo": "cs336_alignment.train.dpo",
    "grpo": "cs336_alignment.train.grpo",
    "ppo": "cs336_alignment.train.ppo",
    "bon": "cs336_alignment.train.bon",
    "eval": "cs336_alignment.evaluate",
    "bench": "cs336_alignment.bench",
    "leaderboard": "cs336_alignment.leaderboard",
    "plot": "cs336_alignment.plotting",
    "handout": "cs336_alignment.handout",
    "grade": "cs336_alignment.grading",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    name = COMMANDS[command]
    try:
        module = importlib.import_module(name)  # lazily: `eval` need not import the RL code
    except ModuleNotFoundError as e:
        if e.name != name:  # a real missing dependency inside the module: show it
            raise
        print(f"`{command}` is not available in this version ({name} does not exist yet)", file=sys.stderr)
        return 2
    if not hasattr(module, "main"):
        print(f"`{command}`: {name} has no main(argv)", file=sys.stderr)
        return 2
    result = module.main(rest)
    # Commands that check things (handout check, grade) return an exit code; training commands return a dict.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
