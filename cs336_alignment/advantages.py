"""Advantages: how much better than expected was each response (or each token)?

- Group baselines (no critic): GRPO's group-normalized rewards (Shao et al. 2024, DeepSeekMath, eq. 3 and
  §4.1.2) with the CS336 2026 edition's choices of baseline ("mean", "none") and normalizer ("std", "none" as in
  Dr. GRPO, "mean" as in MaxRL), its per-token form for step rewards (process supervision, §4.1.3), and RLOO's
  leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").
- A learned critic: generalized advantage estimation, GAE(gamma, lambda) (Schulman et al. 2016, eq. 16),
  over the response tokens of a (B, T) batch, for PPO.
- PPO's per-token rewards: the sequence score at the last token minus beta * KL to the reference at every
  token (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2), and a penalty for responses with no EOS.
"""
from __future__ import annotations

from typing import Callable, Literal, get_args

import torch
from torch import Tensor



# ---------------------------------------------------------------------------------------------------------
# Group baselines: GRPO (and its Dr. GRPO / MaxRL variants) and RLOO
# ---------------------------------------------------------------------------------------------------------

Baseline = Literal["mean", "none"]
AdvantageNormalizer = Literal["std", "none", "mean"]
BASELINES, ADVANTAGE_NORMALIZERS = get_args(Baseline), get_args(AdvantageNormalizer)


def needs_group_statistics(baseline: str, advantage_normalizer: str) -> bool:
    """Whether an advantage depends on the other rewards of its group (the mean baseline, the std normalizer):
    then a group needs at least 2 responses. The loops ask this instead of naming the choices."""
    return baseline == "mean" or advantage_normalizer == "std"


def zeroes_equal_groups(baseline: str) -> bool:
    """Whether a group whose rewards are all equal gets advantage 0 exactly (the mean baseline): such a group
    carries no gradient, so a loop may drop it before the backward passes."""
    return baseline == "mean"


def compute_rollout_rewards(reward_fn: Callable[[str, str], dict[str, float]], rollout_responses: list,
                            repeated_ground_truths: list) -> tuple[Tensor, dict[str, float]]:
    """Score every rollout with `reward_fn` (CS336 assignment 5, 2026 edition: compute_rollout_rewards).

    Args:
        reward_fn: reward_fn(response, ground_truth) -> dict with a "reward" key; every other key (e.g.
            "format_reward", "answer_reward") is averaged into the metadata.
        rollout_responses: N responses (any objects reward_fn accepts: strings, or token-id tuples).
        repeated_ground_truths: N ground truths, lined up with the responses.

    Returns:
        (raw_rewards (N,) float32, metadata) with Python floats under "reward/mean" (the mean total reward)
        and "reward/<key>_mean" for every other key of reward_fn's dict (e.g. "reward/format_reward_mean",
        "reward/answer_reward_mean").

    Raises:
        ValueError: if the lists are empty or differ in length.
    """
    if len(rollout_responses) != len(repeated_ground_truths) or not rollout_responses:
        raise ValueError(f"{len(rollout_responses)} responses but {len(repeated_ground_truths)} ground truths")
    # BEGIN SOLUTION
    scores = [reward_fn(response, truth) for response, truth in zip(rollout_responses, repeated_ground_truths)]
    raw_rewards = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)   # (N,)
    metadata = {"reward/mean": raw_rewards.mean().item()}
    for key in scores[0]:
        if key != "reward":
            metadata[f"reward/{key}_mean"] = sum(float(s[key]) for s in scores) / len(scores)
    return raw_rewards, metadata
    # END SOLUTION


