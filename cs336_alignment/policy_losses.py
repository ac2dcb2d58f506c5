"""Policy-gradient losses for RL on language models: REINFORCE, GRPO, PPO.

Every loss is written to be *minimized*: the objective we want to maximize is E[A * log pi] (or its
clipped surrogate), so the loss is its negative.

- REINFORCE (Williams 1992): per-token loss -A * log pi(y_t | x, y_<t); A = raw reward ("no_baseline") or
  an advantage ("reinforce_with_baseline": group mean, RLOO, ...).
- PPO-clip (Schulman et al. 2017, eq. 7), used per token by GRPO (Shao et al. 2024, eq. 3) and PPO; and
  "GRPO-No-Clip", the importance-ratio-weighted loss -rho * A without the clip (CS336 assignment 5,
  grpo_off_policy_clip_ablation): the clipped loss with an infinite clip range.
- GRPO's micro-batch step (CS336 assignment 5) with per-sequence length normalization, or the Dr. GRPO
  constant normalizer (Liu et al. 2025, "Understanding R1-Zero-Like Training").
- PPO's critic and regularizers: clipped value loss, entropy bonus.
- KL to the reference policy: the k1 / k2 / k3 estimators (Schulman 2020, "Approximating KL divergence",
  http://joschu.net/blog/kl-approx.html) and the adaptive KL coefficient (Ziegler et al. 2019, §2.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cs336_alignment.masked import masked_mean, masked_normalize

PolicyLossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip"]


def _check_per_sequence(name: str, weights: Tensor, policy_log_probs: Tensor) -> None:
    """Advantages/rewards must be (B, 1) or (B, T): a (B,) tensor would broadcast along T when B == T."""
    if weights.dim() != 2 or weights.shape[0] != policy_log_probs.shape[0] or \
            weights.shape[1] not in (1, policy_log_probs.shape[1]):
        raise ValueError(f"{name} must be (B, 1) or (B, T) for policy_log_probs {tuple(policy_log_probs.shape)}, "
                         f"got {tuple(weights.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Per-token losses: REINFORCE and the clipped surrogate
# ---------------------------------------------------------------------------------------------------------

def compute_naive_policy_gradient_loss(raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor) -> Tensor:
    """REINFORCE per-token loss -A * log pi(y_t | x, y_<t) (Williams 1992; CS336 assignment 5).

    Its gradient is -A * grad log pi: the score-function estimator of the policy gradient.

    Args:
        raw_rewards_or_advantages: (B, 1) float per-sequence reward or advantage (or (B, T) per token);
            treated as a constant.
        policy_log_probs: (B, T) float, log-probs of the sampled tokens under the current policy.

    Returns:
        (B, T) per-token loss (not yet masked or averaged).

    Raises:
        ValueError: if the advantages are not (B, 1) or (B, T).
    """
    _check_per_sequence("raw_rewards_or_advantages", raw_rewards_or_advantages, policy_log_probs)
    # BEGIN SOLUTION
    return -raw_rewards_or_advantages.detach() * policy_log_probs        # REINFORCE, broadcast over T
    # END SOLUTION


def compute_grpo_clip_loss(advantages: Tensor, policy_log_probs: Tensor, old_log_probs: Tensor,
                           cliprange: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token clipped surrogate loss -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A), rho = pi / pi_old.

    PPO eq. 7 (Schulman et al. 2017), applied per token with a per-sequence advantage by GRPO (Shao et al.
    2024, eq. 3). Before the first update pi == pi_old, so rho == 1 exactly and nothing is clipped.

    Args:
        advantages: (B, 1) per-sequence (or (B, T) per-token) advantages; treated as constants.
        policy_log_probs: (B, T) log-probs under the current policy (differentiable).
        old_log_probs: (B, T) log-probs under the policy that sampled the tokens (constants).
        cliprange: eps > 0.

    Returns:
        (loss (B, T), metadata) with metadata["ratio"] (B, T) float (detached) and metadata["clipped"]
        (B, T) bool: True where the clipped term is the smaller objective, i.e. the token gets no gradient.

    Raises:
        ValueError: on shape mismatch or cliprange <= 0.
    """
    _check_per_sequence("advantages", advantages, policy_log_probs)
    if policy_log_probs.shape != old_log_probs.shape:
        raise ValueError(f"policy_log_probs {tuple(policy_log_probs.shape)} and old_log_probs "
                         f"{tuple(old_log_probs.shape)} must have the same shape")
    if cliprange <= 0:
        raise ValueError(f"cliprange must be > 0, got {cliprange}")
    # BEGIN SOLUTION
    advantages = advantages.detach()
    ratio = torch.exp(policy_log_probs - old_log_probs.detach())                # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * advantages
    loss = -torch.minimum(unclipped, clipped)                                   # PPO eq. 7 (Schulman et al. 2017)
    return loss, {"ratio": ratio.detach(), "clipped": clipped < unclipped}
    # END SOLUTION


