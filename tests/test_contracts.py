"""Promises the writeup makes that no other test checked, each shown to fail on the mistake it is written for.

* The naive policy gradient and GRPO-Clip treat the advantage as a constant: an advantage (or a baseline folded
  into it) that requires grad gets no gradient from the loss (it is detached), and the log-probs get -A (times
  the clipped ratio's derivative).
* The given log-softmax kernels (selective_log_softmax, fused_linear_log_probs) are exact at logits of +-1e4,
  where a log-softmax without the max subtraction overflows to inf / NaN.

Ungraded (the points of parts 4.2 and 2.1 stay as the writeup lists them); each contract is a function of the
implementation, so a planted wrong implementation can be run through the same check and must fail it (the planted
policy losses are one `.detach()` away from the solution: instructor-only, not in the handout).
"""
from __future__ import annotations

import pytest
import torch

from tests.adapters import run_fused_linear_log_probs, run_selective_log_softmax
from tests.adapters_2025 import run_compute_grpo_clip_loss, run_compute_naive_policy_gradient_loss

ADVANTAGES = [[1.0], [-2.0]]                                                     # (B, 1)


# ---------------------------------------------------------------------------------------------------------
# Detached advantages
# ---------------------------------------------------------------------------------------------------------

def _detached_contract(loss_fn) -> None:
    """loss_fn(advantages (B, 1), policy_log_probs (B, T)) -> per-token loss (B, T); at ratio 1 its gradient
    with respect to the log-probs is -A, and none reaches an advantage that requires grad."""
    advantages = torch.tensor(ADVANTAGES, requires_grad=True)
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]], requires_grad=True)
    loss_fn(advantages, log_probs).sum().backward()
    assert advantages.grad is None or not advantages.grad.any(), \
        "the loss sent a gradient into the advantages: detach them (they are constants of the policy gradient)"
    torch.testing.assert_close(log_probs.grad, -torch.tensor(ADVANTAGES).expand(2, 3), msg="d loss / d log-probs")


def _naive(advantages, log_probs):
    return run_compute_naive_policy_gradient_loss(advantages, log_probs)


def _grpo_clip(advantages, log_probs):
    return run_compute_grpo_clip_loss(advantages, log_probs, log_probs.detach(), 0.2)[0]   # ratio 1: unclipped


def test_naive_policy_gradient_detaches_the_advantages():
    _detached_contract(_naive)


def test_grpo_clip_detaches_the_advantages():
    _detached_contract(_grpo_clip)


# BEGIN INSTRUCTOR
@pytest.mark.parametrize("planted", [
    lambda a, lp: -a * lp,                                                                    # naive, not detached
    lambda a, lp: -torch.minimum(torch.exp(lp - lp.detach()) * a,                             # GRPO-Clip, not
                                 torch.clamp(torch.exp(lp - lp.detach()), 0.8, 1.2) * a),     # detached
], ids=["naive", "grpo_clip"])
def test_the_detach_contract_fails_on_an_undetached_advantage(planted):
    with pytest.raises(AssertionError, match="detach them"):
        _detached_contract(planted)
# END INSTRUCTOR


# ---------------------------------------------------------------------------------------------------------
# The given kernels at logits of +-1e4
# ---------------------------------------------------------------------------------------------------------

def _large_logits():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, generator=g) * 1e4 / 3                    # (N, d)
    weight = torch.sign(torch.randn(7, 3, generator=g))                  # (V, d): logits = hidden @ weight.T ~ 1e4
    labels = torch.randint(0, 7, (5,), generator=g)
    return hidden, weight, labels


def _large_logits_contract(log_probs_of) -> None:
    """log_probs_of(hidden, weight, labels) at |logits| ~ 1e4 equals log_softmax in float64: finite, exact."""
    hidden, weight, labels = _large_logits()
    logits = hidden @ weight.T
    assert logits.abs().max() > 5e3
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels[:, None])[:, 0]
    out = log_probs_of(hidden, weight, labels)
    assert torch.isfinite(out).all(), "log-probs at logits of 1e4 are not finite: subtract the max first"
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-2)


def test_selective_log_softmax_at_large_logits():
    _large_logits_contract(lambda h, w, y: run_selective_log_softmax(h @ w.T, y))


def test_fused_linear_log_probs_at_large_logits():
    def fused(h, w, y):
        out = run_fused_linear_log_probs(h, w, y)
        return out[0] if isinstance(out, tuple) else out
    _large_logits_contract(fused)


def test_the_large_logits_contract_fails_without_the_max_subtraction():
    def no_max(h, w, y):
        z = h @ w.T
        return z.gather(-1, y[:, None])[:, 0] - torch.log(torch.exp(z).sum(-1))
    with pytest.raises(AssertionError, match="subtract the max"):
        _large_logits_contract(no_max)
