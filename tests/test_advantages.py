"""Advantages: GRPO group normalization (per response and per step), RLOO, GAE(gamma, lambda), whitening,
PPO per-token rewards."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from cs336_alignment.advantages import (apply_missing_eos_penalty, compute_group_process_advantages,
                                        compute_kl_shaped_rewards, compute_rloo_advantages)
from tests.adapters import run_compute_gae, run_whiten
from tests.adapters_2025 import run_compute_group_normalized_rewards

PART = "4.1 Advantages (GRPO, RLOO, GAE)"


def _reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """A deterministic fake grader: reward in [0, 1] from the strings (format_reward to check the metadata)."""
    reward = (sum(map(ord, response)) * 7 + sum(map(ord, ground_truth))) % 11 / 10
    return {"reward": reward, "format_reward": float(len(response) % 2)}


@pytest.fixture
def rollouts():
    group_size = 4
    truths = ["12", "7", "300"]
    responses = [f"answer {i * i} #### {i % 5}" for i in range(len(truths) * group_size)]
    return responses, [t for t in truths for _ in range(group_size)], group_size


# ---------------------------------------------------------------------------------------------------------
# GRPO group normalization
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.parametrize("normalize_by_std", [True, False])
def test_compute_group_normalized_rewards(numpy_snapshot, rollouts, normalize_by_std):
    responses, truths, group_size = rollouts
    out = run_compute_group_normalized_rewards(reward_fn=_reward_fn, rollout_responses=responses,
                                               repeated_ground_truths=truths, group_size=group_size,
                                               advantage_eps=1e-6, normalize_by_std=normalize_by_std)
    assert isinstance(out, tuple) and len(out) == 3, "returns (advantages, raw_rewards, metadata)"
    advantages, raw_rewards, metadata = out
    assert isinstance(metadata, dict)
    rewards = [_reward_fn(r, t)["reward"] for r, t in zip(responses, truths)]
    expected = []
    for g in range(0, len(rewards), group_size):                              # contiguous groups
        group = rewards[g:g + group_size]
        mean, std = statistics.mean(group), statistics.stdev(group)           # stdev: unbiased (n - 1)
        expected += [(r - mean) / (std + 1e-6) if normalize_by_std else r - mean for r in group]
    torch.testing.assert_close(raw_rewards, torch.tensor(rewards), msg="raw rewards")
    torch.testing.assert_close(advantages, torch.tensor(expected), msg="advantages differ from the naive loop")
    numpy_snapshot.assert_match({"advantages": advantages, "raw_rewards": raw_rewards},
                                f"test_compute_group_normalized_rewards_std{normalize_by_std}")


@pytest.mark.points(1)
def test_group_normalized_rewards_metadata_keys(numpy_snapshot, rollouts):
    """The metadata keys the docstring names (the GRPO loop and notebook 04 read them), with their values."""
    responses, truths, group_size = rollouts
    _, _, metadata = run_compute_group_normalized_rewards(
        reward_fn=_reward_fn, rollout_responses=responses, repeated_ground_truths=truths, group_size=group_size,
        advantage_eps=1e-6, normalize_by_std=True)
    assert set(metadata) == {"reward/mean", "reward/std", "reward/max", "reward/min", "reward/format_reward_mean"}
    rewards = [_reward_fn(r, t)["reward"] for r, t in zip(responses, truths)]
    formats = [_reward_fn(r, t)["format_reward"] for r, t in zip(responses, truths)]
    expected = {"reward/mean": statistics.mean(rewards), "reward/std": statistics.stdev(rewards),
                "reward/max": max(rewards), "reward/min": min(rewards),
                "reward/format_reward_mean": statistics.mean(formats)}
    for key, value in expected.items():
        assert isinstance(metadata[key], float), f"{key}: a Python float, not {type(metadata[key]).__name__}"
        assert math.isclose(metadata[key], value, rel_tol=1e-5, abs_tol=1e-6), key
    numpy_snapshot.assert_match({key.replace("/", "_"): metadata[key] for key in sorted(metadata)},
                                "test_group_normalized_rewards_metadata_keys")


@pytest.mark.points(1)
@pytest.mark.parametrize("advantage_eps", [1e-6, 0.0])
def test_equal_rewards_give_zero_advantages_not_nan(numpy_snapshot, advantage_eps):
    """Invariance 9: a group whose rewards are all equal carries no signal: advantages exactly 0."""
    rewards = {"a": 0.1, "b": 1.0, "c": 0.0}
    responses = ["a"] * 4 + ["b", "c", "b", "c"] + ["b"] * 4                   # groups: all 0.1, mixed, all 1
    out = run_compute_group_normalized_rewards(lambda r, t: {"reward": rewards[r]}, responses, ["x"] * 12, 4,
                                               advantage_eps, True)
    advantages = out[0]
    assert torch.isfinite(advantages).all(), "no NaN or inf"
    assert (advantages[:4] == 0).all() and (advantages[8:] == 0).all(), "an all-equal group must give exactly 0"
    assert (advantages[4:8].abs() > 0.5).all(), "the mixed group keeps its signal"
    numpy_snapshot.assert_match(advantages, f"test_equal_rewards_give_zero_advantages_not_nan_eps{advantage_eps:g}")


@pytest.mark.points(1)
def test_rloo_advantages(numpy_snapshot):
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 4.0, 6.0, 8.0])
    out = compute_rloo_advantages(rewards, group_size=4)
    expected = []
    for g in range(2):
        group = rewards[4 * g:4 * g + 4].tolist()
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1:]
            expected.append(r - sum(others) / len(others))                     # leave-one-out baseline
    torch.testing.assert_close(out, torch.tensor(expected), msg="RLOO differs from the naive loop")
    # RLOO = G / (G - 1) * (r - group mean): the plain mean baseline shrinks the advantage.
    group_mean = rewards.view(2, 4).mean(-1, keepdim=True)
    torch.testing.assert_close(out, (4 / 3 * (rewards.view(2, 4) - group_mean)).view(-1), msg="RLOO identity")
    numpy_snapshot.assert_match(out, "test_rloo_advantages")


# ---------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------

def _naive_gae(rewards, values, mask, gamma, lam):
    """Oracle: on each row's masked tokens, A_t = sum_l (gamma lam)^l delta_{t+l} with the sum written out."""
    B, T = rewards.shape
    advantages = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx] + [0.0]                        # terminal value 0
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, t in enumerate(idx):
            advantages[b, t] = sum((gamma * lam) ** l * deltas[k + l] for l in range(len(idx) - k))
    return advantages


