"""The main job: the InstructGPT pipeline on the task world, measured against its exact gold reward.

    python -m cs336_alignment pipeline                      # preset tiny (default): 2 stages at once, 1 thread each
    python -m cs336_alignment pipeline --jobs 1             # one stage at a time, in this process: same numbers
    python -m cs336_alignment pipeline --length-bias 0.05   # an annotator that likes length: reward hacking
    python -m cs336_alignment pipeline --preset smoke       # seconds; the end-to-end test runs this
    python -m cs336_alignment pipeline --preset tiny_rl10   # tiny with 10x the GRPO budget (~55 min on 2 cores)
    python -m cs336_alignment pipeline --preset small       # one GPU: a larger model, longer training
    python -m cs336_alignment pipeline --from-scratch       # also retrain the base and SFT models

Stages (each also runs alone: `python -m cs336_alignment <stage> --help`), writing runs/<name>/<stage>/:
    pretrain    the base model on raw text                       (both shipped for the tiny preset under
    sft         supervised fine-tuning on chat demonstrations     data/checkpoints/; see --from-scratch)
    rm          sample K responses per prompt from SFT, label pairs with the synthetic annotator (Bradley-Terry
                noise around the gold utility, optional length bias), train the reward model
    dpo         DPO on the same pairs                                               (needs rm)
    grpo_gold   GRPO against the verifiable gold reward
    sft_baseline  the matched-compute baseline (`sft --max-cpu-s`): SFT trained further on the demonstrations it
                was trained on, for the CPU seconds grpo_gold's training took      (needs grpo_gold)
    grpo_rm     GRPO against the reward model                                       (needs rm)
    ppo         PPO against the reward model (value head, KL penalty to SFT)        (needs rm)
    bon         best-of-N with the reward model, N = 1, 2, 4, ..., 64               (needs rm)
The post-training stages run in up to --jobs worker processes at once (--jobs 1: one after the other, in this
process), each as soon as the stage it needs is done: rm and grpo_gold start together. Every stage seeds itself
from its config, so the numbers do not depend on --jobs, except sft_baseline's: its length is measured CPU time.
--skip of a stage also skips the stages that need it.

Then every policy is measured the same way on held-out test problems (metrics.evaluate_policy), one policy per
worker: greedy gold accuracy, and on temperature-1 samples mean gold reward, proxy (reward-model) reward, KL to
SFT, length and distinct-2. report.md / report.json hold the numbers and each stage's wall and CPU seconds;
training_curves.png and overoptimization.png the plots.

The base model is evaluated in the raw "Question: ... Answer:" format it was pretrained on, every other
policy in the chat template.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from cs336_alignment.train.common import run_dir

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "checkpoints"  # base/SFT checkpoints per preset
POST_STAGES = ("rm", "dpo", "grpo_gold", "sft_baseline", "grpo_rm", "ppo", "bon")  # in the order they start
MODULES = {"rm": "reward_model", "dpo": "dpo", "grpo_gold": "grpo", "sft_baseline": "sft", "grpo_rm": "grpo",
           "ppo": "ppo", "bon": "bon"}  # stage -> cs336_alignment.train.<module>
# stage -> the stage it waits for: the reward model's pairs or checkpoint; grpo_gold's training CPU seconds
NEEDS = {"dpo": "rm", "grpo_rm": "rm", "ppo": "rm", "bon": "rm", "sft_baseline": "grpo_gold"}
MATCHED = "SFT + more SFT (matched CPU)"  # the report label of stage sft_baseline

# ---------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    # --- model (DESIGN §7: d=128, 4 layers, 4 heads was the best size at CPU-minute budgets)
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    # --- pretrain
    pretrain_problems: int
    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_lr: float
    # --- sft, in one or two phases (the second continues the first on more demonstrations, at a lower lr)
    sft_examples: int
    sft_steps: int
    sft_batch_size: int
    sft_lr: float
    sft_warmup: int
    sft_verbosity: float  # probability of each optional prose line in a demonstration (tasks.sft_examples)
    sft_eval_problems: int  # held-out problems answered at each SFT eval: the accuracy plateau curve
    sft2_examples: int
    sft2_steps: int  # 0 = no second phase
    sft2_lr: float
    sft_baseline_lr: float  # constant lr of the matched-compute baseline (SFT trained further; stage sft_baseline)
    # --- preferences (K samples per prompt from SFT, labelled by the annotator) and the reward model
    pref_prompts: int
    pref_k: int
    rm_steps: int
    rm_lr: float
    # --- DPO on the same pairs
    dpo_steps: int
    dpo_lr: float
    dpo_beta: float
    # --- RL from SFT (GRPO against the gold reward and the RM; PPO against the RM)
    grpo_steps: int  # the rest (group size, clipping, epochs per batch...): the loops' own defaults
    grpo_prompts_per_step: int
    ppo_steps: int
    ppo_prompts_per_step: int
    rl_eval_problems: int  # test problems of the RL loops' periodic evaluation (training curves)
    # --- best-of-N: test prompts, samples per prompt
    bon_prompts: int
    bon_pool: int
    # --- evaluation on the held-out test split
    eval_problems: int
    eval_samples: int  # temperature-1 samples per test problem (the sampled columns)
    eval_batch_size: int
    max_new_tokens: int
    # --- logging
    log_every: int
    eval_every: int
    # --- (defaulted) GRPO's learning-rate schedule and prompt pool; whose shipped base/SFT checkpoints to use
    grpo_lr: float = 1e-4  # peak, after GRPOConfig's warmup
    grpo_min_lr: float = 1e-5  # end of the cosine decay (= grpo_lr: constant)
    grpo_problems: int = 4000  # task-world train prompts GRPO draws its batches from
    checkpoints: str = ""  # data/checkpoints/<this>/; "" = the preset's own name
    sft_hasty: float = 0.0  # share of SFT demonstrations by the hasty writer (final line only; tasks module docstring)
    sft_split: str = "train"  # task-world split of the demonstrations ("sft": never an RL prompt of split "rl")


PRESETS: dict[str, Preset] = {
    # A few steps of everything, to prove the plumbing: the numbers mean nothing.
    "smoke": Preset(context_length=128, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                    pretrain_problems=300, pretrain_steps=12, pretrain_batch_size=8, pretrain_lr=3e-3,
                    sft_examples=64, sft_steps=8, sft_batch_size=8, sft_lr=1e-3, sft_warmup=1,
                    sft_verbosity=0.5, sft_eval_problems=4,
                    sft2_examples=0, sft2_steps=0, sft2_lr=0.0, sft_baseline_lr=1e-3,
                    pref_prompts=8, pref_k=3, rm_steps=4, rm_lr=1e-3, dpo_steps=4, dpo_lr=1e-3, dpo_beta=0.1,
                    grpo_steps=2, grpo_prompts_per_step=2, ppo_steps=2, ppo_prompts_per_step=2,
                    rl_eval_problems=4, bon_prompts=2, bon_pool=4,
                    eval_problems=8, eval_samples=1, eval_batch_size=16, max_new_tokens=12, log_every=2, eval_every=4),
    # The laptop run. Base and SFT are shipped under data/checkpoints/tiny (rebuilt by --from-scratch):
    # SFT in two phases reaches its held-out accuracy plateau (data/checkpoints/README.md has the curve).
    "tiny": Preset(context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384,
                   pretrain_problems=20000, pretrain_steps=500, pretrain_batch_size=16, pretrain_lr=3e-3,
                   sft_examples=5000, sft_steps=1200, sft_batch_size=32, sft_lr=1e-3, sft_warmup=20,
                   sft_verbosity=0.5, sft_eval_problems=200, sft_hasty=0.4, sft_split="sft",
                   sft2_examples=0, sft2_steps=0, sft2_lr=0.0, sft_baseline_lr=1e-4,
                   pref_prompts=1536, pref_k=4, rm_steps=120, rm_lr=2e-4, dpo_steps=80, dpo_lr=3e-5, dpo_beta=0.1,
                   grpo_steps=24, grpo_prompts_per_step=32, ppo_steps=24, ppo_prompts_per_step=32,
                   rl_eval_problems=100, bon_prompts=64, bon_pool=64,
                   eval_problems=400, eval_samples=2, eval_batch_size=100, max_new_tokens=64, log_every=25,
                   eval_every=100),
    # One GPU: 4x wider, 2x deeper, many more steps.
    "small": Preset(context_length=256, d_model=384, num_layers=8, num_heads=6, d_ff=1024,
                    pretrain_problems=200000, pretrain_steps=4000, pretrain_batch_size=64, pretrain_lr=1e-3,
                    sft_examples=50000, sft_steps=2000, sft_batch_size=64, sft_lr=3e-4, sft_warmup=100,
                    sft_verbosity=0.5, sft_eval_problems=500,
                    sft2_examples=0, sft2_steps=0, sft2_lr=0.0, sft_baseline_lr=5e-5,
                    pref_prompts=8192, pref_k=4, rm_steps=2000, rm_lr=5e-5, dpo_steps=1000, dpo_lr=5e-6,
                    dpo_beta=0.1, grpo_steps=200, grpo_prompts_per_step=64, ppo_steps=200,
                    ppo_prompts_per_step=128, rl_eval_problems=500, bon_prompts=500, bon_pool=64,
                    eval_problems=2000, eval_samples=2, eval_batch_size=250, max_new_tokens=64, log_every=50,
                    eval_every=500),
}
# tiny with 10x the GRPO budget (120 steps of 64 prompts x 8, constant lr; its matched baseline follows): the
# budget at which GRPO against the gold reward measurably beats SFT (README, "The main job").
PRESETS["tiny_rl10"] = dataclasses.replace(PRESETS["tiny"], grpo_steps=120, grpo_prompts_per_step=64,
                                           grpo_min_lr=1e-4, grpo_problems=12000, checkpoints="tiny")


def stage_configs(preset: Preset, out: Path, seed: int, device: str, threads: int):
    """[(stage, PretrainConfig | SFTConfig)] that make the base and SFT models (the stages' own defaults elsewhere)."""
    from cs336_alignment.train.pretrain import PretrainConfig
    from cs336_alignment.train.sft import SFTConfig

    p = preset
    common = dict(seed=seed, device=device, threads=threads, log_every=p.log_every, eval_every=p.eval_every,
                  context_length=p.context_length, d_model=p.d_model, num_layers=p.num_layers,
                  num_heads=p.num_heads, d_ff=p.d_ff)  # SFT reads the model shape from its init checkpoint
    # min_lr = lr / 10 rounded, so that 3e-3 / 10 is the decimal 3e-4 (not 0.00030000000000000003) that the
    # single-stage commands in data/checkpoints/README.md pass: their runs and this one match bit for bit.
    pretrain = PretrainConfig(out=str(out / "pretrain"), n_problems=p.pretrain_problems, num_steps=p.pretrain_steps,
                              batch_size=p.pretrain_batch_size, lr=p.pretrain_lr,
                              min_lr=round(p.pretrain_lr / 10, 12),
                              warmup_steps=max(1, p.pretrain_steps // 10), checkpoint_every=p.pretrain_steps,
                              **common)
    # SFT draws its demonstrations with another seed than pretraining: mostly new questions.
    sft = SFTConfig(out=str(out / "sft"), init=str(out / "pretrain" / "ckpt.pt"), n_examples=p.sft_examples,
                    verbosity=p.sft_verbosity, hasty=p.sft_hasty, split=p.sft_split,
                    n_eval_problems=p.sft_eval_problems, max_new_tokens=p.max_new_tokens,
                    num_steps=p.sft_steps, batch_size=p.sft_batch_size, lr=p.sft_lr,
                    min_lr=round(p.sft_lr / 10, 12),
                    warmup_steps=p.sft_warmup, checkpoint_every=p.sft_steps, **{**common, "seed": seed + 1})
    configs = [("pretrain", pretrain), ("sft", sft)]
    if p.sft2_steps:
        configs.append(("sft_more", dataclasses.replace(
            sft, out=str(out / "sft_more"), init=str(out / "sft" / "ckpt.pt"), n_examples=p.sft2_examples,
            num_steps=p.sft2_steps, lr=p.sft2_lr, min_lr=round(p.sft2_lr / 10, 12),
            warmup_steps=max(1, p.sft_warmup // 2),
            checkpoint_every=p.sft2_steps)))
    return configs


def post_configs(p: Preset, out: Path, sft_ckpt: str, seed: int, device: str, threads: int, length_bias: float):
    """{stage: config} of the post-training stages; all start from `sft_ckpt` and share the reward model.
    sft_baseline's max_cpu_s is left 0: the scheduler sets it to grpo_gold's training CPU seconds."""
    from cs336_alignment.checkpoint import load_checkpoint_extra
    from cs336_alignment.train.bon import BoNConfig
    from cs336_alignment.train.dpo import DPOConfig
    from cs336_alignment.train.grpo import GRPOConfig
    from cs336_alignment.train.ppo import PPOConfig
    from cs336_alignment.train.reward_model import RMConfig
    from cs336_alignment.train.sft import SFTConfig

    common = dict(seed=seed, device=device, threads=threads, init=sft_ckpt, max_new_tokens=p.max_new_tokens)
    rm_ckpt = str(out / "rm" / "ckpt.pt")
    pairs = dict(data=str(out / "rm" / "preferences_train.jsonl"), eval_data=str(out / "rm" / "preferences_eval.jsonl"))
    rl = dict(eval_every=max(1, p.grpo_steps // 2), n_eval_problems=p.rl_eval_problems, **common)
    grpo = dict(lr=p.grpo_lr, min_lr=p.grpo_min_lr, n_problems=p.grpo_problems, **rl)
    # The demonstrations the SFT model was trained on, from its saved config (shipped: the config minus paths; a
    # field the checkpoint predates had its default value); the preset's for a checkpoint saved without one.
    trained = load_checkpoint_extra(sft_ckpt).get("config") or {
        "seed": seed + 1, "n_examples": p.sft2_examples if p.sft2_steps else p.sft_examples,
        "verbosity": p.sft_verbosity, "hasty": p.sft_hasty, "split": p.sft_split}
    demonstrations = {k: trained.get(k, getattr(SFTConfig, k)) for k in ("seed", "n_examples", "verbosity", "hasty",
                                                                          "sloppy", "split", "filter_correct")}
    return {
        "rm": RMConfig(out=str(out / "rm"), n_prompts=p.pref_prompts, n_eval_prompts=max(4, p.pref_prompts // 6),
                       k_samples=p.pref_k, length_bias=length_bias, num_steps=p.rm_steps, lr=p.rm_lr,
                       min_lr=p.rm_lr / 10, warmup_steps=max(1, p.rm_steps // 10), log_every=max(1, p.rm_steps // 12),
                       eval_every=max(1, p.rm_steps // 3), **common),
        "dpo": DPOConfig(out=str(out / "dpo"), beta=p.dpo_beta, num_steps=p.dpo_steps, lr=p.dpo_lr,
                         min_lr=p.dpo_lr / 10,
                         warmup_steps=max(1, p.dpo_steps // 10), log_every=max(1, p.dpo_steps // 12),
                         eval_every=max(1, p.dpo_steps // 3), n_gold_problems=p.rl_eval_problems,
                         **pairs, **common),
        "grpo_gold": GRPOConfig(out=str(out / "grpo_gold"), reward="gold", num_steps=p.grpo_steps,
                                prompts_per_step=p.grpo_prompts_per_step, checkpoint_every=p.grpo_steps, **grpo),
        "sft_baseline": SFTConfig(name="sft_baseline", out=str(out / "sft_baseline"), init=sft_ckpt,
                                  **demonstrations, num_steps=100_000, max_cpu_s=0.0,  # the CPU budget ends it
                                  batch_size=p.sft_batch_size, lr=p.sft_baseline_lr, min_lr=p.sft_baseline_lr,
                                  warmup_steps=0, log_every=p.log_every, eval_every=p.eval_every,
                                  checkpoint_every=100_000, max_new_tokens=p.max_new_tokens, device=device,
                                  threads=threads),
        "grpo_rm": GRPOConfig(out=str(out / "grpo_rm"), reward="rm", reward_model=rm_ckpt, num_steps=p.grpo_steps,
                              prompts_per_step=p.grpo_prompts_per_step, checkpoint_every=p.grpo_steps, **grpo),
        "ppo": PPOConfig(out=str(out / "ppo"), reward="rm", reward_model=rm_ckpt, num_steps=p.ppo_steps,
                         prompts_per_step=p.ppo_prompts_per_step, checkpoint_every=p.ppo_steps,
                         **{**rl, "eval_every": max(1, p.ppo_steps // 2)}),
        "bon": BoNConfig(out=str(out / "bon"), rm=rm_ckpt, n_prompts=p.bon_prompts, pool_size=p.bon_pool,
                         batch_size=max(p.eval_batch_size, 64), **common),
    }


# ---------------------------------------------------------------------------------------------------------
# Shipped base / SFT checkpoints
# ---------------------------------------------------------------------------------------------------------


def shipped(preset_name: str) -> tuple[Path, Path] | None:
    """(base, sft) checkpoints shipped for a preset under data/checkpoints/<preset>/, or None."""
    base, sft = SHIPPED / preset_name / "base.pt", SHIPPED / preset_name / "sft.pt"
    return (base, sft) if base.is_file() and sft.is_file() else None


def ship(out_dir: Path, preset_name: str, base_stage: str, sft_stage: str) -> Path:
    """Copy the weights (no optimizer state) of a from-scratch run's base and SFT models, and their metrics,
    to data/checkpoints/<preset>/. The same command on the same machine type rewrites the same bytes."""
    from cs336_alignment.checkpoint import load_checkpoint, load_checkpoint_extra, save_checkpoint
    from cs336_alignment.model import TransformerConfig, TransformerLM

    dest = SHIPPED / preset_name
    dest.mkdir(parents=True, exist_ok=True)
    for label, stage in (("base", base_stage), ("sft", sft_stage)):
        src = out_dir / stage / "ckpt.pt"
        extra = load_checkpoint_extra(src)
        model = TransformerLM(TransformerConfig(**extra["model_config"]))
        step = load_checkpoint(src, model)
        recipe = {k: v for k, v in extra["config"].items() if k not in ("out", "init", "name")}  # no paths
        save_checkpoint(model, None, step, dest / f"{label}.pt", model_config=extra["model_config"], config=recipe)
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


def run_stage(module: str, cfg) -> tuple[dict, float, float]:
    """cs336_alignment.train.<module>.train(cfg), in the calling process (a worker's, with --jobs > 1).

    Returns:
        (its result dict, wall seconds, CPU seconds of this process during the call).
    """
    import importlib

    t0, c0 = time.perf_counter(), time.process_time()
    result = importlib.import_module(f"cs336_alignment.train.{module}").train(cfg)
    return result, time.perf_counter() - t0, time.process_time() - c0


def record(stages: dict, name: str, result: dict, wall_s: float, cpu_s: float) -> dict:
    """Keep a stage's scalar results, its wall and CPU seconds in stages[name] (a loop's own "cpu_s", training
    only, becomes "train_cpu_s"); returns `result`."""
    scalars = {("train_cpu_s" if k == "cpu_s" else k): v for k, v in result.items()
               if isinstance(v, (int, float, str)) and k != "checkpoint"}
    stages[name] = {**scalars, "wall_s": wall_s, "cpu_s": cpu_s}
    return result


def run_post_training(names: list[str], configs: dict, pool: Executor, jobs: int, stages: dict) -> dict[str, dict]:
    """Train the post-training stages `names` (each with the stage it NEEDS), at most `jobs` at a time: whenever
    one finishes, start the first of the others (in POST_STAGES order) whose needed stage is done.

    Returns:
        {stage: its train() result}; stages[stage] gets its seconds (see `record`).
    """
    results, running, waiting = {}, {}, list(names)
    while waiting or running:
        for stage in [s for s in waiting if s not in NEEDS or NEEDS[s] in results]:
            if len(running) == jobs:
                break
            cfg = configs[stage]
            if stage == "sft_baseline":  # matched compute: the CPU seconds grpo_gold's training took
                cfg = dataclasses.replace(cfg, max_cpu_s=results["grpo_gold"]["cpu_s"])
            waiting.remove(stage)
            running[pool.submit(run_stage, MODULES[stage], cfg)] = stage
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            stage = running.pop(future)
            results[stage] = record(stages, stage, *future.result())
            print(f"{stage} done: {stages[stage]['wall_s']:.0f} s wall, {stages[stage]['cpu_s']:.0f} s CPU")
    return results


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its child processes that have exited (os.times)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------------------------
# Evaluation: every policy measured the same way
# ---------------------------------------------------------------------------------------------------------


def evaluate_checkpoint(ckpt: str, fmt: str, sft_ckpt: str, rm_ckpt: str | None, preset: Preset, seed: int,
                        device: str, threads: int) -> tuple[dict, dict[str, list[float]], float]:
    """The report's metrics of one checkpoint on the preset's held-out test problems, in the calling process.

    fmt "raw": the base model, greedy gold accuracy in the "Question: ... Answer:" format it was pretrained on.
    fmt "chat": a policy, metrics.evaluate_policy with the SFT model as reference and the reward model (if any)
    as the proxy reward. Returns (metrics with their "format", per-problem scores {"greedy", "sampled"} (raw:
    greedy only) for paired comparisons, CPU seconds of this process during the call).
    """
    from cs336_alignment.evaluate import evaluate_model
    from cs336_alignment.metrics import evaluate_policy
    from cs336_alignment.tasks import generate_problems
    from cs336_alignment.tokenizer import load_tokenizer
    from cs336_alignment.train.common import get_device, load_model, set_threads
    from cs336_alignment.train.reward_model import load_reward_model

    c0 = time.process_time()
    set_threads(threads)
    torch_device = get_device(device)
    tokenizer = load_tokenizer()
    problems = generate_problems(preset.eval_problems, "test", seed)
    policy, _ = load_model(ckpt, torch_device)
    if fmt == "raw":
        base_metrics, samples = evaluate_model(policy, tokenizer, problems, fmt="raw",
                                               max_new_tokens=preset.max_new_tokens, batch_size=preset.eval_batch_size)
        metrics = {"format": "raw", "accuracy/greedy": base_metrics["reward/gold_mean"],
                   "response/length_mean": base_metrics["response/length_mean"]}
        per_problem = {"greedy": [s["reward"] for s in samples]}
    else:
        reference, _ = load_model(sft_ckpt, torch_device)
        reward_model = load_reward_model(rm_ckpt, torch_device)[0] if rm_ckpt else None
        metrics, per_problem = evaluate_policy(
            policy, tokenizer, problems, reference=reference, reward_model=reward_model,
            samples_per_prompt=preset.eval_samples, max_new_tokens=preset.max_new_tokens, seed=seed + 1,
            batch_size=preset.eval_batch_size, return_per_problem=True,
            distinct_over=preset.bon_prompts)  # the best-of-N rows' prompts (the first test problems)
        metrics = {"format": "chat", **metrics}
    return metrics, per_problem, time.process_time() - c0


def evaluate_policies(policies: dict[str, str], base_ckpt: str, sft_ckpt: str, rm_ckpt: str | None, preset: Preset,
                      seed: int, device: str, threads: int, pool: Executor) -> tuple[dict[str, dict], dict, float]:
    """The base model and each chat policy {label: checkpoint}, one evaluate_checkpoint call each in `pool`.

    Returns:
        ({"base": metrics, label: metrics, ...} in that order, {label: per-problem scores}, the CPU seconds of
        all the calls).
    """
    checkpoints = {"base": (base_ckpt, "raw"), **{label: (ckpt, "chat") for label, ckpt in policies.items()}}
    futures = {label: pool.submit(evaluate_checkpoint, ckpt, fmt, sft_ckpt, rm_ckpt, preset, seed, device, threads)
               for label, (ckpt, fmt) in checkpoints.items()}
    models, per_problem, cpu_s = {}, {}, 0.0
    for label, future in futures.items():
        models[label], per_problem[label], seconds = future.result()
        cpu_s += seconds
        print(f"eval {label}: " + " | ".join(f"{k} {v:.4g}" for k, v in models[label].items() if k != "format"))
    return models, per_problem, cpu_s


def paired_comparisons(per_problem: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Each post-trained policy minus SFT, and GRPO (gold) minus the matched-compute SFT baseline, on the same
    test problems: [{"a", "b", "greedy": (mean, se), "sampled": (mean, se)}] (metrics.paired_difference)."""
    from cs336_alignment.metrics import paired_difference

    pairs = [(label, "SFT") for label in per_problem if label not in ("base", "SFT")]
    if "GRPO (gold)" in per_problem and MATCHED in per_problem:
        pairs.append(("GRPO (gold)", MATCHED))
    return [{"a": a, "b": b, **{kind: paired_difference(per_problem[a][kind], per_problem[b][kind])
                                for kind in ("greedy", "sampled")}} for a, b in pairs if "SFT" in per_problem]


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------


def run(preset_name: str = "tiny", out: str = "", name: str = "", threads: int = 1, device: str = "auto",
        seed: int = 0, length_bias: float = 0.0, from_scratch: bool = False, skip: tuple[str, ...] = (),
        ship_checkpoints: bool = False, jobs: int = 2) -> dict:
    """Every stage, then the evaluation and the report; returns the report dict (also written to report.json).

    Raises:
        ValueError: an unknown preset or --skip stage, or jobs < 1.
    """
    import shutil

    from cs336_alignment.report import plot_overoptimization, plot_training_curves, sft_progress, write_report
    from cs336_alignment.train.common import get_device, read_metrics, set_threads

    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(skip) - set(POST_STAGES)
    if unknown:
        raise ValueError(f"--skip {sorted(unknown)}: not a post-training stage ({', '.join(POST_STAGES)})")
    preset, name = PRESETS[preset_name], name or preset_name
    out_dir = run_dir(name, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    torch_device = get_device(device)
    stages: dict[str, dict] = {}
    t_start, c_start = time.perf_counter(), cpu_seconds()

    # --- 1. base and SFT models: shipped (tiny), or trained here, in this process (each needs the one before)
    base_sft = stage_configs(preset, out_dir, seed, device, threads)
    shipped_as = preset.checkpoints or preset_name
    ready = None if (from_scratch or ship_checkpoints) else shipped(shipped_as)
    if ready:
        base_ckpt, sft_ckpt = str(ready[0]), str(ready[1])
        for stage, _ in base_sft:  # their training curves, for the report
            (out_dir / stage).mkdir(exist_ok=True)
            shutil.copy(SHIPPED / shipped_as / f"{stage}.metrics.jsonl", out_dir / stage / "metrics.jsonl")
        print(f"base and SFT models: shipped {base_ckpt}, {sft_ckpt} (--from-scratch retrains them)")
    else:
        for stage, cfg in base_sft:
            record(stages, stage, *run_stage("pretrain" if stage == "pretrain" else "sft", cfg))
        base_ckpt, sft_ckpt = str(out_dir / "pretrain" / "ckpt.pt"), str(out_dir / base_sft[-1][0] / "ckpt.pt")
        if ship_checkpoints:
            print(f"shipped to {ship(out_dir, shipped_as, 'pretrain', base_sft[-1][0])}")
            return {"stages": stages}

    configs = post_configs(preset, out_dir, sft_ckpt, seed, device, threads, length_bias)
    run_stages = [s for s in POST_STAGES if s not in skip]
    run_stages = [s for s in run_stages if s not in NEEDS or NEEDS[s] in run_stages]  # what they need is not skipped
    with make_pool(jobs) as pool:
        # --- 2. post-training from SFT, --jobs stages at a time
        results = run_post_training(run_stages, configs, pool, jobs, stages)

        # --- 3. every policy on the same held-out problems, with the same metrics
        t0 = time.perf_counter()
        labels = {MATCHED: "sft_baseline", "GRPO (gold)": "grpo_gold", "GRPO (RM)": "grpo_rm",
                  "PPO": "ppo", "DPO": "dpo"}
        policies = {"SFT": sft_ckpt, **{label: results[stage]["checkpoint"] for label, stage in labels.items()
                                        if stage in results}}
        rm_ckpt = results.get("rm", {}).get("checkpoint")
        models, per_problem, eval_cpu_s = evaluate_policies(policies, base_ckpt, sft_ckpt, rm_ckpt, preset, seed,
                                                            device, threads, pool)
        stages["eval"] = {"wall_s": time.perf_counter() - t0, "cpu_s": eval_cpu_s}
    for row in results.get("bon", {}).get("rows", []):
        models[f"BoN-{row['n']}"] = {"format": "chat", "accuracy/greedy": None, **{k: v for k, v in row.items()
                                                                                  if k != "n"}}
    if "bon" in results:
        last = results["bon"]["rows"][-1]
        models[f"BoN-{last['n']} (gold oracle = pass@{last['n']})"] = {
            "format": "chat", "accuracy/greedy": None, "reward/gold_mean": last["reward/oracle_mean"],
            "kl/sft": last["kl/sft"]}

    # --- 4. report
    report = {"name": name, "preset": preset_name, "seed": seed, "threads": threads, "jobs": jobs,
              "device": str(torch_device), "n_test_problems": preset.eval_problems,
              "n_sampled": preset.eval_problems * preset.eval_samples, "paired": paired_comparisons(per_problem),
              "annotator": {"tau": configs["rm"].tau, "length_bias": length_bias},
              "base_sft": "shipped" if ready else "trained", "models": models, "stages": stages,
              "sft": sft_progress(out_dir, [s for s, _ in base_sft if s != "pretrain"]),
              "preset_config": dataclasses.asdict(preset)}
    if "rm" in results:
        report["rm"] = stages["rm"]
    if "bon" in results:
        report["bon"] = {k: results["bon"][k] for k in ("rows", "n_prompts", "pool_size")}
    report["wall_s_total"] = time.perf_counter() - t_start
    report["cpu_s_total"] = cpu_seconds() - c_start  # this process and its workers
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_training_curves(out_dir, [s for s, _ in base_sft] + run_stages)
    rl_runs = {title: read_metrics(out_dir / stage / "metrics.jsonl") for stage, title in
               (("ppo", "PPO against the reward model"), ("grpo_rm", "GRPO against the reward model"))
               if stage in results}
    plot_overoptimization(out_dir, report.get("bon", {}).get("rows", []), rl_runs,
                          f"reward-model over-optimisation (annotator length bias {length_bias} per token)")
    path = write_report(out_dir, report)
    print(f"wrote {path}, report.json, training_curves.png and overoptimization.png in {out_dir} "
          f"({report['wall_s_total']:.0f} s wall, {report['cpu_s_total']:.0f} s CPU over {jobs} job(s))")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="smoke (seconds), tiny (the CPU run), tiny_rl10 (tiny with 10x the GRPO budget), "
                             "small (one GPU)")
    parser.add_argument("--name", default="", help="run name: outputs go to runs/<name>/; empty = the preset's name")
    parser.add_argument("--out", default="", help="output directory; empty = runs/<name>")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads of every stage (0 = torch's default)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="post-training stages (then evaluations) run at once, each in its own worker process; "
                             "1 = one at a time in this process")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling")
    parser.add_argument("--length-bias", type=float, default=0.0,
                        help="annotator utility per response token (> 0: longer looks better; reward hacking)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the base and SFT models even when the preset ships them")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated post-training stages to skip, with the stages that need them: "
                             f"{','.join(POST_STAGES)}")
    parser.add_argument("--ship", action="store_true",
                        help="(maintainers) train base + SFT from scratch and write them to data/checkpoints/<preset>")
    args = parser.parse_args(argv)
    return run(args.preset, args.out, args.name, args.threads, args.device, args.seed, args.length_bias,
               args.from_scratch, tuple(s for s in args.skip.split(",") if s), args.ship, args.jobs)


if __name__ == "__main__":
    main()