def compute_group_normalized_rewards(raw_rewards: Tensor, group_size: int, baseline: str = "mean",
                                     advantage_eps: float = 1e-6, advantage_normalizer: str = "std"
                                     ) -> tuple[Tensor, dict[str, float]]:
    """Advantages from rewards in contiguous groups of `group_size` (CS336 assignment 5, 2026 edition).

    With the group's rewards r_1..r_G, their mean m and unbiased standard deviation s (divides by G - 1):
        A_i = (r_i - b) / d,   b = m ("mean") or 0 ("none"),
                               d = s + advantage_eps ("std"), m + advantage_eps ("mean") or 1 ("none").
    baseline="mean", normalizer="std" is GRPO (Shao et al. 2024, DeepSeekMath §4.1.2); normalizer "none" is
    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"), which argues that dividing by s
    up-weights groups that are nearly all right or all wrong; normalizer "mean" is MaxRL (the CS336 2026
    edition's maximum-likelihood variant: with 0/1 rewards and success rate p, grad p / p = grad log p, so the
    update ascends the log-likelihood of a correct answer and weighs hard prompts up by 1/p); baseline="none"
    with normalizer "none" is REINFORCE on the raw rewards (Williams 1992).

    With baseline "mean", a group whose rewards are all equal carries no signal and gets advantages exactly
    0: the formula gives (r - m) / d, where r - m is 0 up to the rounding of m (at most a few ulps, so the
    exact 0 agrees with the formula to ~1e-7 / d), and an exact 0 lets a train step skip those sequences.
    With baseline "none" nothing is zeroed (an all-equal group of reward 1 still has A = 1 / d).

    Args:
        raw_rewards: (N,) float, N = n_prompts * group_size; group g is raw_rewards[g*G:(g+1)*G].
        group_size: G (>= 2 with normalizer "std": the std needs two samples).
        baseline: "mean" or "none".
        advantage_eps: added to the denominator of the "std" and "mean" normalizers.
        advantage_normalizer: "std", "none" or "mean".

    Returns:
        (advantages (N,) in raw_rewards' dtype, metadata) with Python floats "reward/mean", "reward/std"
        (unbiased, over all N), "reward/max", "reward/min" of the raw rewards.

    Raises:
        ValueError: if raw_rewards is not 1-d, N is not a multiple of group_size, group_size < 1 (< 2 with
            "std"), or baseline / advantage_normalizer is not one of the names above.
    """
    if baseline not in BASELINES or advantage_normalizer not in ADVANTAGE_NORMALIZERS:
        raise ValueError(f"baseline must be one of {BASELINES} and advantage_normalizer one of "
                         f"{ADVANTAGE_NORMALIZERS}, got {baseline!r} and {advantage_normalizer!r}")
    if raw_rewards.dim() != 1:
        raise ValueError(f"raw_rewards must be 1-d (N,), got shape {tuple(raw_rewards.shape)}")
    if group_size < (2 if advantage_normalizer == "std" else 1) or raw_rewards.numel() % group_size != 0:
        raise ValueError(f"{raw_rewards.numel()} rewards do not split into groups of {group_size}")
    # BEGIN SOLUTION
    grouped = raw_rewards.view(-1, group_size)                                 # (n_groups, G)
    mean = grouped.mean(dim=-1, keepdim=True)                                  # (n_groups, 1)
    advantages = grouped - mean if baseline == "mean" else grouped
    if advantage_normalizer == "std":
        std = grouped.std(dim=-1, keepdim=True)                                # unbiased (divides by G - 1)
        advantages = advantages / (std + advantage_eps)                        # DeepSeekMath §4.1.2
    elif advantage_normalizer == "mean":
        advantages = advantages / (mean + advantage_eps)                       # MaxRL: the group's mean reward
    if baseline == "mean":  # an all-equal group's mean can differ from its members by rounding: exactly 0
        constant = (grouped == grouped[:, :1]).all(dim=-1, keepdim=True)       # (n_groups, 1)
        advantages = torch.where(constant, 0.0, advantages)
    metadata = {"reward/mean": raw_rewards.mean().item(), "reward/std": raw_rewards.std().item(),
                "reward/max": raw_rewards.max().item(), "reward/min": raw_rewards.min().item()}
    return advantages.reshape(-1), metadata
    # END SOLUTION