@pytest.fixture
def gae_inputs():
    B, T = 3, 9
    rewards = torch.randn(B, T)
    values = torch.randn(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:9] = True                                                       # prompt then response
    mask[1, 3:6] = True                                                       # prompt, response, padding
    mask[2, [1, 2, 4, 5, 6]] = True                                           # a hole in the middle
    return rewards, values, mask


@pytest.mark.points(3)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_compute_gae(numpy_snapshot, gae_inputs, gamma, lam):
    rewards, values, mask = gae_inputs
    advantages, returns = run_compute_gae(rewards=rewards, values=values, response_mask=mask, gamma=gamma, lam=lam)
    expected = _naive_gae(rewards, values, mask, gamma, lam).float()
    torch.testing.assert_close(advantages, expected, msg="GAE advantages differ from the naive sum")
    torch.testing.assert_close(returns, torch.where(mask, expected + values, 0.0), msg="returns = A + V")
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all(), "0 off the mask"
    numpy_snapshot.assert_match({"advantages": advantages, "returns": returns},
                                f"test_compute_gae_g{gamma:g}_l{lam:g}")


@pytest.mark.points(1)
def test_gae_lambda1_gamma1_is_reward_to_go_minus_value(numpy_snapshot, gae_inputs):
    rewards, values, mask = gae_inputs
    advantages, returns = run_compute_gae(rewards, values, mask, 1.0, 1.0)
    masked_rewards = torch.where(mask, rewards, 0.0)
    reward_to_go = masked_rewards.flip(-1).cumsum(-1).flip(-1)                # sum_{t' >= t} r_t'
    torch.testing.assert_close(advantages, torch.where(mask, reward_to_go - values, 0.0), msg="lambda = 1")
    torch.testing.assert_close(returns, torch.where(mask, reward_to_go, 0.0), msg="returns = reward-to-go")
    numpy_snapshot.assert_match({"advantages": advantages, "returns": returns},
                                "test_gae_lambda1_gamma1_is_reward_to_go_minus_value")


