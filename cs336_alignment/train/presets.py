"""Presets: per-stage overrides of the stages' own config defaults, for the pipeline and every stage command.

Each stage's config dataclass (train/<loop>.py) holds the only defaults. A preset names, per stage, the fields
it changes, and nothing else:

    PRESETS["smoke"]["grpo"] == {"n_eval_problems": 4, "prompts_per_step": 2, "max_new_tokens": 12, ...}

This file is data only (it imports no loop): `stages.stage_config` applies a section through the strict loader
`train.common.config_from_dict`, so a key that is not a field is an error naming the preset, the stage and the
key, and a stage run alone reads its section with `--preset` (`train.common.parse_config`), so `--preset` means
the same for every command. `gpu` is a stage preset (sft and grpo sections only); the pipeline runs the presets
with an eval section (PIPELINE_PRESETS). The pipeline adds the run's wiring (output directories, the
checkpoint each stage starts from, seed, device, threads): a preset may not set those.

Sections (their config classes: stages.SECTIONS): pretrain (PretrainConfig), sft (SFTConfig), sft_more (SFTConfig,
on top of sft: a second SFT phase; optional), sft_baseline (SFTConfig: the matched-compute baseline), rm (RMConfig),
rm_small (RMConfig: the smaller reward model of the pipeline's --small-rm stages), dpo (DPOConfig), grpo
(GRPOConfig: grpo_gold, grpo_rm and grpo_rm_small), ppo (PPOConfig), bon (BoNConfig: bon and bon_small), ei
(EIConfig: expert iteration), eval (EvalConfig: the report's evaluation of every policy) and pipeline
(PipelineConfig).

Expert iteration's budget is set here, in samples, to match GRPO (gold)'s: as many sampled responses
(num_steps x prompts_per_step x group_size of the ei section = the same product of the grpo
section). Its training (SFT on the kept samples only, no old-policy pass) is lighter than GRPO's, so the
report's stage table gives both stages' training CPU seconds: compare them there.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any



@dataclass
class EvalConfig:
    """The report's evaluation: every policy measured on the same held-out test problems."""

    n_problems: int = 400
    """test problems (greedy accuracy; the paired comparisons)"""
    samples: int = 2
    """temperature-1 samples per problem (the sampled columns)"""
    batch_size: int = 100
    """prompts generated together"""
    max_new_tokens: int = 64
    """response length limit"""
    distinct_over: int = 64
    """distinct-2 over the samples of the first this many problems (best-of-N's prompts: equal corpus sizes)"""


