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

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm.checkpoint import SHIPPED_DIR, load_checkpoint, load_checkpoint_extra, save_checkpoint
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.train.presets import PRESETS, EvalConfig, PipelineConfig
from cs336_alignment.world.safety import SafetyConfig
from cs336_alignment.world.knowledge import HallucinationConfig
from cs336_alignment.train import bon, dpo, expert_iteration, grpo, ppo, pretrain, reward_model, sft
from cs336_alignment.train.common import config_from_dict


# ---------------------------------------------------------------------------------------------------------
# Preset sections and their config classes
# ---------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, type] = {"pretrain": pretrain.PretrainConfig, "sft": sft.SFTConfig, "sft_more": sft.SFTConfig,
                             "sft_baseline": sft.SFTConfig, "rm": reward_model.RMConfig, "rm_small": reward_model.RMConfig,
                             "dpo": dpo.DPOConfig, "grpo": grpo.GRPOConfig, "ppo": ppo.PPOConfig, "bon": bon.BoNConfig,
                             "ei": expert_iteration.EIConfig, "eval": EvalConfig, "pipeline": PipelineConfig,
                             "safety": SafetyConfig, "hallucination": HallucinationConfig}


def stage_config(preset_name: str, section: str, **wiring):
    """The config of one stage: the section's class, its defaults, the preset's overrides, then `wiring`.

    Raises:
        ValueError: an unknown preset or section, or "preset 'P', stage 'S': ..." for a key that is not a
            field of the stage's config, or one that the pipeline sets (`wiring`).
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    if section not in SECTIONS:
        raise ValueError(f"unknown stage {section!r}; the stages are {sorted(SECTIONS)}")
    overrides = dict(PRESETS[preset_name].get(section, {}))
    if section == "sft_more":  # a second SFT phase continues the first: sft's overrides, then its own
        overrides = {**PRESETS[preset_name].get("sft", {}), **overrides}
    reserved = sorted(set(PRESETS[preset_name].get(section, {})) & set(wiring))
    if reserved:
        raise ValueError(f"preset {preset_name!r}, stage {section!r}: keys {reserved} are set by the pipeline")
    try:
        return config_from_dict(SECTIONS[section], {**overrides, **wiring})
    except (TypeError, ValueError) as e:
        raise ValueError(f"preset {preset_name!r}, stage {section!r}: {e}") from None


def check_presets() -> None:
    """Build every section of every preset (no wiring): raises on the first unknown or reserved key."""
    for name, sections in PRESETS.items():
        for section in sections:
            stage_config(name, section)


# ---------------------------------------------------------------------------------------------------------
# The stage table: everything the run, the scheduler and the report know about a stage
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wiring:
    """What the run decides for every stage: where it writes, what it starts from, seed and hardware."""
    out: Path            # the run directory; a stage writes to out/<stage>/
    seed: int
    device: str
    threads: int
    sft_ckpt: str = ""   # the SFT model every post-training stage starts from
    length_bias: float = 0.0
    demonstrations: dict = dataclasses.field(default_factory=dict)  # the SFT model's data fields (sft_baseline)

    def ckpt(self, stage: str) -> str:
        return str(self.out / stage / "ckpt.pt")

    def post(self, stage: str) -> dict:
        """The fields every post-training stage gets: its directory, seed, hardware and the SFT model."""
        return dict(out=str(self.out / stage), seed=self.seed, device=self.device, threads=self.threads,
                    init=self.sft_ckpt)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline. Adding a stage = one entry in STAGES (+ its loop and its tests)."""
    name: str                                 # its directory under the run, its key in report.json's "stages"
    section: str                              # the preset section (SECTIONS: its config class)
    train: Callable[[object], dict]           # the loop: train(cfg) -> its result dict ("checkpoint", "cpu_s", ...)
    wiring: Callable[[Wiring], dict]          # the config fields the run sets (paths, reward, seed, ...)
    needs: str | None = None                  # the stage whose output it reads: it starts when that one is done
    start: int = 0                            # post-training: when several can start, the lowest goes first
    label: str | None = None                  # its policy's row in the report (evaluated like every policy)
    versus: str | None = None                 # a stage its policy is also compared with (paired, on the same problems)
    curves: tuple | None = None               # training_curves.png: (left metrics, right metrics, left, right label)
    base: bool = False                        # makes the base/SFT model (in the run's process, before the rest)
    optional: bool = False                    # base: only if the preset has its section; post: only with --small-rm
    matched_cpu_of: str | None = None         # max_cpu_s := that stage's training CPU seconds (matched compute)