@pytest.mark.points(1)
def test_gae_outputs_are_detached(numpy_snapshot, gae_inputs):
    """Advantages and returns are targets: no gradient may flow from them into the value model."""
    rewards, values, mask = gae_inputs
    values = values.clone().requires_grad_()
    advantages, returns = run_compute_gae(rewards=rewards.clone().requires_grad_(), values=values,
                                          response_mask=mask, gamma=0.99, lam=0.95)
    assert not advantages.requires_grad and not returns.requires_grad, "detach GAE's outputs (see the docstring)"
    numpy_snapshot.assert_match({"advantages": advantages, "returns": returns}, "test_gae_outputs_are_detached")


@pytest.mark.points(1)
def test_gae_lambda0_is_td_error(numpy_snapshot):
    rewards = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.25, 9.0]])
    mask = torch.tensor([[False, True, True, False]])
    advantages, _ = run_compute_gae(rewards, values, mask, 0.5, 0.0)
    # t=1: 1 + 0.5 * 0.25 - 0.5 = 0.625; t=2 (last): 2 + 0 - 0.25 = 1.75
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.625, 1.75, 0.0]]))
    numpy_snapshot.assert_match(advantages, "test_gae_lambda0_is_td_error")


# ---------------------------------------------------------------------------------------------------------
# Whitening
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_whiten(numpy_snapshot):
    values = 5.0 + 2.0 * torch.randn(3, 8)
    mask = torch.rand(3, 8) > 0.3
    out = run_whiten(values, mask)
    selected = out[mask]
    assert abs(selected.mean().item()) < 1e-5, "whitened mean 0"
    assert abs(selected.std().item() - 1.0) < 1e-4, "whitened (unbiased) std 1"
    assert (out[~mask] == 0).all(), "0 off the mask"
    kept = run_whiten(values, mask, shift_mean=False)[mask]
    torch.testing.assert_close(kept.mean(), values[mask].mean(), msg="shift_mean=False keeps the mean")
    unmasked = run_whiten(values)                                            # no mask: every entry
    torch.testing.assert_close(unmasked, (values - values.mean()) / torch.sqrt(values.var() + 1e-8))
    numpy_snapshot.assert_match({"masked": out, "no_shift": run_whiten(values, mask, shift_mean=False),
                                 "unmasked": unmasked}, "test_whiten")


