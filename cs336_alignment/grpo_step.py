"""One GRPO optimizer step over a rollout batch of text (CS336 assignment 5, 2026 edition: grpo_train_step).

tokenise (`data.tokenize_prompt_and_output`) -> reward (`advantages.compute_rollout_rewards`) -> advantages
(`advantages.compute_group_normalized_rewards`) -> log-probs (`logprobs.get_response_log_probs`) -> per-token loss
(`grpo_loss.compute_policy_gradient_loss`) -> `grpo_loss.aggregate_loss_across_microbatch`, accumulated over
equal micro-batches -> clip the gradient norm (`nn_utils.clip_gradients`) -> optimizer step -> every `.grad` None.
Works on our TransformerLM and tokenizer and on a Hugging Face causal LM (`.logits`) and tokenizer (`pad_token_id`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from cs336_alignment.advantages import compute_group_normalized_rewards, compute_rollout_rewards
from cs336_alignment.lm.data import tokenize_prompt_and_output
from cs336_alignment.grpo_loss import (accumulation_divisor, aggregate_loss_across_microbatch,
                                       compute_policy_gradient_loss, needs_old_log_probs)
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.lm.nn_utils import clip_gradients


def clip_step_and_clear(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> float:
    """Clip the global gradient norm to max_grad_norm (None: no clipping; `nn_utils.clip_gradients`), take the
    optimizer step, and set every parameter's `.grad` to None. Returns the norm before clipping."""
    grad_norm = clip_gradients(model.parameters(), math.inf if max_grad_norm is None else max_grad_norm)
    optimizer.step()
    for p in model.parameters():
        p.grad = None
    return float(grad_norm)