def compute_policy_gradient_loss(policy_log_probs: Tensor, loss_type: PolicyLossType,
                                 raw_rewards: Tensor | None = None, advantages: Tensor | None = None,
                                 old_log_probs: Tensor | None = None,
                                 cliprange: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Dispatch to the per-token loss named by `loss_type` (CS336 assignment 5).

    "no_baseline": naive REINFORCE with raw_rewards; "reinforce_with_baseline": naive REINFORCE with
    advantages; "grpo_clip": `compute_grpo_clip_loss` with advantages, old_log_probs and cliprange;
    "grpo_no_clip": the importance-ratio-weighted loss -rho * A, rho = exp(log pi - log pi_old), without the
    clip (CS336 assignment 5, grpo_off_policy_clip_ablation), i.e. `compute_grpo_clip_loss` with an infinite
    clip range. Its gradient is -A * rho * grad log pi: off-policy updates are corrected but never bounded.
    All keywords are always accepted; those the loss type does not use are ignored.

    Args:
        policy_log_probs: (B, T) float.
        loss_type: one of the four names above.
        raw_rewards: (B, 1), needed by "no_baseline".
        advantages: (B, 1), needed by "reinforce_with_baseline", "grpo_clip" and "grpo_no_clip".
        old_log_probs: (B, T), needed by "grpo_clip" and "grpo_no_clip".
        cliprange: float, needed by "grpo_clip".

    Returns:
        (loss (B, T), metadata dict of tensors; empty for the REINFORCE losses; for "grpo_no_clip" "ratio" and
        an all-False "clipped").

    Raises:
        ValueError: for an unknown loss_type or a missing argument.
    """
    required = {"no_baseline": {"raw_rewards": raw_rewards},
                "reinforce_with_baseline": {"advantages": advantages},
                "grpo_clip": {"advantages": advantages, "old_log_probs": old_log_probs, "cliprange": cliprange},
                "grpo_no_clip": {"advantages": advantages, "old_log_probs": old_log_probs}}
    if loss_type not in required:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(required)}")
    missing = [name for name, value in required[loss_type].items() if value is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs {', '.join(missing)}")
    # BEGIN SOLUTION
    if loss_type == "grpo_clip":
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange=cliprange)
    if loss_type == "grpo_no_clip":  # clip(rho, -inf, inf) = rho: the min of two equal terms, -rho * A
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange=math.inf)
    weights = raw_rewards if loss_type == "no_baseline" else advantages    # the baseline is already subtracted
    return compute_naive_policy_gradient_loss(weights, policy_log_probs), {}
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# GRPO micro-batch step (per-sequence mean, or the Dr. GRPO constant normalizer)
# ---------------------------------------------------------------------------------------------------------

def grpo_microbatch_train_step(policy_log_probs: Tensor, response_mask: Tensor, gradient_accumulation_steps: int,
                               loss_type: PolicyLossType, raw_rewards: Tensor | None = None,
                               advantages: Tensor | None = None, old_log_probs: Tensor | None = None,
                               cliprange: float | None = None, *,
                               length_normalization: Literal["sequence", "constant"] = "sequence",
                               max_response_length: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy-gradient loss of one micro-batch, scaled for gradient accumulation; calls `backward()`.

    Per-token loss from `compute_policy_gradient_loss`, reduced per sequence over its response tokens, then
    averaged over the batch and divided by gradient_accumulation_steps. `.grad` accumulates (never zeroed).
    The per-sequence reduction:
      - "sequence" (GRPO, Shao et al. 2024 eq. 3; CS336): masked *mean*, 1/|o_i| per token. A token of a
        short response then weighs more than a token of a long one, which biases towards long wrong answers.
      - "constant" (Dr. GRPO, Liu et al. 2025): masked *sum* / max_response_length, the same constant
        for every sequence, so each token's gradient is independent of its sequence's length.

    Args:
        policy_log_probs: (B, T) float, requires grad.
        response_mask: (B, T) bool or 0/1, True on response tokens (every row needs one for "sequence").
        gradient_accumulation_steps: micro-batches per optimizer step (>= 1).
        loss_type, raw_rewards, advantages, old_log_probs, cliprange: see `compute_policy_gradient_loss`.
        length_normalization: "sequence" (GRPO) or "constant" (Dr. GRPO).
        max_response_length: the constant of "constant" (the generation budget in tokens); must be >= every
            row's response length.

    Returns:
        (loss, metadata): the scaled 0-d loss (detached) and detached 0-d metrics: "loss/policy" (unscaled),
        and for "grpo_clip" and "grpo_no_clip" also "policy/clipfrac" (0 for no clip) and "policy/approx_kl"
        (k3 estimate of KL(pi_old || pi)).

    Raises:
        ValueError: for bad arguments (see `compute_policy_gradient_loss`), a missing or too small
            max_response_length with "constant", or an unknown length_normalization.
    """
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    if policy_log_probs.shape != response_mask.shape:
        raise ValueError("policy_log_probs and response_mask must have the same shape")
    if length_normalization not in ("sequence", "constant"):
        raise ValueError(f"length_normalization must be 'sequence' or 'constant', got {length_normalization!r}")
    if length_normalization == "constant" and (
            max_response_length is None or int(response_mask.sum(-1).max()) > max_response_length):
        raise ValueError("Dr. GRPO's 'constant' normalization needs max_response_length >= every response length")
    # BEGIN SOLUTION
    per_token, info = compute_policy_gradient_loss(policy_log_probs, loss_type, raw_rewards, advantages,
                                                   old_log_probs, cliprange)        # (B, T)
    if length_normalization == "sequence":
        per_sequence = masked_mean(per_token, response_mask, dim=-1)                # (B,) GRPO eq. 3: 1/|o_i|
    else:
        per_sequence = masked_normalize(per_token, response_mask, dim=-1,
                                        normalize_constant=max_response_length)     # (B,) Dr. GRPO
    unscaled = per_sequence.mean()
    loss = unscaled / gradient_accumulation_steps
    loss.backward()
    metadata = {"loss/policy": unscaled.detach()}
    if "clipped" in info:  # grpo_clip, grpo_no_clip
        metadata["policy/clipfrac"] = masked_mean(info["clipped"].float(), response_mask)
        metadata["policy/approx_kl"] = masked_mean(kl_estimate(old_log_probs, policy_log_probs.detach(), "k3"),
                                                   response_mask)
    return loss.detach(), metadata
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# PPO: policy, value and entropy terms (token-level means over the batch)
# ---------------------------------------------------------------------------------------------------------

def compute_ppo_policy_loss(advantages: Tensor, policy_log_probs: Tensor, old_log_probs: Tensor,
                            response_mask: Tensor, cliprange: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip policy loss (Schulman et al. 2017, eq. 7) averaged over every response token of the batch.

    Args:
        advantages: (B, T) per-token advantages (e.g. whitened GAE); constants.
        policy_log_probs: (B, T) current log-probs (differentiable).
        old_log_probs: (B, T) log-probs of the rollout policy.
        response_mask: (B, T) bool or 0/1.
        cliprange: eps > 0.

    Returns:
        (loss 0-d, metrics) with detached 0-d "policy/approx_kl" (k3 estimate of KL(pi_old || pi), the
        estimator CleanRL logs) and "policy/clipfrac" (fraction of tokens whose gradient is clipped away).
    """
    if not advantages.shape == policy_log_probs.shape == response_mask.shape:
        raise ValueError("advantages, policy_log_probs and response_mask must all be (B, T)")
    # BEGIN SOLUTION
    per_token, info = compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange)  # (B, T)
    loss = masked_mean(per_token, response_mask)
    with torch.no_grad():
        metrics = {"policy/approx_kl": masked_mean(kl_estimate(old_log_probs, policy_log_probs, "k3"), response_mask),
                   "policy/clipfrac": masked_mean(info["clipped"].float(), response_mask)}
    return loss, metrics
    # END SOLUTION


def compute_ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor,
                           cliprange_value: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss 0.5 * mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)).

    The clipping keeps the critic near the one that computed the advantages, like the policy's ratio
    clipping (OpenAI baselines PPO2; Huang et al. 2022, "The 37 implementation details of PPO", #9).

    Args:
        values: (B, T) current value predictions (differentiable).
        old_values: (B, T) predictions of the rollout-time critic (constants).
        returns: (B, T) value targets, e.g. GAE lambda-returns (constants).
        response_mask: (B, T) bool or 0/1.
        cliprange_value: eps > 0, in reward units.

    Returns:
        (loss 0-d, metrics) with detached "value/clipfrac" (fraction of tokens where the clipped error is
        the larger one) and "value/explained_variance" (1 - Var[R - V] / Var[R] over masked tokens;
        NaN when the returns have no variance).
    """
    if not values.shape == old_values.shape == returns.shape == response_mask.shape:
        raise ValueError("values, old_values, returns and response_mask must all have the same shape")
    if cliprange_value <= 0:
        raise ValueError(f"cliprange_value must be > 0, got {cliprange_value}")
    # BEGIN SOLUTION
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    error_unclipped = (values - returns) ** 2                                  # (B, T)
    error_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error_unclipped, error_clipped), response_mask)
    with torch.no_grad():
        residual = returns - values
        var_returns = masked_mean((returns - masked_mean(returns, response_mask)) ** 2, response_mask)
        var_residual = masked_mean((residual - masked_mean(residual, response_mask)) ** 2, response_mask)
        metrics = {"value/clipfrac": masked_mean((error_clipped > error_unclipped).float(), response_mask),
                   "value/explained_variance": torch.where(var_returns > 0, 1 - var_residual / var_returns,
                                                           torch.nan)}
    return loss, metrics
    # END SOLUTION