# ---------------------------------------------------------------------------------------------------------
# PPO per-token rewards
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
def test_kl_shaped_rewards(numpy_snapshot):
    log_probs = torch.tensor([[-1.0, -2.0, -0.5, -1.0], [-0.2, -0.3, -3.0, -1.0]])
    ref_log_probs = torch.tensor([[-1.5, -1.0, -0.5, -2.0], [-0.2, -0.1, -2.0, -4.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    scores = torch.tensor([2.0, -1.0])
    rewards, metadata = compute_kl_shaped_rewards(scores, log_probs, ref_log_probs, mask, kl_coef=0.1)
    # -0.1 * (logp - ref) on masked tokens; the score added on the last masked token.
    expected = torch.tensor([[0.0, -0.1 * (-1.0), -0.1 * 0.0 + 2.0, 0.0],
                             [0.0, -0.1 * (-0.2), -0.1 * (-1.0), -0.1 * 3.0 - 1.0]])
    torch.testing.assert_close(rewards, expected, msg="k1-shaped rewards")
    # Summing the per-token rewards gives R(x, y) = r(x, y) - beta * log(pi / pi_ref).
    torch.testing.assert_close(rewards.sum(-1), scores - 0.1 * torch.where(mask, log_probs - ref_log_probs, 0).sum(-1))
    torch.testing.assert_close(metadata["objective/kl"], torch.tensor((-1.0 + 1.8) / 2), msg="mean sequence KL")
    k3_rewards, _ = compute_kl_shaped_rewards(scores, log_probs, ref_log_probs, mask, 0.1, kl_kind="k3")
    ratio = torch.exp(ref_log_probs - log_probs)                               # pi_ref / pi
    expected_k3 = torch.where(mask, -0.1 * (ratio - 1 - ratio.log()), 0.0)
    expected_k3[0, 2] += 2.0
    expected_k3[1, 3] -= 1.0
    torch.testing.assert_close(k3_rewards, expected_k3, msg="k3-shaped rewards")
    numpy_snapshot.assert_match({"k1": rewards, "k3": k3_rewards}, "test_kl_shaped_rewards")


@pytest.mark.points(1)
def test_missing_eos_penalty(numpy_snapshot):
    eos, end = 5, 6
    response_ids = torch.tensor([[1, 2, 5, 0], [1, 2, 3, 4], [6, 0, 0, 0], [1, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]])   # row 3: EOS is padding
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = apply_missing_eos_penalty(scores, response_ids, mask, [eos, end], penalty=2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    out = apply_missing_eos_penalty(scores, response_ids, mask, eos, penalty=2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, -1.0, -1.0]))
    numpy_snapshot.assert_match({"eos": out, "eos_or_end": apply_missing_eos_penalty(scores, response_ids, mask,
                                                                                      [eos, end], penalty=2.0)},
                                "test_missing_eos_penalty")


def test_group_normalize_rejects_bad_group_size():
    with pytest.raises(ValueError):
        run_compute_group_normalized_rewards(_reward_fn, ["a"] * 6, ["1"] * 6, 4, 1e-6, True)
    with pytest.raises(ValueError):
        run_compute_group_normalized_rewards(_reward_fn, ["a"] * 6, ["1"] * 5, 3, 1e-6, True)


# ---------------------------------------------------------------------------------------------------------
# Process supervision (DeepSeekMath §4.1.3)
# ---------------------------------------------------------------------------------------------------------

def test_process_advantages_hand_example():
    # One group of 2: step rewards [1, 0] (ending at tokens 1 and 3 of 5) and [1, 1] (tokens 0 and 2 of 3).
    # All four normalized together: mean 0.75, unbiased std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5, so
    # r~ = [0.5, -1.5] and [0.5, 0.5]; a token gets the sum over the steps ending at or after it.
    adv = compute_group_process_advantages([[1.0, 0.0], [1.0, 1.0]], [[1, 3], [0, 2]], [5, 3], group_size=2,
                                           advantage_eps=0.0)
    expected = torch.tensor([[-1.0, -1.0, -1.5, -1.5, 0.0],
                             [1.0, 0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)


def test_process_advantages_with_only_the_outcome_step_is_outcome_grpo():
    # Each response's only step is its final answer at its last token: every token gets the response's
    # group-normalized outcome reward, exactly GRPO's per-sequence advantage (DeepSeekMath §4.1.2).
    rewards, lengths = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [3, 5, 2, 4, 4, 1, 2, 3]
    adv = compute_group_process_advantages([[r] for r in rewards], [[n - 1] for n in lengths], lengths,
                                           group_size=4, advantage_eps=1e-6)
    first = rewards[:4]  # the first group: (r - mean) / (unbiased std + eps), written out
    outcome = [(r - statistics.mean(first)) / (statistics.stdev(first) + 1e-6) for r in first] + [0.0] * 4
    for i, n in enumerate(lengths):
        torch.testing.assert_close(adv[i, :n], torch.full((n,), outcome[i]))
        assert (adv[i, n:] == 0).all()
    assert (adv[4:] == 0).all(), "the second group's rewards are all equal: no signal"


def test_process_advantages_reject_bad_inputs():
    with pytest.raises(ValueError, match="groups of 2"):
        compute_group_process_advantages([[1.0]] * 3, [[0]] * 3, [1] * 3, group_size=2)
    with pytest.raises(ValueError, match="step ends"):
        compute_group_process_advantages([[1.0], [0.0]], [[0], [4]], [1, 4], group_size=2)