SFT_CURVES = (["loss/train", "eval/loss"], ["eval/accuracy/greedy", "eval/reward/gold_mean"],
              "loss (nats / response token)", "held-out accuracy (greedy, T = 1)")
RM_CURVES = (["loss/train", "eval/loss"], ["eval/rm/accuracy", "eval/rm/ceiling_accuracy"], "Bradley-Terry loss",
             "held-out pairwise accuracy")
GOLD_CURVES = (["reward/gold_mean", "response/worked_share"], ["eval/accuracy/greedy"],
               "gold reward / worked share of rollouts", "greedy accuracy")
PROXY_CURVES = (["reward/gold_mean", "reward/proxy_mean"], ["eval/accuracy/greedy"], "reward of rollouts",
                "greedy accuracy")


def _pairs(w: Wiring) -> dict:
    return dict(data=str(w.out / "rm" / "preferences_train.jsonl"), eval_data=str(w.out / "rm" / "preferences_eval.jsonl"))


# In the report's order (its rows: base, SFT, then each labelled stage); `start` orders the post-training starts.
STAGES = {s.name: s for s in [
    Stage("pretrain", "pretrain", pretrain.train, base=True,
          wiring=lambda w: dict(out=str(w.out / "pretrain"), seed=w.seed, device=w.device, threads=w.threads),
          curves=(["loss/train", "eval/loss"], [], "loss (nats / token)", "")),
    # SFT draws its demonstrations with another seed than pretraining: mostly new questions.
    Stage("sft", "sft", sft.train, base=True, needs="pretrain", curves=SFT_CURVES,
          wiring=lambda w: dict(out=str(w.out / "sft"), init=w.ckpt("pretrain"), seed=w.seed + 1, device=w.device,
                                threads=w.threads)),
    Stage("sft_more", "sft_more", sft.train, base=True, optional=True, needs="sft", curves=SFT_CURVES,
          wiring=lambda w: dict(out=str(w.out / "sft_more"), init=w.ckpt("sft"), seed=w.seed + 1, device=w.device,
                                threads=w.threads)),
    # More SFT on the SFT model's own demonstrations for the CPU seconds GRPO (gold) trained: the control.
    Stage("sft_baseline", "sft_baseline", sft.train, needs="grpo_gold", start=3, label="SFT + more SFT (matched CPU)",
          matched_cpu_of="grpo_gold", curves=SFT_CURVES,
          wiring=lambda w: dict(name="sft_baseline", out=str(w.out / "sft_baseline"), init=w.sft_ckpt, max_cpu_s=0.0,
                                device=w.device, threads=w.threads, **w.demonstrations)),
    Stage("grpo_gold", "grpo", grpo.train, start=2, label="GRPO (gold)", versus="sft_baseline", curves=GOLD_CURVES,
          wiring=lambda w: dict(reward="gold", **w.post("grpo_gold"))),
    Stage("ei", "ei", expert_iteration.train, start=10, label="Expert iteration", versus="grpo_gold",
          curves=(["reward/gold_mean", "response/worked_share"], ["eval/accuracy/greedy"],
                  "gold reward / worked share of samples", "greedy accuracy"),
          wiring=lambda w: w.post("ei")),
    Stage("grpo_rm", "grpo", grpo.train, needs="rm", start=4, label="GRPO (RM)", versus="grpo_rm_small",
          curves=PROXY_CURVES, wiring=lambda w: dict(reward="rm", reward_model=w.ckpt("rm"), **w.post("grpo_rm"))),
    Stage("grpo_rm_small", "grpo", grpo.train, needs="rm_small", start=8, optional=True, label="GRPO (small RM)",
          curves=PROXY_CURVES,
          wiring=lambda w: dict(reward="rm", reward_model=w.ckpt("rm_small"), **w.post("grpo_rm_small"))),
    Stage("ppo", "ppo", ppo.train, needs="rm", start=5, label="PPO",
          curves=(["reward/gold_mean", "reward/proxy_mean"], ["kl/ref"], "reward of rollouts", "KL to SFT (nats)"),
          wiring=lambda w: dict(reward="rm", reward_model=w.ckpt("rm"), **w.post("ppo"))),
    Stage("dpo", "dpo", dpo.train, needs="rm", start=1, label="DPO",
          curves=(["loss/train", "eval/loss"], ["eval/accuracy/greedy"], "DPO loss", "greedy gold accuracy"),
          wiring=lambda w: dict(**_pairs(w), **w.post("dpo"))),
    # Sample pairs from SFT, label them with the synthetic annotator, train the reward model.
    Stage("rm", "rm", reward_model.train, start=0, curves=RM_CURVES,
          wiring=lambda w: dict(length_bias=w.length_bias, **w.post("rm"))),
    Stage("bon", "bon", bon.train, needs="rm", start=6,
          wiring=lambda w: dict(reward_model=w.ckpt("rm"), **w.post("bon"))),
    # A smaller reward model from the same annotator (the preset's rm_small section), and what optimises it.
    Stage("rm_small", "rm_small", reward_model.train, start=7, optional=True, curves=RM_CURVES,
          wiring=lambda w: dict(name="rm_small", length_bias=w.length_bias, **w.post("rm_small"))),
    Stage("bon_small", "bon", bon.train, needs="rm_small", start=9, optional=True,
          wiring=lambda w: dict(reward_model=w.ckpt("rm_small"), **w.post("bon_small"))),
]}
BASE_STAGES = tuple(s.name for s in STAGES.values() if s.base)
POST_STAGES = tuple(sorted((s.name for s in STAGES.values() if not s.base), key=lambda n: STAGES[n].start))
SMALL_RM_STAGES = tuple(s for s in POST_STAGES if STAGES[s].optional)  # the smaller reward model and what optimises it
NEEDS = {s.name: s.needs for s in STAGES.values() if s.needs and not s.base}  # post-training stage -> what it waits for
LABELS = {s.label: s.name for s in STAGES.values() if s.label}  # report label -> stage, in the report's order

