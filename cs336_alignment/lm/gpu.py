"""The single-GPU path: the model settings the `gpu` preset (presets.py) switches on for a 0.5B-1.5B checkpoint.

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

The `gpu` preset itself lives with every other preset in `presets.py` (its sft and grpo sections); flags given
on the command line win over it (`train.common.parse_config`). Its values are starting points for
Qwen2.5-0.5B-Instruct on GSM8K on one 80 GB-class GPU, chosen from the settings of
Stanford CS336 assignment 5 (SFT lr ~1e-5 to 2e-5; GRPO lr 1e-5 for REINFORCE with a baseline, group 8,
on-policy; 1024-token rollouts there, 512 here for the 0.5B model's shorter answers). They have not been
run on a GPU in this repository yet: no figures are claimed for them.
"""
from __future__ import annotations

import torch


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