def group_normalize(rewards: Tensor, group_size: int, advantage_eps: float, normalize_by_std: bool) -> Tensor:
    """GRPO advantages (baseline "mean"), divided by the group std + eps when normalize_by_std, else not:
    `compute_group_normalized_rewards` without its metadata. rewards (N,) -> (N,); raises as it does."""
    return compute_group_normalized_rewards(rewards, group_size, "mean", advantage_eps,
                                            "std" if normalize_by_std else "none")[0]


def score_and_normalize(reward_fn: Callable[[str, str], dict[str, float]], rollout_responses: list,
                        repeated_ground_truths: list, group_size: int, advantage_eps: float,
                        normalize_by_std: bool) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The 2025 edition's compute_group_normalized_rewards (CS336 assignment 5, Spring 2025): score the
    rollouts (`compute_rollout_rewards`) and normalize them in groups with the mean baseline
    (`compute_group_normalized_rewards`, normalizer "std" when normalize_by_std, else "none").

    Returns:
        (advantages (N,) float32, raw_rewards (N,) float32, metadata): the two functions' metadata merged,
        "reward/mean", "reward/std", "reward/max", "reward/min" and "reward/<key>_mean" for every other key of
        reward_fn's dict (the GRPO loop and notebook 04 read them).

    Raises:
        ValueError: as the two functions do.
    """
    raw_rewards, metadata = compute_rollout_rewards(reward_fn, rollout_responses, repeated_ground_truths)
    advantages, stats = compute_group_normalized_rewards(raw_rewards, group_size, "mean", advantage_eps,
                                                         "std" if normalize_by_std else "none")
    return advantages, raw_rewards, {**stats, **metadata}


def compute_group_process_advantages(step_rewards: list[list[float]], step_ends: list[list[int]],
                                     response_lengths: list[int], group_size: int,
                                     advantage_eps: float = 1e-6) -> Tensor:
    """Per-token GRPO advantages from per-step rewards: process supervision (Shao et al. 2024, DeepSeekMath
    §4.1.3).

    Response i has steps j = 1..K_i, step j ending at response token step_ends[i][j] with reward
    step_rewards[i][j]. Within each group of G responses, all of its steps' rewards are normalized together,
    r~ = (r - mean) / (std + advantage_eps) (unbiased std over the group's steps), and token t of response i
    gets the sum of the normalized rewards of the steps that end at or after it:
        A_{i,t} = sum_{j : step_ends[i][j] >= t} r~_{i,j}.
    A token is credited with what it and everything after it led to, not with the steps before it. A group
    whose step rewards are all equal, or that has fewer than two steps, carries no signal: all zeros.

    Args:
        step_rewards: N lists (N = n_groups * G, contiguous groups) of per-step rewards (may be empty).
        step_ends: N lists of the same lengths: the response-token index (0-based) where each step ends,
            non-decreasing.
        response_lengths: N response lengths in tokens; every step end must be < its response's length.
        group_size: G.
        advantage_eps: added to the std.
    Returns:
        (N, L) float32, L = max(response_lengths); zero at and past each response's length.
    Raises:
        ValueError: if N is not a multiple of group_size, the lists disagree in length, or a step ends
            outside its response.
    """
    n = len(step_rewards)
    if n % group_size or len(step_ends) != n or len(response_lengths) != n or group_size < 1:
        raise ValueError(f"{n} responses ({len(step_ends)} step-end lists, {len(response_lengths)} lengths) do "
                         f"not split into groups of {group_size}")
    for i, (rewards, ends) in enumerate(zip(step_rewards, step_ends)):
        if len(rewards) != len(ends) or any(not 0 <= e < response_lengths[i] for e in ends):
            raise ValueError(f"response {i}: {len(rewards)} rewards, step ends {ends}, length {response_lengths[i]}")
    advantages = torch.zeros(n, max(response_lengths, default=0))               # (N, L)
    for g in range(0, n, group_size):
        flat = torch.tensor([r for rewards in step_rewards[g:g + group_size] for r in rewards], dtype=torch.float32)
        if flat.numel() < 2 or bool((flat == flat[0]).all()):
            continue
        mean, std = flat.mean(), flat.std()
        for i in range(g, g + group_size):
            for reward, end in zip(step_rewards[i], step_ends[i]):
                advantages[i, :end + 1] += (reward - mean) / (std + advantage_eps)  # tokens 0..end lead to step j
    return advantages


def compute_rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (RLOO) advantages (Ahmadian et al. 2024; Kool et al. 2019).

    A_i = r_i - mean_{j != i} r_j over the G responses to the same prompt: each sample's baseline uses only
    the *other* samples, so it is independent of the sample and the gradient estimate stays unbiased
    (the plain group mean includes r_i and shrinks the advantage by (G - 1) / G).

    Args:
        rewards: (N,) float, contiguous groups of `group_size`.
        group_size: G >= 2.

    Returns:
        (N,) advantages, same dtype as `rewards`.

    Raises:
        ValueError: if group_size < 2 or N is not a multiple of group_size.
    """
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size} >= 2")
    # BEGIN SOLUTION
    grouped = rewards.view(-1, group_size)                                     # (n_groups, G)
    baseline = (grouped.sum(dim=-1, keepdim=True) - grouped) / (group_size - 1)  # mean of the others
    return (grouped - baseline).reshape(-1)                                    # RLOO (Ahmadian et al. 2024)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# GAE(gamma, lambda) for PPO