# ---------------------------------------------------------------------------------------------------------
# Stage configs: the preset's overrides (presets.py) plus the run's wiring
# ---------------------------------------------------------------------------------------------------------


def base_sft_configs(preset_name: str, out: Path, seed: int, device: str, threads: int) -> list[tuple[str, object]]:
    """[(stage, PretrainConfig | SFTConfig)] that make the base and SFT models: pretrain, sft and, when the
    preset has a "sft_more" section, a second SFT phase that continues the first."""
    wiring = Wiring(out, seed, device, threads)
    return [(s.name, stage_config(preset_name, s.section, **s.wiring(wiring))) for s in STAGES.values()
            if s.base and (not s.optional or s.section in PRESETS[preset_name])]


def post_configs(preset_name: str, out: Path, sft_ckpt: str, seed: int, device: str, threads: int,
                 length_bias: float, base_sft: list[tuple[str, object]] | None = None) -> dict[str, object]:
    """{stage: config} of the post-training stages, in POST_STAGES order; all start from `sft_ckpt` and share the
    reward model (the *_small stages: the smaller one, labelled by the same annotator). sft_baseline's max_cpu_s is
    left 0: the scheduler sets it to grpo_gold's training CPU seconds."""
    # The demonstrations the SFT model was trained on, from its saved config (shipped: the config minus paths; a
    # field the checkpoint predates had its default value); the last base/SFT stage's for a checkpoint saved
    # without one.
    last_sft = (base_sft or base_sft_configs(preset_name, out, seed, device, threads))[-1][1]
    trained = load_checkpoint_extra(sft_ckpt).get("config") or dataclasses.asdict(last_sft)
    demonstrations = {k: trained.get(k, getattr(sft.SFTConfig, k)) for k in ("seed", "n_examples", "verbosity", "hasty",
                                                                               "sloppy", "split", "filter_correct")}
    wiring = Wiring(out, seed, device, threads, sft_ckpt, length_bias, demonstrations)
    return {name: stage_config(preset_name, STAGES[name].section, **STAGES[name].wiring(wiring)) for name in POST_STAGES}


