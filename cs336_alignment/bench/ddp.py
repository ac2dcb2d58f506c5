"""`bench ddp`: the data parallel scaling of one stage, 1 process against N (torchrun), measured in one run.

    python -m cs336_alignment bench ddp                         # SFT, 1 vs 2 processes, 3 interleaved rounds
    python -m cs336_alignment bench ddp --nproc 8 --stage grpo  # a laptop with 8 cores

Every run is the stage's own loop started by `distributed.launch` (a fresh interpreter, one thread per process),
with the same global batch at every process count (each of N ranks takes 1/N of it), so the rates compare the same
work. The runs alternate (1, N, 1, N, ...) so that a machine shared with other jobs slows both alike; the ratio is
the median over rounds of N's rate / 1's rate of the same round.
Rates: SFT's perf/tokens_per_s (training only, summed over ranks; same batches, so its ratio is the ratio of
optimizer steps per second), GRPO's steps per second (1 / the median perf/step_s: sampling + training). The first
logged window (warm-up) is left out.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from cs336_alignment.train import distributed
from cs336_alignment.train import grpo, sft
from cs336_alignment.train.common import read_metrics


def stage_config(stage: str, steps: int, out: Path):
    """The benchmarked config: the stage's defaults (the tiny model for SFT, the shipped SFT policy for GRPO),
    `steps` optimizer steps / rollout batches, evaluations only at the end and kept small."""
    if stage == "sft":
        return sft.SFTConfig(out=str(out), overwrite=True, num_steps=steps, n_examples=1024, n_eval_examples=16,
                             n_eval_problems=0, log_every=5, eval_every=steps, checkpoint_every=steps,
                             warmup_steps=2, quiet=True)
    return grpo.GRPOConfig(out=str(out), overwrite=True, num_steps=steps, n_eval_problems=4, eval_samples=1,
                           eval_every=steps, checkpoint_every=steps, prompts_per_step=16, quiet=True)


def rate(stage: str, metrics_path: Path) -> float:
    """SFT: median tokens/s of the logged windows after the first; GRPO: 1 / median seconds per rollout batch
    after the first."""
    records = [r for r in read_metrics(metrics_path) if "perf/tokens_per_s" in r]
    if stage == "sft":
        return statistics.median(r["perf/tokens_per_s"] for r in records[1:])
    return 1.0 / statistics.median(r["perf/step_s"] for r in records[1:])


def run(stage: str, nproc: int, rounds: int, steps: int) -> dict:
    """{"rates": {1: [...], nproc: [...]}, "ratios": [...], "ratio": median ratio} (see the module docstring)."""
    train = {"sft": sft.train, "grpo": grpo.train}[stage]
    rates: dict[int, list[float]] = {1: [], nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for n in (1, nproc):
                out = Path(tmp) / f"{stage}_{n}_{r}"
                _, wall, _ = distributed.launch(train, stage_config(stage, steps, out), n)
                rates[n].append(rate(stage, out / "metrics.jsonl"))
                print(f"round {r + 1}/{rounds}: {n} process(es): {rates[n][-1]:.4g} "
                      f"{'tokens/s' if stage == 'sft' else 'steps/s'} ({wall:.0f} s wall with start-up)", flush=True)
    ratios = [b / a for a, b in zip(rates[1], rates[nproc])]
    return {"rates": rates, "ratios": ratios, "ratio": statistics.median(ratios)}


def main(args: argparse.Namespace) -> dict:
    result = run(args.stage, args.nproc, args.rounds, args.steps)
    unit = "tokens/s" if args.stage == "sft" else "steps/s"
    print(f"\n{args.stage}: 1 process {statistics.median(result['rates'][1]):.4g} {unit}, {args.nproc} processes "
          f"{statistics.median(result['rates'][args.nproc]):.4g} {unit}: speed-up {result['ratio']:.2f}x "
          f"(per round: {', '.join(f'{r:.2f}' for r in result['ratios'])}; ideal {args.nproc}x)")
    return result


def add_parser(sub) -> None:
    """The `bench ddp` subcommand (bench.py's table)."""
    d = sub.add_parser("ddp", help="one stage's speed at 1 and N processes (torchrun data parallel), interleaved")
    d.add_argument("--stage", choices=("sft", "grpo"), default="sft")
    d.add_argument("--nproc", type=int, default=2, help="processes of the data parallel runs (one thread each)")
    d.add_argument("--rounds", type=int, default=3, help="interleaved (1, N) pairs; the ratio is their median")
    d.add_argument("--steps", type=int, default=40, help="optimizer steps (SFT) or rollout batches (GRPO) per run")
    d.set_defaults(func=main)