# ---------------------------------------------------------------------------------------------------------

def compute_gae(rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float,
                lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over the masked (response) tokens of each row.

    Tokens where response_mask is 0 (prompt, padding) are skipped: the "next" state of a response token is
    the next *masked* token of its row, and the last masked token is terminal (value 0 after it). With
    the TD residual delta_t = r_t + gamma * V_{t+1} - V_t (Schulman et al. 2016, §3):
        A_t = delta_t + gamma * lam * A_{t+1}     (the recursive form of eq. 16)
        R_t = A_t + V_t                           (the lambda-return, the value target)
    lam = 1 gives the Monte Carlo return minus the value; lam = 0 the one-step TD error.

    Args:
        rewards: (B, T) float, per-token rewards (e.g. from `compute_kl_shaped_rewards`).
        values: (B, T) float, value estimates V(s_t) (treated as constants: no gradient flows).
        response_mask: (B, T) bool or 0/1, True on response tokens.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1].

    Returns:
        (advantages, returns), each (B, T) in `rewards`' dtype, 0 where the mask is 0, detached.

    Raises:
        ValueError: if the shapes differ or gamma / lam are outside [0, 1].
    """
    if not rewards.shape == values.shape == response_mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must all be (B, T)")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    # BEGIN SOLUTION
    rewards, values = rewards.detach(), values.detach()
    mask = response_mask.bool()
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)                                     # (B, T)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)    # V of the next masked token
    next_advantage = torch.zeros_like(next_value)                              # A of the next masked token
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]              # TD residual (GAE §3)
        advantage = delta + gamma * lam * next_advantage                       # GAE eq. 16, recursively
        m = mask[:, t]
        advantages[:, t] = torch.where(m, advantage, 0.0)
        next_value = torch.where(m, values[:, t], next_value)                  # skipped tokens pass through
        next_advantage = torch.where(m, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# PPO per-token rewards
# ---------------------------------------------------------------------------------------------------------

def compute_kl_shaped_rewards(scores: Tensor, policy_log_probs: Tensor, ref_log_probs: Tensor,
                              response_mask: Tensor, kl_coef: float,
                              kl_kind: Literal["k1", "k3"] = "k1") -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token rewards for PPO-RLHF: -kl_coef * KL_t on every response token, plus the sequence score
    on its last response token.

    R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)) (Ziegler et al. 2019, eq. 2; InstructGPT eq. 2),
    with the log-ratio spread over tokens: summing the per-token rewards gives back R(x, y) for "k1".

    Args:
        scores: (B,) float, the reward model's (or gold) score of each response.
        policy_log_probs: (B, T) float, log pi of the sampled tokens (the rollout policy's).
        ref_log_probs: (B, T) float, log pi_ref of the same tokens.
        response_mask: (B, T) bool or 0/1; each row needs at least one response token.
        kl_coef: beta >= 0.
        kl_kind: per-token KL estimator (Schulman 2020), with log r = log pi_ref - log pi: "k1" = -log r
            (unbiased) or "k3" = (r - 1) - log r (unbiased and non-negative).

    Returns:
        (rewards (B, T) detached, 0 off the mask; metadata {"objective/kl": mean summed KL per sequence,
        "objective/non_score_reward": mean summed -beta * KL, "objective/scores": mean score}).

    Raises:
        ValueError: on shape mismatch, a row with no response token, kl_coef < 0 or an unknown kl_kind.
    """
    if not policy_log_probs.shape == ref_log_probs.shape == response_mask.shape or policy_log_probs.dim() != 2:
        raise ValueError("policy_log_probs, ref_log_probs and response_mask must all be (B, T)")
    if scores.shape != policy_log_probs.shape[:1]:
        raise ValueError(f"scores must be (B,) = ({policy_log_probs.shape[0]},), got {tuple(scores.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_kind not in ("k1", "k3"):
        raise ValueError(f"kl_kind must be 'k1' or 'k3', got {kl_kind!r}")
    if not bool(response_mask.bool().any(dim=-1).all()):
        raise ValueError("every row needs at least one response token")
    # BEGIN SOLUTION
    mask = response_mask.bool()
    T = mask.shape[1]
    log_r = ref_log_probs.detach() - policy_log_probs.detach()                 # (B, T) log (pi_ref / pi)
    kl = torch.where(mask, -log_r if kl_kind == "k1" else torch.expm1(log_r) - log_r, 0.0)  # (B, T) k1 or k3
    non_score = -kl_coef * kl                                                  # Ziegler et al. 2019 eq. 2
    last = (torch.arange(T, device=mask.device) * mask).argmax(dim=-1)         # (B,) last response token
    rewards = non_score.scatter_add(1, last[:, None], scores.detach().to(non_score.dtype)[:, None])
    metadata = {"objective/kl": kl.sum(-1).mean(), "objective/non_score_reward": non_score.sum(-1).mean(),
                "objective/scores": scores.detach().float().mean()}
    return rewards, metadata
    # END SOLUTION


def apply_missing_eos_penalty(scores: Tensor, response_ids: Tensor, response_mask: Tensor,
                              eos_token_id: int | list[int], penalty: float) -> Tensor:
    """Subtract `penalty` from the score of every response that never emitted an EOS token.

    A response cut off by the length limit has no end, and a reward model may still like it; penalizing
    it keeps the policy from learning to ramble (TRL's `missing_eos_penalty`; Huang et al. 2024,
    "The N+ implementation details of RLHF with PPO", detail on EOS tricks).

    Args:
        scores: (B,) float rewards.
        response_ids: (B, T) long, the sampled response tokens (padding allowed).
        response_mask: (B, T) bool or 0/1, True on real response tokens.
        eos_token_id: id (or ids, e.g. end-of-turn and end-of-text) that end a response.
        penalty: amount subtracted (>= 0).

    Returns:
        (B,) new scores, same dtype as `scores`.
    """
    if response_ids.shape != response_mask.shape or scores.shape != response_ids.shape[:1]:
        raise ValueError("need scores (B,), response_ids (B, T) and response_mask (B, T)")
    # BEGIN SOLUTION
    eos_ids = torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1)
    has_eos = (torch.isin(response_ids, eos_ids) & response_mask.bool()).any(dim=-1)   # (B,)
    return torch.where(has_eos, scores, scores - penalty)
    # END SOLUTION
