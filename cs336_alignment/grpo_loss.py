"""The GRPO policy-gradient loss in the CS336 2026 edition's form (assignment 5, "Reasoning RL").

One per-token loss with a choice of importance reweighting, and one reduction of a micro-batch to a scalar:

- `compute_policy_gradient_loss`: "none" (REINFORCE, -A log pi), "noclip" (-A w, w = pi / pi_old per token),
  "grpo" (PPO's clipped surrogate per token: Schulman et al. 2017 eq. 7, Shao et al. 2024 eq. 3), "gspo" (the
  same clip on the sequence-level ratio, Zheng et al. 2025, "Group Sequence Policy Optimization") and "cispo"
  (the clipped importance weight, detached, times -A log pi: MiniMax 2025, "MiniMax-M1", §3.1).
- `aggregate_loss_across_microbatch`: "sequence" (per-sequence mean, then the mean over sequences: GRPO) or
  "constant" (the masked sum over a constant: Dr. GRPO, Liu et al. 2025).
- `needs_old_log_probs` / `needs_cliprange` / `accumulation_divisor`: what a training loop asks instead of
  branching on method names; `policy_and_kl_backward`: one micro-batch of the GRPO loop (train/grpo.py).
- The 2025 edition's interface, mapped onto these (no second copy of the maths): `compute_policy_gradient_loss_
  by_type` (its `loss_type` names) and `grpo_microbatch_train_step`.

The per-token pieces (REINFORCE and the clipped surrogate) are `policy_losses`' functions.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from cs336_alignment.masked import masked_mean, masked_normalize
from cs336_alignment.policy_losses import (check_sequence_weights, compute_grpo_clip_loss,
                                           compute_naive_policy_gradient_loss, kl_estimate)

ReweightingMethod = Literal["none", "noclip", "grpo", "gspo", "cispo"]
LossNormalization = Literal["sequence", "constant"]
PolicyLossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip"]   # the 2025 names
REWEIGHTING_METHODS, LOSS_NORMALIZATIONS = get_args(ReweightingMethod), get_args(LossNormalization)
# The 2025 edition's loss_type -> (which per-sequence weights it uses, the 2026 importance reweighting)
LOSS_TYPES_2025: dict[str, tuple[str, str]] = {
    "no_baseline": ("raw_rewards", "none"), "reinforce_with_baseline": ("advantages", "none"),
    "grpo_clip": ("advantages", "grpo"), "grpo_no_clip": ("advantages", "noclip")}
# The 2025 edition's --loss-type -> the 2026 flags it sets (train/grpo.py's --loss-type alias)
LOSS_TYPE_ALIASES: dict[str, dict[str, str]] = {
    "no_baseline": {"baseline": "none", "advantage_normalizer": "none", "importance_reweighting": "none"},
    "reinforce_with_baseline": {"baseline": "mean", "importance_reweighting": "none"},
    "grpo_clip": {"baseline": "mean", "importance_reweighting": "grpo"},
    "grpo_no_clip": {"baseline": "mean", "importance_reweighting": "noclip"}}


def _check_method(method: str) -> None:
    if method not in REWEIGHTING_METHODS:
        raise ValueError(f"unknown importance_reweighting_method {method!r}; expected one of {REWEIGHTING_METHODS}")


def needs_old_log_probs(method: str) -> bool:
    """True when `method`'s loss needs the sampling policy's log-probs (every method but "none").
    Raises ValueError for an unknown method."""
    _check_method(method)
    return method != "none"


def needs_cliprange(method: str) -> bool:
    """True when `method` clips ("grpo", "gspo", "cispo"). Raises ValueError for an unknown method."""
    _check_method(method)
    return method in ("grpo", "gspo", "cispo")


def accumulation_divisor(loss_normalization: str, batch_rows: int | float, microbatch_rows: int | float) -> float:
    """What to divide a micro-batch's `aggregate_loss_across_microbatch` by so that the micro-batches' sum is
    the whole batch's aggregate: batch_rows / microbatch_rows for "sequence" (a mean over sequences), 1 for
    "constant" (a sum over a constant is already additive). Raises ValueError for an unknown normalization."""
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {loss_normalization!r}")
    return batch_rows / microbatch_rows if loss_normalization == "sequence" else 1.0


# ---------------------------------------------------------------------------------------------------------
# The per-token loss and its aggregation (CS336 2026)
# ---------------------------------------------------------------------------------------------------------

def compute_policy_gradient_loss(raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor,
                                 importance_reweighting_method: ReweightingMethod = "none",
                                 old_log_probs: Tensor | None = None, cliprange: float | None = None,
                                 response_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token policy-gradient loss with importance reweighting (CS336 assignment 5, 2026 edition).

    With A the (detached) advantage of the token's sequence, w_t = exp(log pi_t - log pi_old,t) and eps the
    cliprange:
        "none":   -A log pi_t                                  REINFORCE (Williams 1992); on-policy
        "noclip": -A w_t                                       importance-weighted, unbounded
        "grpo":   -min(A w_t, A clip(w_t, 1 - eps, 1 + eps))   PPO eq. 7 per token; GRPO eq. 3
        "gspo":   -min(A s, A clip(s, 1 - eps, 1 + eps)),      GSPO (Zheng et al. 2025), its s_i: one ratio per
                  s = exp(mean over response tokens of (log pi_t - log pi_old,t)), the geometric mean of the
                  token ratios, computed in log space (never a product of ratios) and broadcast to every token
        "cispo":  -sg(min(w_t, 1 + eps)) A log pi_t            CISPO (MiniMax-M1, §3.1). The paper's weight is
                  clip(w, 1 - eps_low, 1 + eps_high) and it sets eps_low large, i.e. no lower bound, and tunes
                  eps_high only: so here only the upper clip, at 1 + cliprange. Every token keeps a gradient.
    Before the first update pi == pi_old, so every ratio is 1 and all methods give the same gradient.

    Args:
        raw_rewards_or_advantages: (B,) or (B, 1) per-sequence (or (B, T) per-token) rewards / advantages;
            detached here.
        policy_log_probs: (B, T) float, log pi of the sampled tokens (differentiable).
        importance_reweighting_method: "none", "noclip", "grpo", "gspo" or "cispo".
        old_log_probs: (B, T) log pi_old of the same tokens (constants); needed by every method but "none".
        cliprange: eps > 0; needed by "grpo", "gspo" and "cispo".
        response_mask: (B, T) bool or 0/1, True on response tokens; the tokens GSPO's mean runs over and the
            clip fraction counts. None = every token.

    Returns:
        (loss (B, T), metadata). "none" gives {}; the others give detached "ratio" (B, T) (the ratio the loss
        uses, s broadcast for gspo), "clipped" (B, T) bool (the token's gradient is clipped: "grpo"/"gspo" where
        the clipped term is the smaller objective, "cispo" where w > 1 + eps) and "clip_fraction" (0-d, the
        fraction of response tokens that are clipped).

    Raises:
        ValueError: for an unknown method, shapes that do not match, or a missing old_log_probs / cliprange.
    """
    _check_method(importance_reweighting_method)
    if policy_log_probs.dim() != 2:
        raise ValueError(f"policy_log_probs must be (B, T), got {tuple(policy_log_probs.shape)}")
    weights = raw_rewards_or_advantages
    if weights.dim() == 1:
        weights = weights.unsqueeze(-1)                                        # (B,) -> (B, 1)
    check_sequence_weights("raw_rewards_or_advantages", weights, policy_log_probs)
    if needs_old_log_probs(importance_reweighting_method) and (
            old_log_probs is None or old_log_probs.shape != policy_log_probs.shape):
        raise ValueError(f"importance_reweighting_method {importance_reweighting_method!r} needs old_log_probs of "
                         f"shape {tuple(policy_log_probs.shape)}, got "
                         f"{None if old_log_probs is None else tuple(old_log_probs.shape)}")
    if needs_cliprange(importance_reweighting_method) and (cliprange is None or cliprange <= 0):
        raise ValueError(f"importance_reweighting_method {importance_reweighting_method!r} needs cliprange > 0, "
                         f"got {cliprange}")
    if response_mask is not None and response_mask.shape != policy_log_probs.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must match policy_log_probs "
                         f"{tuple(policy_log_probs.shape)}")
    # BEGIN SOLUTION
    weights = weights.detach()
    method = importance_reweighting_method
    if method == "none":
        return compute_naive_policy_gradient_loss(weights, policy_log_probs), {}
    old_log_probs = old_log_probs.detach()
    mask = torch.ones_like(policy_log_probs, dtype=torch.bool) if response_mask is None else response_mask.bool()
    if method in ("noclip", "grpo"):  # clip(w, -inf, inf) = w: the min of two equal terms, -A w
        loss, info = compute_grpo_clip_loss(weights, policy_log_probs, old_log_probs,
                                            math.inf if method == "noclip" else cliprange)
    elif method == "gspo":  # log s = masked mean of the token log-ratios (GSPO's s_i), then the same clip on s
        log_s = masked_mean(policy_log_probs - old_log_probs, mask, dim=-1).unsqueeze(-1)    # (B, 1)
        loss, info = compute_grpo_clip_loss(weights, log_s.expand_as(policy_log_probs),
                                            torch.zeros_like(policy_log_probs), cliprange)
    else:  # cispo: a detached, clipped weight on REINFORCE (CISPO, no lower clip)
        ratio = torch.exp(policy_log_probs.detach() - old_log_probs)                          # (B, T)
        loss = compute_naive_policy_gradient_loss(weights * ratio.clamp(max=1 + cliprange), policy_log_probs)
        info = {"ratio": ratio, "clipped": ratio > 1 + cliprange}
    info["clip_fraction"] = masked_mean(info["clipped"].float(), mask)
    return loss, info
    # END SOLUTION


