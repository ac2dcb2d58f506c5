"""CS336 2026: rollout rewards and group normalisation with every baseline x normaliser (GRPO, Dr. GRPO, MaxRL)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from cs336_alignment.advantages import group_normalize
from tests.adapters import run_compute_group_normalized_rewards, run_compute_rollout_rewards
from tests.adapters_2025 import run_compute_group_normalized_rewards as run_compute_group_normalized_rewards_2025

PART = "6.1 Rollout rewards and group normalisation"

# 3 groups of 4: mixed rewards, a group with one success in four, and a group of partial credit
REWARDS = [1.0, 0.0, 0.5, 0.25, 0.0, 0.0, 1.0, 0.0, 0.2, 0.9, 0.6, 0.7]
G = 4


def _reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """A fake grader: the reward is written in the response; format and answer rewards from the strings."""
    reward = float(response.split("=")[1])
    return {"reward": reward, "format_reward": float("=" in response and len(response) % 2 == 0),
            "answer_reward": float(ground_truth == "7")}


def _naive(rewards: list[float], group_size: int, baseline: str, eps: float, normalizer: str) -> list[float]:
    """Oracle: the advantage formula per group with the statistics module (stdev is the unbiased one)."""
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g:g + group_size]
        mean = statistics.mean(group)
        divisor = {"std": statistics.stdev(group) + eps, "mean": mean + eps, "none": 1.0}[normalizer]
        out += [(r - (mean if baseline == "mean" else 0.0)) / divisor for r in group]
    return out


def _check(baseline: str, normalizer: str, eps: float = 1e-6) -> torch.Tensor:
    rewards = torch.tensor(REWARDS)
    out = run_compute_group_normalized_rewards(raw_rewards=rewards, group_size=G, baseline=baseline,
                                               advantage_eps=eps, advantage_normalizer=normalizer)
    assert isinstance(out, tuple) and len(out) == 2, "returns (advantages, metadata)"
    advantages, metadata = out
    assert isinstance(metadata, dict) and advantages.shape == (len(REWARDS),)
    expected = torch.tensor(_naive(REWARDS, G, baseline, eps, normalizer))
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-6,
                               msg=f"baseline={baseline}, normalizer={normalizer} differ from the naive formula")
    return advantages


# ---------------------------------------------------------------------------------------------------------
# compute_rollout_rewards
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_compute_rollout_rewards(numpy_snapshot):
    responses = [f"x{i}={r}" for i, r in enumerate(REWARDS)]
    truths = ["7"] * 8 + ["3"] * 4
    raw, metadata = run_compute_rollout_rewards(reward_fn=_reward_fn, rollout_responses=responses,
                                                repeated_ground_truths=truths)
    assert raw.shape == (len(REWARDS),) and raw.dtype == torch.float32
    torch.testing.assert_close(raw, torch.tensor(REWARDS), msg="raw rewards: the 'reward' of each response")
    scores = [_reward_fn(r, t) for r, t in zip(responses, truths)]
    expected = {"reward/mean": statistics.mean(REWARDS),
                "reward/format_reward_mean": statistics.mean(s["format_reward"] for s in scores),
                "reward/answer_reward_mean": statistics.mean(s["answer_reward"] for s in scores)}
    for key, value in expected.items():
        assert math.isclose(float(metadata[key]), value, rel_tol=1e-6, abs_tol=1e-7), key
    numpy_snapshot.assert_match({"raw": raw, **{key.replace("/", "_"): float(metadata[key]) for key in expected}},
                                "test_compute_rollout_rewards")


def test_compute_rollout_rewards_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        run_compute_rollout_rewards(_reward_fn, ["a=1", "b=0"], ["7"])


# ---------------------------------------------------------------------------------------------------------
# Group normalisation: GRPO, Dr. GRPO, MaxRL
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_compute_group_normalized_rewards_grpo(numpy_snapshot):
    advantages = _check("mean", "std")
    advantages_eps = _check("mean", "std", eps=0.1)              # eps is added to the std, not to its square
    numpy_snapshot.assert_match({"eps_default": advantages, "eps_tenth": advantages_eps},
                                "test_compute_group_normalized_rewards_grpo")


@pytest.mark.points(0.5)
@pytest.mark.parametrize("baseline", ["mean", "none"])
def test_compute_group_normalized_rewards_drgrpo(numpy_snapshot, baseline):
    numpy_snapshot.assert_match(_check(baseline, "none"), f"test_compute_group_normalized_rewards_drgrpo_{baseline}")


@pytest.mark.points(0.5)
def test_compute_group_normalized_rewards_maxrl(numpy_snapshot):
    group_means = _check("mean", "mean")
    # MaxRL on 0/1 rewards: (r - p) / p with p the group's success rate; one success in four weighs 4x
    advantages, _ = run_compute_group_normalized_rewards(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, "mean", 0.0, "mean")
    torch.testing.assert_close(advantages, torch.tensor([3.0, -1.0, -1.0, -1.0]))
    numpy_snapshot.assert_match({"group_means": group_means, "hand": advantages},
                                "test_compute_group_normalized_rewards_maxrl")


@pytest.mark.parametrize("baseline", ["mean", "none"])
@pytest.mark.parametrize("normalizer", ["std", "none", "mean"])
def test_every_baseline_and_normalizer_against_the_formula(baseline, normalizer):
    _check(baseline, normalizer)


def test_hand_computed_group():
    """Rewards (1, 0, 0, 0): mean 1/4, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)                         # = 0.5
    cases = {("mean", "std"): [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std],
             ("mean", "none"): [0.75, -0.25, -0.25, -0.25], ("none", "none"): [1.0, 0.0, 0.0, 0.0],
             ("none", "std"): [1 / std, 0.0, 0.0, 0.0], ("none", "mean"): [4.0, 0.0, 0.0, 0.0]}
    for (baseline, normalizer), expected in cases.items():
        out, _ = run_compute_group_normalized_rewards(r, 4, baseline, 0.0, normalizer)
        torch.testing.assert_close(out, torch.tensor(expected), msg=f"{baseline}, {normalizer}")


