"""Policy-gradient losses for RL on language models: REINFORCE, GRPO, PPO.

Every loss is written to be *minimized*: the objective we want to maximize is E[A * log pi] (or its
clipped surrogate), so the loss is its negative.

- REINFORCE (Williams 1992): per-token loss -A * log pi(y_t | x, y_<t); A = raw reward ("no_baseline") or
  an advantage ("reinforce_with_baseline": group mean, RLOO, ...).
- PPO-clip (Schulman et al. 2017, eq. 7), used per token by GRPO (Shao et al. 2024, eq. 3) and PPO; and
  "GRPO-No-Clip", the importance-ratio-weighted loss -rho * A without the clip (CS336 assignment 5,
  grpo_off_policy_clip_ablation): the clipped loss with an infinite clip range.
  The GRPO interface built on these two (importance reweighting methods, aggregation, the micro-batch
  step) is `grpo_loss`.
- PPO's critic and regularizers: clipped value loss, entropy bonus.
- KL to the reference policy: the k1 / k2 / k3 estimators (Schulman 2020, "Approximating KL divergence",
  http://joschu.net/blog/kl-approx.html) and the adaptive KL coefficient (Ziegler et al. 2019, §2.2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cs336_alignment.masked import masked_mean

def check_sequence_weights(name: str, weights: Tensor, policy_log_probs: Tensor) -> None:
    """Raise ValueError unless `weights` (per-sequence rewards or advantages) is (B, 1) or (B, T) for
    policy_log_probs (B, T): a (B,) tensor would broadcast along T when B == T."""
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
    check_sequence_weights("raw_rewards_or_advantages", raw_rewards_or_advantages, policy_log_probs)
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
    check_sequence_weights("advantages", advantages, policy_log_probs)
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
