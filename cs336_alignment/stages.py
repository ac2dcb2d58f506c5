"""Stage scheduling of the pipeline: each stage's config (preset overrides + the run's wiring), the shipped
base/SFT checkpoints, and running the post-training stages in worker processes as their inputs become ready.

    pretrain -> sft [-> sft_more]                      in the pipeline's process, one after the other
    rm, grpo_gold                                      start together (both need only SFT)
    dpo, grpo_rm, ppo, bon    when rm is done          (its pairs, its checkpoint)
    rm_small                  needs only SFT           (a smaller reward model; the pipeline's --small-rm)
    grpo_rm_small, bon_small  when rm_small is done    (GRPO and best-of-N against it)
    sft_baseline              when grpo_gold is done   (its training CPU seconds: the matched compute)
    ei                        needs only SFT           (expert iteration; starts when a worker is free and no
                                                        stage before it in POST_STAGES is ready)
    the pipeline's evaluations                         when their policy's stage (and rm) are done and a worker
                                                        has no stage to start
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path

from cs336_alignment.checkpoint import SHIPPED_DIR, load_checkpoint, load_checkpoint_extra, save_checkpoint
from cs336_alignment.model import TransformerConfig, TransformerLM
from cs336_alignment.presets import PRESETS, stage_config
from cs336_alignment.train import bon, dpo, expert_iteration, grpo, ppo, pretrain, reward_model, sft

SHIPPED = SHIPPED_DIR  # data/checkpoints/<preset>/: base/SFT checkpoints per preset
POST_STAGES = ("rm", "dpo", "grpo_gold", "sft_baseline", "grpo_rm", "ppo", "bon", "rm_small", "grpo_rm_small",
               "bon_small", "ei")  # in the order they start
SMALL_RM_STAGES = ("rm_small", "grpo_rm_small", "bon_small")  # the smaller reward model and what optimises it
# stage -> the stage it waits for: the reward model's pairs or checkpoint; grpo_gold's training CPU seconds
NEEDS = {"dpo": "rm", "grpo_rm": "rm", "ppo": "rm", "bon": "rm", "sft_baseline": "grpo_gold",
         "grpo_rm_small": "rm_small", "bon_small": "rm_small"}
LOOPS = {"pretrain": pretrain.train, "sft": sft.train, "sft_more": sft.train, "rm": reward_model.train,
         "dpo": dpo.train, "grpo_gold": grpo.train, "sft_baseline": sft.train, "grpo_rm": grpo.train,
         "ppo": ppo.train, "bon": bon.train, "rm_small": reward_model.train, "grpo_rm_small": grpo.train,
         "bon_small": bon.train, "ei": expert_iteration.train}  # stage -> the loop that trains it

# ---------------------------------------------------------------------------------------------------------
# Stage configs: the preset's overrides (presets.py) plus the run's wiring
# ---------------------------------------------------------------------------------------------------------


def base_sft_configs(preset_name: str, out: Path, seed: int, device: str, threads: int) -> list[tuple[str, object]]:
    """[(stage, PretrainConfig | SFTConfig)] that make the base and SFT models: pretrain, sft and, when the
    preset has a "sft_more" section, a second SFT phase that continues the first."""
    run = dict(device=device, threads=threads)
    configs = [("pretrain", stage_config(preset_name, "pretrain", out=str(out / "pretrain"), seed=seed, **run)),
               # SFT draws its demonstrations with another seed than pretraining: mostly new questions.
               ("sft", stage_config(preset_name, "sft", out=str(out / "sft"), init=str(out / "pretrain" / "ckpt.pt"),
                                    seed=seed + 1, **run))]
    if "sft_more" in PRESETS[preset_name]:
        configs.append(("sft_more", stage_config(preset_name, "sft_more", out=str(out / "sft_more"),
                                                 init=str(out / "sft" / "ckpt.pt"), seed=seed + 1, **run)))
    return configs


def post_configs(preset_name: str, out: Path, sft_ckpt: str, seed: int, device: str, threads: int,
                 length_bias: float, base_sft: list[tuple[str, object]] | None = None) -> dict[str, object]:
    """{stage: config} of the post-training stages; all start from `sft_ckpt` and share the reward model (the
    *_small stages: the smaller one, the preset's rm_small section, labelled by the same annotator).
    sft_baseline's max_cpu_s is left 0: the scheduler sets it to grpo_gold's training CPU seconds."""
    common = dict(seed=seed, device=device, threads=threads, init=sft_ckpt)
    rm_ckpt, small_ckpt = str(out / "rm" / "ckpt.pt"), str(out / "rm_small" / "ckpt.pt")
    pairs = dict(data=str(out / "rm" / "preferences_train.jsonl"), eval_data=str(out / "rm" / "preferences_eval.jsonl"))
    # The demonstrations the SFT model was trained on, from its saved config (shipped: the config minus paths; a
    # field the checkpoint predates had its default value); the last base/SFT stage's for a checkpoint saved
    # without one.
    last_sft = (base_sft or base_sft_configs(preset_name, out, seed, device, threads))[-1][1]
    trained = load_checkpoint_extra(sft_ckpt).get("config") or dataclasses.asdict(last_sft)
    demonstrations = {k: trained.get(k, getattr(sft.SFTConfig, k)) for k in ("seed", "n_examples", "verbosity", "hasty",
                                                                               "sloppy", "split", "filter_correct")}
    return {
        "rm": stage_config(preset_name, "rm", out=str(out / "rm"), length_bias=length_bias, **common),
        "dpo": stage_config(preset_name, "dpo", out=str(out / "dpo"), **pairs, **common),
        "grpo_gold": stage_config(preset_name, "grpo", out=str(out / "grpo_gold"), reward="gold", **common),
        "sft_baseline": stage_config(preset_name, "sft_baseline", name="sft_baseline", out=str(out / "sft_baseline"),
                                     init=sft_ckpt, max_cpu_s=0.0, device=device, threads=threads,
                                     **demonstrations),
        "grpo_rm": stage_config(preset_name, "grpo", out=str(out / "grpo_rm"), reward="rm", reward_model=rm_ckpt,
                                **common),
        "ppo": stage_config(preset_name, "ppo", out=str(out / "ppo"), reward="rm", reward_model=rm_ckpt, **common),
        "bon": stage_config(preset_name, "bon", out=str(out / "bon"), rm=rm_ckpt, **common),
        "rm_small": stage_config(preset_name, "rm_small", name="rm_small", out=str(out / "rm_small"),
                                 length_bias=length_bias, **common),
        "grpo_rm_small": stage_config(preset_name, "grpo", out=str(out / "grpo_rm_small"), reward="rm",
                                      reward_model=small_ckpt, **common),
        "bon_small": stage_config(preset_name, "bon", out=str(out / "bon_small"), rm=small_ckpt, **common),
        "ei": stage_config(preset_name, "ei", out=str(out / "ei"), **common),
    }


# ---------------------------------------------------------------------------------------------------------
# Shipped base / SFT checkpoints
# ---------------------------------------------------------------------------------------------------------


def shipped(preset_name: str) -> tuple[Path, Path] | None:
    """(base, sft) checkpoints shipped for a preset under data/checkpoints/<preset>/, or None."""
    base, sft = SHIPPED / preset_name / "base.pt", SHIPPED / preset_name / "sft.pt"
    return (base, sft) if base.is_file() and sft.is_file() else None


def shipped_metrics(preset_name: str, stage: str) -> Path:
    """The metrics.jsonl of a shipped base/SFT stage (its training curve, for the report)."""
    return SHIPPED / preset_name / f"{stage}.metrics.jsonl"


def ship(out_dir: Path, preset_name: str, base_stage: str, sft_stage: str) -> Path:
    """Copy the weights (no optimizer state) of a from-scratch run's base and SFT models, and their metrics,
    to data/checkpoints/<preset>/. The same command on the same machine type rewrites the same bytes."""
    dest = SHIPPED / preset_name
    dest.mkdir(parents=True, exist_ok=True)
    for label, stage in (("base", base_stage), ("sft", sft_stage)):
        src = out_dir / stage / "ckpt.pt"
        extra = load_checkpoint_extra(src)
        model = TransformerLM(TransformerConfig(**extra["model_config"]))
        step = load_checkpoint(src, model)
        recipe = {k: v for k, v in extra["config"].items() if k not in ("out", "init", "name")}  # no paths
        save_checkpoint(model, None, step, dest / f"{label}.pt", model_config=extra["model_config"], config=recipe,
                        provenance=None)   # no pid or time: the same command rewrites the same bytes
    for stage in ("pretrain", "sft", "sft_more"):
        if (out_dir / stage / "metrics.jsonl").is_file():
            lines = [json.loads(line) for line in (out_dir / stage / "metrics.jsonl").read_text().splitlines()]
            for line in lines:  # the run's paths, as runs/<run name>/...: nothing of this machine is shipped
                line.get("config", {}).update({k: portable_path(v, out_dir) for k, v in
                                               line.get("config", {}).items() if k in ("out", "init")})
            (dest / f"{stage}.metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return dest


def portable_path(path: str, out_dir: Path) -> str:
    """`path` inside the run directory `out_dir` as runs/<out_dir's name>/<the rest>; other paths unchanged."""
    inside = Path(path).is_relative_to(out_dir)
    return str(Path("runs", out_dir.name, Path(path).relative_to(out_dir))) if inside and path else path


# ---------------------------------------------------------------------------------------------------------
# Running stages: in this process (--jobs 1) or in worker processes
# ---------------------------------------------------------------------------------------------------------


class InProcess(Executor):
    """--jobs 1: an Executor that runs each call at once, in this process (an exception is raised as is)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def make_pool(jobs: int) -> Executor:
    """Where the stages and evaluations run: this process (jobs = 1) or `jobs` worker processes. Workers are
    spawned, not forked: a fresh interpreter each, safe with torch's threads and CUDA."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return InProcess()
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def run_stage(stage: str, cfg) -> tuple[dict, float, float]:
    """The stage's loop, LOOPS[stage](cfg), in the calling process (a worker's, with --jobs > 1).

    Returns:
        (its result dict, wall seconds, CPU seconds of this process during the call).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    result = LOOPS[stage](cfg)
    return result, time.perf_counter() - t0, time.process_time() - c0


def record(stages: dict, name: str, result: dict, wall_s: float, cpu_s: float) -> dict:
    """Keep a stage's scalar results, its wall and CPU seconds in stages[name] (a loop's own "cpu_s", training
    only, becomes "train_cpu_s"); returns `result`."""
    scalars = {("train_cpu_s" if k == "cpu_s" else k): v for k, v in result.items()
               if isinstance(v, (int, float, str)) and k != "checkpoint"}
    stages[name] = {**scalars, "wall_s": wall_s, "cpu_s": cpu_s}
    return result


def run_post_training(names: list[str], configs: dict, pool: Executor, jobs: int, stages: dict,
                      evaluations: dict[str, tuple[tuple[str, ...], Callable[[dict], tuple]]] | None = None,
                      ) -> tuple[dict[str, dict], dict[str, object]]:
    """Train the post-training stages `names` (each with the stage it NEEDS), at most `jobs` at a time: whenever
    one finishes, start the first of the others (in POST_STAGES order) whose needed stage is done.

    evaluations: {label: (the stages it needs, make)}, make(results) -> (fn, *args): a call that runs in a worker
    once its stages are done, whenever no stage is ready to start (so evaluations fill workers that would
    otherwise wait, and never hold a stage back), in the order given. The stages it needs must be in `names`.

    Returns:
        ({stage: its train() result}, {label: its evaluation's return value}); stages[stage] gets its seconds
        (see `record`).
    """
    evaluations = dict(evaluations or {})
    results, evaluated, running, waiting = {}, {}, {}, list(names)
    while waiting or evaluations or running:
        for stage in [s for s in waiting if s not in NEEDS or NEEDS[s] in results]:
            if len(running) == jobs:
                break
            cfg = configs[stage]
            if stage == "sft_baseline":  # matched compute: the CPU seconds grpo_gold's training took
                cfg = dataclasses.replace(cfg, max_cpu_s=results["grpo_gold"]["cpu_s"])
            waiting.remove(stage)
            running[pool.submit(run_stage, stage, cfg)] = stage
        if not any(s not in NEEDS or NEEDS[s] in results for s in waiting):  # no stage can start: evaluate
            for label in [label for label, (needs, _) in evaluations.items() if set(needs) <= set(results)]:
                if len(running) == jobs:
                    break
                fn, *args = evaluations.pop(label)[1](results)
                running[pool.submit(fn, *args)] = ("eval", label)
        if not running:  # nothing runs and nothing can start: what is left waits for a stage not in `names`
            raise ValueError(f"stages {waiting} and evaluations {sorted(evaluations)} need stages that do not run")
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            name = running.pop(future)
            if isinstance(name, tuple):
                evaluated[name[1]] = future.result()
                continue
            results[name] = record(stages, name, *future.result())
            print(f"{name} done: {stages[name]['wall_s']:.0f} s wall, {stages[name]['cpu_s']:.0f} s CPU")
    return results, evaluated


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its child processes that have exited (os.times)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