def aggregate_loss_across_microbatch(per_token_policy_gradient_loss: Tensor, mask: Tensor,
                                     loss_normalization: Literal["sequence", "constant"] = "sequence",
                                     normalization_constant: float | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the masked tokens (CS336 assignment 5, 2026 edition).

        "sequence": (1/B) sum_i (1/|o_i|) sum_{t in o_i} l_{i,t}     GRPO (Shao et al. 2024, eq. 3)
        "constant": (1/C) sum_i sum_{t in o_i} l_{i,t}               Dr. GRPO (Liu et al. 2025): every token
                                                                     weighs the same, whatever its length
    With "sequence", a token of a short response weighs more than one of a long response.

    Args:
        per_token_policy_gradient_loss: (B, T) float.
        mask: (B, T) bool or 0/1, True on response tokens (every row needs one with "sequence").
        loss_normalization: "sequence" or "constant".
        normalization_constant: C > 0, needed by "constant" (e.g. the generation budget times the number of
            sequences in the batch).

    Returns:
        0-d tensor in the loss's dtype (differentiable).

    Raises:
        ValueError: for an unknown normalization, a shape mismatch, or "constant" without a constant > 0.
    """
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {loss_normalization!r}")
    if per_token_policy_gradient_loss.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"per-token loss {tuple(per_token_policy_gradient_loss.shape)} and mask "
                         f"{tuple(mask.shape)} must both be (B, T)")
    if loss_normalization == "constant" and (normalization_constant is None or normalization_constant <= 0):
        raise ValueError(f"loss_normalization 'constant' needs normalization_constant > 0, "
                         f"got {normalization_constant}")
    # BEGIN SOLUTION
    if loss_normalization == "sequence":
        return masked_mean(per_token_policy_gradient_loss, mask, dim=-1).mean()           # GRPO eq. 3: 1/|o_i|
    return masked_normalize(per_token_policy_gradient_loss, mask, None, normalization_constant)   # Dr. GRPO
    # END SOLUTION


def microbatch_policy_loss(weights: Tensor, policy_log_probs: Tensor, response_mask: Tensor, method: str,
                           old_log_probs: Tensor | None, cliprange: float | None, loss_normalization: str,
                           normalization_constant: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """`compute_policy_gradient_loss` then `aggregate_loss_across_microbatch` of one micro-batch, with the metrics
    the loops log: (loss 0-d, {"loss/policy", and with an importance ratio "policy/clipfrac" (response tokens)
    and "policy/approx_kl" (k3 estimate of KL(pi_old || pi))}, all detached 0-d). Shapes as in those two."""
    per_token, info = compute_policy_gradient_loss(weights, policy_log_probs, method, old_log_probs, cliprange,
                                                   response_mask)                                   # (B, T)
    loss = aggregate_loss_across_microbatch(per_token, response_mask, loss_normalization, normalization_constant)
    metadata = {"loss/policy": loss.detach()}
    if "clipped" in info:
        metadata["policy/clipfrac"] = info["clip_fraction"]
        metadata["policy/approx_kl"] = masked_mean(kl_estimate(old_log_probs, policy_log_probs.detach(), "k3"),
                                                   response_mask)
    return loss, metadata


# ---------------------------------------------------------------------------------------------------------
# One micro-batch of the GRPO loop: the policy-gradient term plus the KL penalty, one backward pass
# ---------------------------------------------------------------------------------------------------------

def policy_and_kl_backward(log_probs: Tensor, mask: Tensor, share: float, method: str, *,
                           weights: Tensor, old_log_probs: Tensor | None = None,
                           cliprange: float | None = None, loss_normalization: str = "sequence",
                           normalization_constant: float | None = None, kl_coef: float = 0.0,
                           ref_log_probs: Tensor | None = None) -> tuple[dict[str, Tensor], float | None]:
    """Backpropagate policy loss + kl_coef * KL(pi || pi_ref) of one micro-batch through the model, once.

    The policy loss is `microbatch_policy_loss`, divided by `accumulation_divisor` so the
    micro-batches of an optimizer step add up to its loss, computed on a detached copy of the log-probs: its
    backward leaves g = d policy_loss / d log_probs, and sum(log_probs * g) has the same gradient w.r.t. the
    parameters. The KL term (k3 per token, per-sequence mean, DeepSeekMath eq. 3-4) joins it: one backward pass.

    Args:
        log_probs: (b, T) float, attached to the model's graph.  mask: (b, T) bool, response tokens.
        share: rows of the optimizer step / rows of this micro-batch (a float: micro-batches may be uneven).
        method, weights ((b, 1) or (b, T)), old_log_probs, cliprange: `compute_policy_gradient_loss`'s.
        loss_normalization, normalization_constant: `aggregate_loss_across_microbatch`'s.
        kl_coef: weight of the KL term (0 = none).  ref_log_probs: (b, T) the frozen reference's (kl_coef > 0).
    Returns:
        (metrics "loss/policy", with a ratio also "policy/clipfrac" and "policy/approx_kl"; the unscaled KL as a
        float, or None when kl_coef == 0).
    """
    leaf = log_probs.detach().requires_grad_(True)                                # (b, T)
    unscaled, info = microbatch_policy_loss(weights, leaf, mask, method, old_log_probs, cliprange,
                                            loss_normalization, normalization_constant)
    (unscaled / accumulation_divisor(loss_normalization, share, 1.0)).backward()
    loss = (log_probs * leaf.grad).sum()                # gradient w.r.t. the parameters = the policy loss's
    kl = None
    if kl_coef > 0:
        kl_term = masked_mean(kl_estimate(log_probs, ref_log_probs, "k3"), mask, dim=-1).mean()
        loss = loss + kl_coef * kl_term / share
        kl = float(kl_term.detach())
    loss.backward()
    return info, kl


# ---------------------------------------------------------------------------------------------------------
# The 2025 edition's interface, mapped onto the above
# ---------------------------------------------------------------------------------------------------------

def _weights_and_method_2025(policy_log_probs: Tensor, loss_type: str, raw_rewards: Tensor | None,
                             advantages: Tensor | None, old_log_probs: Tensor | None,
                             cliprange: float | None) -> tuple[Tensor, str]:
    """The 2025 argument checks; (the weights the loss type uses, its 2026 method). Raises ValueError."""
    if loss_type not in LOSS_TYPES_2025:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(LOSS_TYPES_2025)}")
    weights_name, method = LOSS_TYPES_2025[loss_type]
    given = {"raw_rewards": raw_rewards, "advantages": advantages, "old_log_probs": old_log_probs,
             "cliprange": cliprange}
    required = [weights_name] + ["old_log_probs"] * needs_old_log_probs(method)
    required += ["cliprange"] * needs_cliprange(method)
    missing = [name for name in required if given[name] is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs {', '.join(missing)}")
    check_sequence_weights(weights_name, given[weights_name], policy_log_probs)   # 2025: (B, 1) or (B, T) only
    return given[weights_name], method


def compute_policy_gradient_loss_by_type(policy_log_probs: Tensor, loss_type: PolicyLossType,
                                         raw_rewards: Tensor | None = None, advantages: Tensor | None = None,
                                         old_log_probs: Tensor | None = None,
                                         cliprange: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The 2025 edition's compute_policy_gradient_loss (CS336 assignment 5, Spring 2025), by `LOSS_TYPES_2025`:
    "no_baseline" = method "none" on raw_rewards, "reinforce_with_baseline" = "none" on advantages,
    "grpo_clip" = "grpo", "grpo_no_clip" = "noclip" (the clipped loss with an infinite clip range).
    All keywords are always accepted; those the loss type does not use are ignored.

    Args:
        policy_log_probs: (B, T) float.  loss_type: one of the four names.
        raw_rewards: (B, 1) or (B, T), needed by "no_baseline".  advantages: (B, 1) or (B, T), by the others.
        old_log_probs: (B, T), needed by "grpo_clip" and "grpo_no_clip".  cliprange: needed by "grpo_clip".
    Returns:
        (loss (B, T), metadata as `compute_policy_gradient_loss` gives it).
    Raises:
        ValueError: for an unknown loss_type, a missing argument, or weights that are not (B, 1) / (B, T).
    """
    weights, method = _weights_and_method_2025(policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs,
                                               cliprange)
    return compute_policy_gradient_loss(weights, policy_log_probs, method, old_log_probs, cliprange)


def grpo_microbatch_train_step(policy_log_probs: Tensor, response_mask: Tensor, gradient_accumulation_steps: int,
                               loss_type: PolicyLossType, raw_rewards: Tensor | None = None,
                               advantages: Tensor | None = None, old_log_probs: Tensor | None = None,
                               cliprange: float | None = None, *,
                               length_normalization: Literal["sequence", "constant"] = "sequence",
                               max_response_length: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy-gradient loss of one micro-batch, scaled for gradient accumulation; calls `backward()`
    (CS336 assignment 5, Spring 2025). `.grad` accumulates (never zeroed).

    The per-token loss of `compute_policy_gradient_loss_by_type`, reduced by `aggregate_loss_across_microbatch`:
    "sequence" (GRPO: per-sequence mean, mean over the b sequences) or "constant" (Dr. GRPO: each sequence's sum
    over max_response_length, mean over the b sequences, i.e. the constant max_response_length * b), then
    divided by gradient_accumulation_steps.

    Args:
        policy_log_probs: (B, T) float, requires grad.
        response_mask: (B, T) bool or 0/1, True on response tokens (every row needs one for "sequence").
        gradient_accumulation_steps: micro-batches per optimizer step (>= 1; a float weight is accepted).
        loss_type, raw_rewards, advantages, old_log_probs, cliprange: see `compute_policy_gradient_loss_by_type`.
        length_normalization: "sequence" (GRPO) or "constant" (Dr. GRPO).
        max_response_length: the generation budget in tokens for "constant"; >= every row's response length.

    Returns:
        (loss, metadata): the scaled 0-d loss (detached) and detached 0-d metrics: "loss/policy" (unscaled),
        and for "grpo_clip" and "grpo_no_clip" also "policy/clipfrac" (0 for no clip) and "policy/approx_kl"
        (k3 estimate of KL(pi_old || pi)).

    Raises:
        ValueError: for bad arguments (see `compute_policy_gradient_loss_by_type`), a missing or too small
            max_response_length with "constant", or an unknown length_normalization.
    """
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    if policy_log_probs.shape != response_mask.shape:
        raise ValueError("policy_log_probs and response_mask must have the same shape")
    if length_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"length_normalization must be 'sequence' or 'constant', got {length_normalization!r}")
    if length_normalization == "constant" and (
            max_response_length is None or int(response_mask.sum(-1).max()) > max_response_length):
        raise ValueError("Dr. GRPO's 'constant' normalization needs max_response_length >= every response length")
    weights, method = _weights_and_method_2025(policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs,
                                               cliprange)
    # BEGIN SOLUTION
    constant = None if max_response_length is None else max_response_length * policy_log_probs.shape[0]
    unscaled, metadata = microbatch_policy_loss(weights, policy_log_probs, response_mask, method, old_log_probs,
                                                cliprange, length_normalization, constant)
    loss = unscaled / gradient_accumulation_steps
    loss.backward()
    return loss.detach(), metadata
    # END SOLUTION