def compute_entropy_bonus(token_entropy: Tensor, response_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Entropy bonus as a loss term: -mean entropy over response tokens (add it times a coefficient > 0).

    Minimizing -H pushes the policy to stay stochastic, which keeps exploring (Mnih et al. 2016, A3C;
    PPO eq. 9's c2 * S term).

    Args:
        token_entropy: (B, T) float, entropy (nats) of the policy's next-token distribution at each position.
        response_mask: (B, T) bool or 0/1.

    Returns:
        (loss 0-d, {"policy/entropy": detached mean entropy}).
    """
    if token_entropy.shape != response_mask.shape:
        raise ValueError("token_entropy and response_mask must have the same shape")
    # BEGIN SOLUTION
    entropy = masked_mean(token_entropy, response_mask)
    return -entropy, {"policy/entropy": entropy.detach()}
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# KL to the reference policy
# ---------------------------------------------------------------------------------------------------------

def kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, kind: Literal["k1", "k2", "k3"] = "k3") -> Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating
    KL divergence"). With log r = log pi_ref - log pi:
        k1 = -log r                  unbiased, high variance, can be negative
        k2 = (log r)^2 / 2           biased (low for small KL), low variance, >= 0
        k3 = (r - 1) - log r         unbiased, low variance, >= 0 (r - 1 is a zero-mean control variate)

    Args:
        log_probs: (...) float, log pi of the sampled tokens (the sampling distribution).
        ref_log_probs: (...) float, log pi_ref of the same tokens.
        kind: "k1", "k2" or "k3".

    Returns:
        (...) per-sample estimates (nats); average over samples for the KL.

    Raises:
        ValueError: for an unknown kind or a shape mismatch.
    """
    if kind not in ("k1", "k2", "k3"):
        raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and ref_log_probs {tuple(ref_log_probs.shape)} differ")
    # BEGIN SOLUTION
    log_ratio = ref_log_probs - log_probs                   # log r, r = pi_ref / pi
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return torch.expm1(log_ratio) - log_ratio               # (r - 1) - log r; expm1 is accurate near r = 1
    # END SOLUTION


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, §2.2): nudge beta so the KL tracks a target.

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),  beta_{t+1} = beta_t * (1 + K_beta * e_t),
    with K_beta = n_steps / horizon as in the paper's code (n_steps = samples in this batch; K_beta = 0.1
    in the paper). Too much KL raises beta (pulls the policy back), too little lowers it.
    """

    value: float
    """the current KL coefficient beta"""
    target: float
    """target KL per sequence (nats)"""
    horizon: int = 10000
    """number of samples over which a constant error moves log(beta) by about 1"""

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update beta from the measured KL (nats per sequence) of a batch of `n_steps` samples; return it."""
        if self.target <= 0 or self.horizon <= 0 or n_steps < 0:
            raise ValueError("target and horizon must be > 0 and n_steps >= 0")
        # BEGIN SOLUTION
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)           # Ziegler et al. 2019 §2.2
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
        # END SOLUTION
