"""CS336 2026: the per-token policy-gradient loss with importance reweighting (none, noclip, grpo, gspo, cispo) and
its aggregation over a micro-batch (sequence, constant)."""
from __future__ import annotations

import math

import pytest
import torch

from cs336_alignment.grpo_loss import needs_cliprange, needs_old_log_probs
from tests.adapters import run_aggregate_loss_across_microbatch, run_compute_policy_gradient_loss
from tests.adapters_2025 import run_compute_policy_gradient_loss as run_compute_policy_gradient_loss_2025

PART = "6.2 Policy-gradient loss and aggregation"

B, T = 4, 7


@pytest.fixture
def batch():
    """Log-probs, an old policy a little different, advantages (B,), and a mask with prompt and padding."""
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(B, T, 9, generator=g), -1)[..., 0].double()    # (B, T)
    old = log_probs + 0.3 * torch.randn(B, T, generator=g).double()
    advantages = torch.tensor([1.5, -0.5, 0.75, -2.0], dtype=torch.float64)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (start, end) in enumerate([(1, 7), (2, 4), (0, 7), (3, 6)]):
        mask[b, start:end] = True
    return log_probs, old, advantages, mask


def _naive_loss(method, a, lp, old, eps, mask):
    """Oracle: the per-token loss of each method in plain Python, one token at a time."""
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = sum(bool(m) for m in mask[b])
        seq_log_ratio = sum(float(lp[b, t] - old[b, t]) for t in range(T) if mask[b, t]) / n
        for t in range(T):
            w = math.exp(float(lp[b, t] - old[b, t]))
            if method == "none":
                out[b, t] = -float(a[b]) * float(lp[b, t])
            elif method == "noclip":
                out[b, t] = -float(a[b]) * w
            elif method == "grpo":
                out[b, t] = -min(w * float(a[b]), min(max(w, 1 - eps), 1 + eps) * float(a[b]))
            elif method == "gspo":
                s = math.exp(seq_log_ratio)
                out[b, t] = -min(s * float(a[b]), min(max(s, 1 - eps), 1 + eps) * float(a[b]))
            else:  # cispo: the value is the clipped weight times -A log pi
                out[b, t] = -min(w, 1 + eps) * float(a[b]) * float(lp[b, t])
    return out


# ---------------------------------------------------------------------------------------------------------
# On-policy (REINFORCE) and off-policy (token-level ratios, GSPO)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.parametrize("shape", ["(B,)", "(B, 1)"])
def test_compute_policy_gradient_loss_on_policy(numpy_snapshot, batch, shape):
    log_probs, _, advantages, _ = batch
    a = advantages if shape == "(B,)" else advantages[:, None]
    x = log_probs.clone().requires_grad_(True)
    loss, metadata = run_compute_policy_gradient_loss(raw_rewards_or_advantages=a, policy_log_probs=x)
    assert isinstance(metadata, dict) and loss.shape == (B, T)
    torch.testing.assert_close(loss, _naive_loss("none", advantages, log_probs, log_probs, 0.2, torch.ones(B, T)))
    loss.sum().backward()
    torch.testing.assert_close(x.grad, -advantages[:, None].expand(B, T), msg="d loss / d log pi = -A")
    numpy_snapshot.assert_match({"loss": loss, "grad": x.grad},
                                f"test_compute_policy_gradient_loss_on_policy_{'B' if shape == '(B,)' else 'B1'}")


@pytest.mark.points(1)
@pytest.mark.parametrize("method", ["noclip", "grpo"])
def test_compute_policy_gradient_loss_off_policy(numpy_snapshot, batch, method):
    log_probs, old, advantages, mask = batch
    loss, metadata = run_compute_policy_gradient_loss(
        raw_rewards_or_advantages=advantages[:, None], policy_log_probs=log_probs,
        importance_reweighting_method=method, old_log_probs=old, cliprange=0.2, response_mask=mask)
    torch.testing.assert_close(loss, _naive_loss(method, advantages, log_probs, old, 0.2, mask))
    # the gradient through the ratio: float64 gradcheck
    assert torch.autograd.gradcheck(
        lambda x: run_compute_policy_gradient_loss(advantages, x, method, old, 0.2, mask)[0],
        (log_probs.clone().requires_grad_(True),))
    numpy_snapshot.assert_match(loss, f"test_compute_policy_gradient_loss_off_policy_{method}")