def test_all_equal_groups():
    """Baseline mean: an all-equal group gets exactly 0 (never NaN, whatever eps). Baseline none keeps r / d."""
    rewards = torch.tensor([0.1] * 4 + [1.0, 0.0, 1.0, 0.0] + [0.0] * 4)
    for normalizer in ("std", "none", "mean"):
        out, _ = run_compute_group_normalized_rewards(rewards, 4, "mean", 0.0, normalizer)
        assert torch.isfinite(out).all() and (out[:4] == 0).all() and (out[8:] == 0).all(), normalizer
        assert (out[4:8].abs() >= 0.5).all(), "the mixed group keeps its signal"
    out, _ = run_compute_group_normalized_rewards(rewards, 4, "none", 1e-6, "none")
    torch.testing.assert_close(out, rewards)                                  # REINFORCE: the raw rewards


def test_metadata_and_errors():
    _, metadata = run_compute_group_normalized_rewards(torch.tensor(REWARDS), G)
    assert math.isclose(metadata["reward/mean"], statistics.mean(REWARDS), rel_tol=1e-6)
    assert math.isclose(metadata["reward/std"], statistics.stdev(REWARDS), rel_tol=1e-5)
    for kwargs in (dict(baseline="median"), dict(advantage_normalizer="max"), dict(group_size=5),
                   dict(group_size=1)):
        with pytest.raises(ValueError):
            run_compute_group_normalized_rewards(**{"raw_rewards": torch.tensor(REWARDS), "group_size": G, **kwargs})
    with pytest.raises(ValueError):
        run_compute_group_normalized_rewards(torch.tensor(REWARDS).view(3, 4), G)


@pytest.mark.parametrize("normalize_by_std", [True, False])
def test_2025_function_is_the_composition(normalize_by_std):
    """The 2025 compute_group_normalized_rewards(reward_fn, ...) = compute_rollout_rewards + the 2026 normaliser."""
    responses = [f"x{i}={r}" for i, r in enumerate(REWARDS)]
    truths = ["7"] * len(REWARDS)
    advantages, raw, metadata = run_compute_group_normalized_rewards_2025(
        _reward_fn, responses, truths, G, 1e-6, normalize_by_std)
    expected = _naive(REWARDS, G, "mean", 1e-6, "std" if normalize_by_std else "none")
    torch.testing.assert_close(advantages, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(raw, torch.tensor(REWARDS))
    assert {"reward/mean", "reward/std", "reward/format_reward_mean", "reward/answer_reward_mean"} <= set(metadata)
    torch.testing.assert_close(group_normalize(raw, G, 1e-6, normalize_by_std), advantages, rtol=0, atol=0)