@dataclass
class PipelineConfig:
    checkpoints: str = ""
    """use the base/SFT models shipped under data/checkpoints/<this>/; empty = the preset's own name"""
    lesson: str = ""
    """run a lesson instead of the InstructGPT run: "safety" (lessons.py) or "hallucination"; empty = none"""


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # A few steps of everything, to prove the plumbing: the numbers mean nothing.
    "smoke": {
        "pretrain": {"n_problems": 300, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64, "num_steps": 12,
                     "batch_size": 8, "warmup_steps": 1, "log_every": 2, "eval_every": 4, "checkpoint_every": 12},
        "sft": {"n_examples": 64, "verbosity": 0.5, "n_eval_problems": 4, "max_new_tokens": 12, "d_model": 32,
                "num_layers": 1, "num_heads": 2, "d_ff": 64, "num_steps": 8, "batch_size": 8, "lr": 1e-3,
                "min_lr": 1e-4, "warmup_steps": 1, "log_every": 2, "eval_every": 4, "checkpoint_every": 8},
        "sft_baseline": {"max_new_tokens": 12, "num_steps": 100_000, "batch_size": 8, "lr": 1e-3, "min_lr": 1e-3,
                         "warmup_steps": 0, "log_every": 2, "eval_every": 4, "checkpoint_every": 100_000},
        "rm": {"n_prompts": 8, "n_eval_prompts": 4, "group_size": 3, "max_new_tokens": 12, "num_steps": 4, "lr": 1e-3,
               "min_lr": 1e-4, "warmup_steps": 1, "log_every": 1, "eval_every": 1},
        "rm_small": {"n_prompts": 4, "n_eval_prompts": 4, "group_size": 3, "max_new_tokens": 12, "num_steps": 2,
                     "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1, "log_every": 1, "eval_every": 1},
        "dpo": {"max_new_tokens": 12, "num_steps": 4, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1, "log_every": 1,
                "eval_every": 1, "n_gold_problems": 4},
        "grpo": {"n_eval_problems": 4, "prompts_per_step": 2, "max_new_tokens": 12, "num_steps": 2, "eval_every": 1,
                 "checkpoint_every": 2},
        "ppo": {"n_eval_problems": 4, "prompts_per_step": 2, "max_new_tokens": 12, "num_steps": 2, "eval_every": 1,
                "checkpoint_every": 2},
        "bon": {"n_prompts": 2, "group_size": 4, "max_new_tokens": 12, "batch_size": 64},
        # grpo's 2 steps x 2 prompts x 8 samples = 32 samples; one evaluation at the end (and the one before)
        "ei": {"n_eval_problems": 4, "prompts_per_step": 8, "group_size": 2, "max_new_tokens": 12,
               "num_steps": 2, "keep_unfinished": True, "batch_size": 8, "eval_every": 2},
        "eval": {"n_problems": 8, "samples": 1, "batch_size": 16, "max_new_tokens": 12, "distinct_over": 2},
    },
    # The laptop run. Base and SFT are shipped under data/checkpoints/tiny (rebuilt by --from-scratch): the
    # model is the loops' default shape (d=128, 4 layers, 4 heads: the best size at CPU-minute budgets, DESIGN §7).
    "tiny": {
        "pretrain": {"log_every": 25, "checkpoint_every": 500},
        # 5,000 demonstrations, 40 % by the hasty writer (final line only), from the sft half of the train split
        # (the RL prompts come from the other half): chosen by measurement (data/checkpoints/README.md)
        "sft": {"n_examples": 5000, "verbosity": 0.5, "hasty": 0.4, "split": "sft", "n_eval_problems": 200,
                "num_steps": 1800, "lr": 1e-3, "min_lr": 1e-4, "log_every": 25, "checkpoint_every": 1800},
        "sft_baseline": {"num_steps": 100_000, "lr": 1e-4, "min_lr": 1e-4, "warmup_steps": 0, "log_every": 25,
                         "checkpoint_every": 100_000},
        # one epoch over its ~7,800 pairs (260 x 32); the held-out loss rose in a second epoch (measured with the
        # head alone). The likelihood term (the SFT trunk's own mean response log-prob, a learnable weight) closes
        # part of the gap to the label ceiling, because the head alone checks answers less well than the SFT
        # likelihood does: on the tiny pipeline's pairs 72.0 % held-out against a 75.7 % ceiling (head alone,
        # same pairs: 69.0 %); 71.0 % by step 40, 71-73 % to step 260 while the held-out loss falls 0.559 -> 0.538
        "rm": {"n_prompts": 1536, "n_eval_prompts": 256, "num_steps": 260, "lr": 2e-4, "min_lr": 2e-5,
               "warmup_steps": 12, "likelihood_coef": 1.0},
        # The smaller reward model (--small-rm, on with --length-bias): the rm loop's defaults, a quarter of the
        # prompts, 120 steps, the head alone. Its errors are easier to exploit, so best-of-N over-optimises it
        # sooner (Gao et al. 2023: over-optimisation shrinks as the reward model grows)
        "rm_small": {},
        "dpo": {"num_steps": 80, "lr": 3e-5, "min_lr": 3e-6, "warmup_steps": 8, "log_every": 6, "eval_every": 26,
                "n_gold_problems": 100},
        "grpo": {"n_eval_problems": 100, "num_steps": 24, "eval_every": 12, "checkpoint_every": 24},
        "ppo": {"n_eval_problems": 100, "prompts_per_step": 32, "num_steps": 24, "eval_every": 12,
                "checkpoint_every": 24},
        # 128 prompts: a best-of-N gain's paired SE ~1.8 points at N = 8 (2.6 with the loop's 64)
        "bon": {"n_prompts": 128, "batch_size": 100},
        # grpo's 24 steps x 32 prompts x 8 samples = 6,144 samples = 6 rounds x 256 prompts x 4
        "ei": {"n_eval_problems": 100, "num_steps": 6, "prompts_per_step": 256, "group_size": 4,
               "eval_every": 3},
        "eval": {"n_problems": 400, "samples": 2, "batch_size": 100, "max_new_tokens": 64, "distinct_over": 128},
    },
    # One GPU: 3x wider, 2x deeper, many more steps.
    "small": {
        "pretrain": {"n_problems": 200_000, "context_length": 256, "d_model": 384, "num_layers": 8, "num_heads": 6,
                     "d_ff": 1024, "num_steps": 4000, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-4,
                     "warmup_steps": 400, "log_every": 50, "eval_every": 500, "checkpoint_every": 4000},
        "sft": {"n_examples": 50_000, "verbosity": 0.5, "n_eval_problems": 500, "context_length": 256, "d_model": 384,
                "num_layers": 8, "num_heads": 6, "d_ff": 1024, "num_steps": 2000, "batch_size": 64, "lr": 3e-4,
                "min_lr": 3e-5, "warmup_steps": 100, "log_every": 50, "eval_every": 500, "checkpoint_every": 2000},
        "sft_baseline": {"num_steps": 100_000, "batch_size": 64, "lr": 5e-5, "min_lr": 5e-5, "warmup_steps": 0,
                         "log_every": 50, "eval_every": 500, "checkpoint_every": 100_000},
        "rm": {"n_prompts": 8192, "n_eval_prompts": 1365, "num_steps": 2000, "lr": 5e-5, "min_lr": 5e-6,
               "warmup_steps": 200, "log_every": 166, "eval_every": 666},
        "rm_small": {"n_prompts": 2048, "n_eval_prompts": 1365, "num_steps": 500, "lr": 5e-5, "min_lr": 5e-6,
                     "warmup_steps": 50, "log_every": 50, "eval_every": 250},
        # min_lr: 5e-6 / 10 in floating point (5.000000000000001e-07), the value this preset has always used
        "dpo": {"num_steps": 1000, "lr": 5e-6, "min_lr": 5e-6 / 10, "warmup_steps": 100, "log_every": 83,
                "eval_every": 333, "n_gold_problems": 500},
        "grpo": {"n_eval_problems": 500, "prompts_per_step": 64, "num_steps": 200, "eval_every": 100,
                 "checkpoint_every": 200},
        "ppo": {"n_eval_problems": 500, "prompts_per_step": 128, "num_steps": 200, "eval_every": 100,
                "checkpoint_every": 200},
        "bon": {"n_prompts": 500, "batch_size": 250},
        # grpo's 200 steps x 64 prompts x 8 samples = 102,400 samples = 10 rounds x 1,280 prompts x 8
        "ei": {"n_problems": 12_800, "n_eval_problems": 500, "num_steps": 10, "prompts_per_step": 1280,
               "group_size": 8, "batch_size": 64, "eval_every": 5},
        "eval": {"n_problems": 2000, "samples": 2, "batch_size": 250, "max_new_tokens": 64, "distinct_over": 500},
    },
}