@pytest.mark.points(1)
def test_compute_policy_gradient_loss_off_policy_gspo(numpy_snapshot, batch):
    log_probs, old, advantages, mask = batch
    x = log_probs.clone().requires_grad_(True)
    loss, metadata = run_compute_policy_gradient_loss(advantages, x, "gspo", old, 0.2, mask)
    torch.testing.assert_close(loss, _naive_loss("gspo", advantages, log_probs, old, 0.2, mask))
    assert torch.autograd.gradcheck(
        lambda y: run_compute_policy_gradient_loss(advantages, y, "gspo", old, 0.2, mask)[0], (x,))
    # prompt and padding tokens are not part of the sequence ratio: changing them changes nothing
    noisy = torch.where(mask, log_probs, log_probs - 30.0)
    torch.testing.assert_close(run_compute_policy_gradient_loss(advantages, noisy, "gspo", old, 0.2, mask)[0], loss)
    # numerically stable: 400 tokens whose log-ratios are +-60 (a product of ratios is inf * 0), mean 0.05
    n = 400
    lp = torch.zeros(1, n, dtype=torch.float64, requires_grad=True)
    old_big = torch.tensor([[-60.0, 60.0] * (n // 2)], dtype=torch.float64) - 0.05   # log-ratios 60.05, -59.95
    big, _ = run_compute_policy_gradient_loss(torch.tensor([1.0]).double(), lp, "gspo", old_big, 10.0,
                                              torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(big, torch.full((1, n), -math.exp(0.05), dtype=torch.float64))
    big.sum().backward()
    assert torch.isfinite(lp.grad).all()
    numpy_snapshot.assert_match({"loss": loss, "big": big, "big_grad": lp.grad},
                                "test_compute_policy_gradient_loss_off_policy_gspo")


def test_cispo_weight_is_clipped_above_and_detached(batch):
    log_probs, old, advantages, mask = batch
    x = log_probs.clone().requires_grad_(True)
    loss, metadata = run_compute_policy_gradient_loss(advantages, x, "cispo", old, 0.2, mask)
    torch.testing.assert_close(loss, _naive_loss("cispo", advantages, log_probs, old, 0.2, mask))
    loss.sum().backward()
    weight = torch.exp(log_probs - old).clamp(max=1.2)                        # sg(clip(w)): a constant
    torch.testing.assert_close(x.grad, -advantages[:, None] * weight, msg="gradient = -sg(clip(w)) A")
    assert (torch.exp(log_probs - old) < 0.8).any(), "fixture has small ratios: no lower clip in CISPO"


@pytest.mark.parametrize("method", ["none", "noclip", "grpo", "gspo", "cispo"])
def test_every_method_is_reinforce_on_policy(batch, method):
    """pi == pi_old: every ratio is exactly 1, so every method's gradient is REINFORCE's, -A per token."""
    log_probs, _, advantages, mask = batch
    x = log_probs.clone().requires_grad_(True)
    loss, metadata = run_compute_policy_gradient_loss(advantages, x, method, log_probs.clone(), 0.2, mask)
    loss.sum().backward()
    expected = -advantages[:, None].expand(B, T)
    if method == "gspo":  # the sequence ratio spreads each token's gradient over the response: 1/|o| each
        expected = torch.where(mask, -advantages[:, None] * T / mask.sum(-1, keepdim=True), 0.0)
    torch.testing.assert_close(x.grad, expected)
    if method != "none":
        assert float(metadata["clip_fraction"]) == 0.0


def test_clip_fraction_counts_response_tokens_only(batch):
    """A ratio far outside the clip range on prompt and padding tokens must not count."""
    log_probs, old, advantages, mask = batch
    lp = torch.where(mask, old, old + 5.0)                                   # ratio 1 on the response, e^5 off it
    adv = torch.ones(B, dtype=torch.float64)
    for method in ("grpo", "gspo", "cispo"):
        _, metadata = run_compute_policy_gradient_loss(adv, lp, method, old, 0.2, mask)
        assert float(metadata["clip_fraction"]) == 0.0, method
    lp = lp.clone()
    lp[0, 1] = old[0, 1] + 1.0                                               # one response token of 13 clipped
    _, metadata = run_compute_policy_gradient_loss(adv, lp, "grpo", old, 0.2, mask)
    assert float(metadata["clip_fraction"]) == pytest.approx(1 / int(mask.sum()))


def test_advantages_are_detached(batch):
    log_probs, old, advantages, mask = batch
    a = advantages.clone().requires_grad_(True)
    for method in ("none", "grpo", "gspo", "cispo"):
        loss, _ = run_compute_policy_gradient_loss(a, log_probs.clone().requires_grad_(True), method, old, 0.2, mask)
        loss.sum().backward()
        assert a.grad is None, f"{method}: the advantages must be constants"


def test_what_each_method_needs_and_errors(batch):
    log_probs, old, advantages, mask = batch
    assert [needs_old_log_probs(m) for m in ("none", "noclip", "grpo", "gspo", "cispo")] == [False] + [True] * 4
    assert [needs_cliprange(m) for m in ("none", "noclip", "grpo", "gspo", "cispo")] == [False, False] + [True] * 3
    for kwargs in (dict(importance_reweighting_method="ppo"), dict(importance_reweighting_method="grpo"),
                   dict(importance_reweighting_method="grpo", old_log_probs=old),
                   dict(raw_rewards_or_advantages=advantages[:3])):
        with pytest.raises(ValueError):
            run_compute_policy_gradient_loss(**{"raw_rewards_or_advantages": advantages,
                                                "policy_log_probs": log_probs, **kwargs})


@pytest.mark.parametrize("loss_type,method", [("no_baseline", "none"), ("reinforce_with_baseline", "none"),
                                              ("grpo_clip", "grpo"), ("grpo_no_clip", "noclip")])
def test_2025_loss_types_map_onto_the_methods(batch, loss_type, method):
    log_probs, old, advantages, _ = batch
    rewards = torch.rand(B, 1, dtype=torch.float64)
    loss, _ = run_compute_policy_gradient_loss_2025(policy_log_probs=log_probs, loss_type=loss_type,
                                                    raw_rewards=rewards, advantages=advantages[:, None],
                                                    old_log_probs=old, cliprange=0.2)
    weights = rewards[:, 0] if loss_type == "no_baseline" else advantages
    torch.testing.assert_close(loss, _naive_loss(method, weights, log_probs, old, 0.2, torch.ones(B, T)))


# ---------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(0.5)
def test_aggregate_loss_across_microbatch_sequence(numpy_snapshot, batch):
    _, _, _, mask = batch
    per_token = torch.randn(B, T, dtype=torch.float64)
    per_token[~mask] = float("nan")                                          # padding must not leak
    out = run_aggregate_loss_across_microbatch(per_token_policy_gradient_loss=per_token, mask=mask,
                                               loss_normalization="sequence")
    rows = [sum(float(per_token[b, t]) for t in range(T) if mask[b, t]) / int(mask[b].sum()) for b in range(B)]
    assert out.dim() == 0 and float(out) == pytest.approx(sum(rows) / B)
    numpy_snapshot.assert_match(out, "test_aggregate_loss_across_microbatch_sequence")


@pytest.mark.points(0.5)
def test_aggregate_loss_across_microbatch_constant(numpy_snapshot, batch):
    _, _, _, mask = batch
    per_token = torch.randn(B, T, dtype=torch.float64)
    per_token[~mask] = float("nan")
    out = run_aggregate_loss_across_microbatch(per_token_policy_gradient_loss=per_token, mask=mask,
                                               loss_normalization="constant", normalization_constant=17.0)
    total = sum(float(per_token[b, t]) for b in range(B) for t in range(T) if mask[b, t])
    assert out.dim() == 0 and float(out) == pytest.approx(total / 17.0)
    # Dr. GRPO: a token's weight does not depend on its sequence's length
    x = torch.zeros(B, T, dtype=torch.float64, requires_grad=True)
    run_aggregate_loss_across_microbatch(x, mask, "constant", 17.0).backward()
    torch.testing.assert_close(x.grad, mask.double() / 17.0)
    numpy_snapshot.assert_match({"loss": out, "grad": x.grad}, "test_aggregate_loss_across_microbatch_constant")


def test_aggregate_errors(batch):
    _, _, _, mask = batch
    per_token = torch.randn(B, T)
    for kwargs in (dict(loss_normalization="token"), dict(loss_normalization="constant"),
                   dict(loss_normalization="constant", normalization_constant=0.0), dict(mask=mask[:, :3])):
        with pytest.raises(ValueError):
            run_aggregate_loss_across_microbatch(**{"per_token_policy_gradient_loss": per_token, "mask": mask,
                                                    **kwargs})