def grpo_train_step(model: torch.nn.Module, tokenizer, optimizer: torch.optim.Optimizer,
                    gradient_accumulation_steps: int, max_grad_norm: float | None,
                    reward_fn: Callable[[str, str], dict[str, float]], repeated_prompts: list[str],
                    rollout_responses: list[str], repeated_ground_truths: list[str], group_size: int,
                    baseline: str = "mean", advantage_eps: float = 1e-6, advantage_normalizer: str = "std",
                    importance_reweighting_method: str = "none", old_log_probs: Tensor | None = None,
                    cliprange: float | None = None, loss_normalization: str = "sequence",
                    normalization_constant: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """One optimizer step of GRPO on N = n_prompts * group_size rollouts (CS336 assignment 5, 2026 edition).

    The whole batch's loss is L = aggregate_loss_across_microbatch(compute_policy_gradient_loss(A, log pi, ...))
    over all N rows (Shao et al. 2024, eq. 3, with the 2026 edition's baselines, normalizers, reweightings and
    aggregations). The rows are split, in order, into `gradient_accumulation_steps` equal micro-batches; each
    micro-batch's aggregate is divided by `grpo_loss.accumulation_divisor` (N / b for "sequence", 1 for
    "constant"), so the accumulated gradient is exactly grad L. A row whose advantage is exactly 0 has a zero
    per-token loss and gradient under every method, so it never passes through the model; it still counts in
    the denominators (N for "sequence"; the constant is fixed). Then the global gradient norm is clipped to
    max_grad_norm, the optimizer steps, and every parameter's `.grad` is set to None.

    Args:
        model: causal LM: our TransformerLM or a Hugging Face model (its output's `.logits`).
        tokenizer: with `encode` and `pad_token_id` (or `eos_token_id`), ours or a Hugging Face one.
        optimizer: over the model's parameters.
        gradient_accumulation_steps: k >= 1, dividing N.
        max_grad_norm: clip the global gradient L2 norm to this (> 0); None = no clipping.
        reward_fn: reward_fn(response, ground_truth) -> {"reward", ...}.
        repeated_prompts, rollout_responses, repeated_ground_truths: N strings each; contiguous groups of G.
        group_size: G.
        baseline, advantage_eps, advantage_normalizer: see `advantages.compute_group_normalized_rewards`.
        importance_reweighting_method, cliprange: see `grpo_loss.compute_policy_gradient_loss`.
        old_log_probs: (N, T) float, log pi_old of the labels of the *whole* tokenised batch (row i is rollout i,
            columns as `tokenize_prompt_and_output` lays them out, T = its width); needed by every method but
            "none", ignored by "none".
        loss_normalization, normalization_constant: see `grpo_loss.aggregate_loss_across_microbatch`.

    Returns:
        (loss, metadata): the whole batch's loss L (0-d, detached: the sum of the micro-batches' scaled losses)
        and Python floats "grad_norm" (before clipping), "reward/mean", "reward/<key>_mean" (reward_fn's other
        keys), "reward/std", "reward/max", "reward/min", "skipped_fraction" (rows with advantage exactly 0) and,
        with an importance ratio, "clip_fraction" (response tokens of the rows that ran).

    Raises:
        ValueError: if N is not divisible by gradient_accumulation_steps, the lists differ in length,
            old_log_probs is missing or of the wrong shape, or an argument is out of range.
    """
    n = len(rollout_responses)
    if len(repeated_prompts) != n or len(repeated_ground_truths) != n or n == 0:
        raise ValueError(f"{len(repeated_prompts)} prompts, {n} responses and {len(repeated_ground_truths)} ground "
                         f"truths: need equally many (>= 1)")
    if gradient_accumulation_steps < 1 or n % gradient_accumulation_steps:
        raise ValueError(f"{n} rollouts do not split into {gradient_accumulation_steps} equal micro-batches")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
    if needs_old_log_probs(importance_reweighting_method) and old_log_probs is None:
        raise ValueError(f"importance_reweighting_method {importance_reweighting_method!r} needs old_log_probs")
    device = next(model.parameters()).device
    # BEGIN SOLUTION
    batch = tokenize_prompt_and_output(repeated_prompts, rollout_responses, tokenizer)   # each (N, T)
    if old_log_probs is not None and old_log_probs.shape != batch["labels"].shape:
        raise ValueError(f"old_log_probs {tuple(old_log_probs.shape)} must be (N, T) = "
                         f"{tuple(batch['labels'].shape)}, the tokenised batch's shape")
    raw, metadata = compute_rollout_rewards(reward_fn, rollout_responses, repeated_ground_truths)   # (N,)
    advantages, stats = compute_group_normalized_rewards(raw, group_size, baseline, advantage_eps,
                                                         advantage_normalizer)           # (N,)
    metadata.update(stats)
    micro = n // gradient_accumulation_steps
    divisor = accumulation_divisor(loss_normalization, n, micro)
    total, clipped, response_tokens = torch.zeros(()), 0.0, 0.0
    for start in range(0, n, micro):
        rows = torch.arange(start, start + micro)[advantages[start:start + micro] != 0]  # skip A == 0 exactly
        if len(rows) == 0:
            continue
        mask = batch["response_mask"][rows]                                  # (b, T)
        width = int(mask.any(dim=0).nonzero().max()) + 1                      # trailing padding columns dropped
        mask = mask[:, :width].to(device)
        log_probs = get_response_log_probs(model, batch["input_ids"][rows, :width].to(device),
                                           batch["labels"][rows, :width].to(device))["log_probs"]    # (b, width)
        old = None if old_log_probs is None else old_log_probs[rows, :width].to(device=device, dtype=log_probs.dtype)
        per_token, info = compute_policy_gradient_loss(advantages[rows].to(device=device, dtype=log_probs.dtype),
                                                       log_probs, importance_reweighting_method, old, cliprange, mask)
        loss = aggregate_loss_across_microbatch(per_token, mask, loss_normalization, normalization_constant)
        loss = loss * len(rows) / micro / divisor if loss_normalization == "sequence" else loss / divisor
        loss.backward()
        total = total + loss.detach().cpu()
        if "clip_fraction" in info:
            clipped += float((info["clipped"] & mask.bool()).sum())
            response_tokens += float(mask.sum())
    grad_norm = clip_step_and_clear(model, optimizer, max_grad_norm)
    metadata.update({"grad_norm": grad_norm, "skipped_fraction": float((advantages == 0).float().mean())})
    if response_tokens:
        metadata["clip_fraction"] = clipped / response_tokens
    return total, metadata
    # END SOLUTION