# ---------------------------------------------------------------------------------------------------------
# Shipped base / SFT checkpoints
# ---------------------------------------------------------------------------------------------------------


def shipped(preset_name: str) -> tuple[Path, Path] | None:
    """(base, sft) checkpoints shipped for a preset under data/checkpoints/<preset>/, or None."""
    base, sft = SHIPPED_DIR / preset_name / "base.pt", SHIPPED_DIR / preset_name / "sft.pt"
    return (base, sft) if base.is_file() and sft.is_file() else None


def shipped_metrics(preset_name: str, stage: str) -> Path:
    """The metrics.jsonl of a shipped base/SFT stage (its training curve, for the report)."""
    return SHIPPED_DIR / preset_name / f"{stage}.metrics.jsonl"


def ship(out_dir: Path, preset_name: str, base_stage: str, sft_stage: str) -> Path:
    """Copy the weights (no optimizer state) of a from-scratch run's base and SFT models, and their metrics,
    to data/checkpoints/<preset>/. The same command on the same machine type rewrites the same bytes."""
    dest = SHIPPED_DIR / preset_name
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


def run_stage(stage: str, cfg, nproc: int = 1) -> tuple[dict, float, float]:
    """The stage's loop, STAGES[stage].train(cfg), in the calling process (a worker's, with --jobs > 1); with
    nproc > 1 and a data parallel loop (sft, rm, dpo, grpo, ppo, ei: `distributed.data_parallel`), in nproc torchrun
    processes instead (`distributed.launch`; CPU seconds: theirs).

    Returns:
        (its result dict, wall seconds, CPU seconds of this process during the call).
    """
    if nproc > 1 and ddp.data_parallel(STAGES[stage].train):
        return ddp.launch(STAGES[stage].train, cfg, nproc)
    t0, c0 = time.perf_counter(), time.process_time()
    result = STAGES[stage].train(cfg)
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
                      nproc: int = 1) -> tuple[dict[str, dict], dict[str, object]]:
    """Train the post-training stages `names` (each with the stage it NEEDS), at most `jobs` at a time: whenever
    one finishes, start the first of the others (in the order of `names`) whose needed stage is done.

    evaluations: {label: (the stages it needs, make)}, make(results) -> (fn, *args): a call that runs in a worker
    once its stages are done, whenever no stage is ready to start (so evaluations fill workers that would
    otherwise wait, and never hold a stage back), in the order given. The stages it needs must be in `names`.
    nproc: processes per data parallel stage (`run_stage`).

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
            cfg, matched = configs[stage], STAGES[stage].matched_cpu_of
            if matched:  # matched compute: the CPU seconds that stage's training took
                cfg = dataclasses.replace(cfg, max_cpu_s=results[matched]["cpu_s"])
            waiting.remove(stage)
            running[pool.submit(run_stage, stage, cfg, nproc)] = stage
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
