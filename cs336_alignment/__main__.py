"""Command line: `python -m cs336_alignment <command> [flags]`; `<command> --help` lists each command's flags.

    pipeline   every stage on the task world (pretrain, SFT, RM, DPO, GRPO, PPO, best-of-N) and the report:
               runs/<name>/report.md, report.json and the plots
    pretrain   pretrain a TransformerLM on raw text (the task world's documents or --data FILE.txt)
    sft        supervised fine-tuning on chat demonstrations (the task world or --data FILE.jsonl)
    ei         expert iteration: sample, keep what the gold reward accepts, SFT on it, repeat
    rm         train a reward model on preference pairs
    dpo        direct preference optimization
    grpo       REINFORCE / GRPO against a verifiable or learned reward
    ppo        PPO with a value head and a KL penalty to the reference
    bon        best-of-N sampling with a reward model
    eval       accuracy, format rate and length of a checkpoint on the held-out split
    styles     accuracy split by response style (worked steps vs final line only) and the worked share
    export     write a checkpoint as a Hugging Face directory (config.json + safetensors + tokenizer files)
    bench      speed benchmarks (ratios against a baseline measured in the same run)
    leaderboard  post-train within a CPU budget, then score held-out accuracy (the assignment's last problem)
    plot       plot one metric of several runs' metrics.jsonl against the step
    handout    build / check the student handout
    grade      grading helpers
    tasks      print task-world problems (jsonl: GSM8K or chat format; or raw pretraining text)
    tokenizer  train the task world's BPE tokenizer and write its files (data/tokenizer/ is this command's output)

A mistake in what you asked for (a malformed data line, a missing checkpoint, a bad flag value) prints one line,
`error: <file>:<line>: <field> ...` or `error: --flag ...`, and exits with status 2; add --debug (anywhere on
the line) to see the Python traceback instead.
"""
from __future__ import annotations

import os
import sys

# Before torch is imported anywhere: OpenMP's default busy-wait made each small parallel op cost ~ms on
# 2-core machines (token-by-token sampling, chunked kernels); PASSIVE threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib  # noqa: E402

# command -> module with a main(argv), imported only when its command runs (so `eval` never imports the RL loops).
# A literal, not read from the stage table (pipeline/stages.py), which imports every loop; tests/test_cli.py checks
# that every stage's loop is a command here.
COMMANDS = {
    "pipeline": "cs336_alignment.pipeline.runner",
    "pretrain": "cs336_alignment.train.pretrain",
    "sft": "cs336_alignment.train.sft",
    "ei": "cs336_alignment.train.expert_iteration",
    "rm": "cs336_alignment.train.reward_model",
    "dpo": "cs336_alignment.train.dpo",
    "grpo": "cs336_alignment.train.grpo",
    "ppo": "cs336_alignment.train.ppo",
    "bon": "cs336_alignment.train.bon",
    "eval": "cs336_alignment.evaluation.evaluate",
    "styles": "cs336_alignment.evaluation.styles",
    "export": "cs336_alignment.lm.export",
    "bench": "cs336_alignment.bench.cli",
    "leaderboard": "cs336_alignment.course.leaderboard",
    "plot": "cs336_alignment.pipeline.plotting",
    "handout": "cs336_alignment.course.handout",
    "grade": "cs336_alignment.course.grading",
    "tasks": "cs336_alignment.world.tasks",
    "tokenizer": "cs336_alignment.lm.tokenizer",
}


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user can fix (data files, checkpoints, flag values), else None.

    DataError messages already read "<file>:<line>: field '<name>': <problem>", CheckpointError and RunDirError
    ones "<file>: <problem>"; an OSError names its file.
    """
    if isinstance(e, OSError) and e.filename and not str(e).startswith(str(e.filename)):
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, (OSError, ValueError, FloatingPointError)):  # DataError, CheckpointError, RunDirError and
        # config checks are ValueErrors; FloatingPointError: a loss that became NaN (train.common.finite_or_raise)
        return " ".join(str(e).split())
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])  # lazily: `eval` need not import the RL code
    try:
        result = module.main(rest)
    except Exception as e:
        message = user_error(e)
        if debug or message is None:
            raise
        print(f"error: {message}  (--debug shows the traceback)", file=sys.stderr)
        return 2
    # Commands that check things (handout check, grade) return an exit code; training commands return a dict.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
