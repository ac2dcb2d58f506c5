"""The single-GPU path: stage presets for a 0.5B-1.5B checkpoint, and the model settings they switch on.

    python -m cs336_alignment sft  --preset gpu --init Qwen2.5-0.5B-Instruct --data gsm8k/train.jsonl
    python -m cs336_alignment grpo --preset gpu --init runs/sft/ckpt.pt      --data gsm8k/train.jsonl \
        --eval-data gsm8k/test.jsonl

What runs on CUDA, and where it is written:
  * bf16 autocast (`runtime.autocast`): matmuls in bfloat16, weights, optimizer state, RMSNorm and every
    softmax/log-sum-exp in float32 (Micikevicius et al. 2018, mixed precision; bf16 needs no loss scaling).
  * the fused log-prob kernel (`logprobs.fused_linear_log_probs`): `get_response_log_probs` applies the LM
    head block by block, so the (tokens x 151,936) logits of a Qwen2.5 vocabulary never exist at once.
  * gradient checkpointing (`TransformerLM.gradient_checkpointing`): one block's activations kept at a time.
  * optional torch.compile of each block's SwiGLU MLP and RMSNorms (`configure_model(compile=True)`): these are
    pure tensor functions, so the KV-cache bookkeeping of generation stays in eager mode (no recompiles as
    the cached length grows); attention already runs in torch's fused SDPA kernel.
  * TF32 for the float32 matmuls that autocast leaves in float32.

A preset is a dict of overrides of a stage's config dataclass, checked strictly (an unknown key is an
error); flags given on the command line win over it (`train.common.parse_config`). The values below are
starting points for Qwen2.5-0.5B-Instruct on GSM8K on one 80 GB-class GPU, chosen from the settings of
Stanford CS336 assignment 5 (SFT lr ~1e-5 to 2e-5; GRPO lr 1e-5 for REINFORCE with a baseline, group 8,
on-policy; 1024-token rollouts there, 512 here for the 0.5B model's shorter answers). They have not been
run on a GPU in this repository yet: no figures are claimed for them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

PRESETS: dict[str, dict[str, dict[str, Any]]] = {  # preset -> stage config class name -> field overrides
    "gpu": {
        "SFTConfig": dict(
            device="cuda", threads=0, n_examples=0,  # n_examples 0: every line of --data (GSM8K train: 7,473)
            lr=1e-5, min_lr=1e-6, warmup_steps=20, num_steps=400, batch_size=32,
            grad_accum_steps=4, weight_decay=0.0, beta2=0.95, grad_clip=1.0, n_eval_examples=256,
            n_eval_problems=0, log_every=10, eval_every=100, checkpoint_every=100, gradient_checkpointing=True),
        "GRPOConfig": dict(
            device="cuda", threads=0, prompts_per_step=32, group_size=8, temperature=1.0, max_new_tokens=512,
            importance_reweighting="grpo", cliprange=0.2, epochs_per_rollout_batch=1, minibatches=2,
            micro_batch_size=16, num_steps=100, lr=3e-6, min_lr=3e-7, warmup_steps=5, kl_coef=0.0,
            n_eval_problems=200, eval_samples=1, eval_every=25, checkpoint_every=25, gradient_checkpointing=True),
    },
}


def preset_overrides(preset: str, config_cls: type) -> dict[str, Any]:
    """The overrides `preset` makes to `config_cls` (e.g. SFTConfig).

    Raises:
        ValueError: an unknown preset, a preset without this stage, or a key that is not a field of it.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    stages = PRESETS[preset]
    if config_cls.__name__ not in stages:
        raise ValueError(f"preset {preset!r} has no settings for {config_cls.__name__}; it has {sorted(stages)}")
    overrides = stages[config_cls.__name__]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"preset {preset!r}: {config_cls.__name__} has no fields {unknown}")
    return dict(overrides)


def configure_model(model: torch.nn.Module, device: torch.device, *, gradient_checkpointing: bool = False,
                    compile: bool = False) -> torch.nn.Module:
    """Switch on the GPU-path settings of a TransformerLM (in place; returns it).

    Args:
        gradient_checkpointing: recompute each block in backward (TransformerLM.gradient_checkpointing).
        compile: torch.compile each block's MLP and norms (dynamic shapes: rollouts vary in length).
        device: on CUDA, float32 matmuls may use TF32.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.gradient_checkpointing = gradient_checkpointing
    if compile:
        for layer in model.layers:
            for module in (layer.ffn, layer.ln1, layer.ln2):
                module.compile(dynamic=True)
        model.ln_final.compile(dynamic=True)
    return model