def with_overrides(preset: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy of `preset` with each section of `changes` merged into the section of the same name."""
    out = copy.deepcopy(preset)
    for section, values in changes.items():
        out.setdefault(section, {}).update(values)
    return out


# tiny with 10x the GRPO budget (120 steps of 64 prompts x 8, constant lr; its matched baseline follows): past
# the choice of style, which tiny's 24 steps already make, GRPO raises the accuracy within the worked style
# (79.7 % -> 84.9 %; data/RESULTS.md, "Ten times the GRPO budget").
PRESETS["tiny_rl10"] = with_overrides(PRESETS["tiny"], {
    "grpo": {"n_problems": 12_000, "prompts_per_step": 64, "num_steps": 120, "min_lr": 1e-4, "eval_every": 60,
             "checkpoint_every": 120},
    # expert iteration at the same 10x: 12 rounds x 1,280 prompts x 4 = 61,440 samples, no prompt twice
    "ei": {"n_problems": 16_000, "num_steps": 12, "prompts_per_step": 1280, "eval_every": 6},
    "pipeline": {"checkpoints": "tiny"}})

# The safety lesson (safety_lesson.py): SFT variants with 0 / few / more refusal demonstrations, with and without
# look-alike demonstrations, then DPO and GRPO, from the shipped tiny SFT model; its own stages and report.
PRESETS["safety"] = {
    # lr 1e-3 -> 1e-4 (the shipped SFT model's own): at 3e-4 -> 3e-5 the refusal's first token (new to the model,
    # at -16..-22 nats) never won greedy decoding in 150 steps (data/RESULTS.md, "Safety tuning")
    "sft": {"n_examples": 0, "n_eval_problems": 0, "num_steps": 150, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10,
            "log_every": 25, "eval_every": 150, "checkpoint_every": 150},
    "dpo": {"num_steps": 40, "lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 4, "log_every": 10, "eval_every": 40,
            "n_gold_problems": 0},
    "grpo": {"n_eval_problems": 0, "prompts_per_step": 16, "num_steps": 16, "log_every": 1, "eval_every": 16,
             "checkpoint_every": 16},
    "safety": {},
    "eval": {"n_problems": 200, "samples": 1, "batch_size": 100, "max_new_tokens": 64},
    "pipeline": {"checkpoints": "tiny", "lesson": "safety"},
}
# The safety lesson's headline differences only (refusal demonstrations with and without look-alikes; DPO and GRPO
# against the variant they start from): their seed spread.
PRESETS["safety_headline"] = with_overrides(PRESETS["safety"],
                                            {"safety": {"stages": "sft_more,sft_more_contrast,dpo,grpo"}})
# The same lesson at a few steps of everything (CI, writeup smoke runs): the numbers mean nothing.
PRESETS["safety_smoke"] = {
    "sft": {"n_examples": 0, "n_eval_problems": 0, "n_eval_examples": 8, "num_steps": 3, "batch_size": 8,
            "warmup_steps": 1, "log_every": 1, "eval_every": 3, "checkpoint_every": 3},
    "dpo": {"num_steps": 2, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "n_gold_problems": 0},
    "grpo": {"n_eval_problems": 0, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 16, "num_steps": 1,
             "eval_every": 1, "checkpoint_every": 1},
    "safety": {"n_plain": 32, "few": 4, "more": 8, "n_pairs": 8, "n_rl_prompts": 16, "n_samples_shown": 1},
    "eval": {"n_problems": 4, "samples": 1, "batch_size": 16, "max_new_tokens": 16},
    "pipeline": {"checkpoints": "tiny", "lesson": "safety"},
}

# The single-GPU stage preset (`sft --preset gpu`, `grpo --preset gpu`; gpu.py: what it switches on). Starting
# points for Qwen2.5-0.5B-Instruct on GSM8K on one 80 GB-class GPU, from CS336 assignment 5's settings; not yet run
# on a GPU in this repository.
PRESETS["gpu"] = {
    "sft": dict(device="cuda", threads=0, n_examples=0,  # n_examples 0: every line of --data (GSM8K train: 7,473)
                lr=1e-5, min_lr=1e-6, warmup_steps=20, num_steps=400, batch_size=32, grad_accum_steps=4,
                weight_decay=0.0, beta2=0.95, grad_clip=1.0, n_eval_examples=256, n_eval_problems=0, log_every=10,
                eval_every=100, checkpoint_every=100, gradient_checkpointing=True),
    "grpo": dict(device="cuda", threads=0, prompts_per_step=32, group_size=8, temperature=1.0, max_new_tokens=512,
                 importance_reweighting="grpo", cliprange=0.2, epochs_per_rollout_batch=1, minibatches=2,
                 micro_batch_size=16, num_steps=100, lr=3e-6, min_lr=3e-7, warmup_steps=5, kl_coef=0.0,
                 n_eval_problems=200, eval_samples=1, eval_every=25, checkpoint_every=25, gradient_checkpointing=True),
}
# The hallucination lesson (pipeline/hallucination.py): mid-training on a knowledge corpus, three SFTs that differ in
# what they do with facts the model never saw, GRPO with an abstention-aware reward; its own stages and report.
PRESETS["hallucination"] = {"hallucination": {}, "pipeline": {"checkpoints": "tiny", "lesson": "hallucination"}}
# The same lesson at a few steps of everything (CI, writeup smoke runs): the numbers mean nothing.
PRESETS["hallucination_smoke"] = {
    "hallucination": {"n_shops": 4, "n_items": 4, "heldout_fraction": 0.5, "rl_fraction": 0.5, "repeats": 4,
                      "task_documents": 20, "mid_steps": 6, "sft_per_fact": 2, "sft_steps": 4, "penalties": "0,3",
                      "rl_steps": 1, "eval_limit": 24},
    "pipeline": {"checkpoints": "tiny", "lesson": "hallucination"},
}

PIPELINE_PRESETS = tuple(name for name, sections in PRESETS.items()  # runnable by `pipeline`: the run, the lessons
                         if "eval" in sections or sections.get("pipeline", {}).get("lesson"))


def section_overrides(preset_name: str, section: str) -> dict[str, Any]:
    """The fields `preset_name` sets in `section` (a copy): what `--preset` means for a stage run alone.

    Raises:
        ValueError: an unknown preset, or a preset with nothing for this stage.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    if section not in PRESETS[preset_name]:
        having = sorted(name for name, sections in PRESETS.items() if section in sections)
        raise ValueError(f"preset {preset_name!r} has no {section!r} section; presets with one: {having}")
    return copy.deepcopy(PRESETS[preset_name][section])
