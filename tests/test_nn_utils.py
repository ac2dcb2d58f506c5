"""Training-loop parts (CS336 a1): softmax, cross-entropy, SiLU, AdamW, cosine schedule, gradient clipping.

Oracles: torch's own implementations (torch.softmax, F.cross_entropy, F.silu, torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_) and hand-computed schedule values.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cs336_alignment.lm.nn_utils import log_softmax
from tests import adapters

# ---------------------------------------------------------------------------------------------------------
# softmax / log_softmax / silu
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim):
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(adapters.run_softmax(in_features=x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_is_stable_for_huge_inputs():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [0.0, 0.0, 0.0]])
    out = adapters.run_softmax(in_features=x, dim=-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(x.double(), dim=-1).float())
    torch.testing.assert_close(out[1], torch.full((3,), 1 / 3))


def test_log_softmax_matches_torch():
    x = torch.randn(4, 7) * 50
    torch.testing.assert_close(log_softmax(x, dim=-1), torch.log_softmax(x, dim=-1))
    torch.testing.assert_close(log_softmax(x, dim=0), torch.log_softmax(x, dim=0))


def test_silu_matches_torch():
    x = torch.randn(5, 6) * 4
    torch.testing.assert_close(adapters.run_silu(in_features=x), F.silu(x))


# ---------------------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------------------


def test_cross_entropy_matches_torch_2d_and_3d():
    logits = torch.randn(8, 11)
    targets = torch.randint(0, 11, (8,))
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits, targets=targets),
                               F.cross_entropy(logits, targets))
    logits3 = torch.randn(2, 5, 11)
    targets3 = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(adapters.run_cross_entropy(inputs=logits3, targets=targets3),
                               F.cross_entropy(logits3.view(-1, 11), targets3.view(-1)))


def test_cross_entropy_huge_logits():
    logits = torch.randn(6, 9) * 1e4
    targets = torch.randint(0, 9, (6,))
    loss = adapters.run_cross_entropy(inputs=logits, targets=targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))


def test_cross_entropy_hand_value():
    # uniform logits over V classes: loss = log V exactly
    loss = adapters.run_cross_entropy(inputs=torch.zeros(3, 4), targets=torch.tensor([0, 1, 3]))
    assert abs(loss.item() - math.log(4)) < 1e-6


def test_cross_entropy_gradient_matches_torch():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (4,))
    (g_ours,) = torch.autograd.grad(adapters.run_cross_entropy(inputs=logits, targets=targets), logits)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(logits, targets), logits)
    torch.testing.assert_close(g_ours, g_ref)


# ---------------------------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------------------------


def _train(opt_cls, steps: int = 10, **kwargs) -> torch.nn.Module:
    torch.manual_seed(42)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = opt_cls(model.parameters(), **kwargs)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch(weight_decay):
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    ours = _train(adapters.get_adamw_cls(), **kwargs)
    ref = _train(torch.optim.AdamW, **kwargs)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    assert isinstance(adapters.get_adamw_cls()([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


def test_adamw_first_step_by_hand():
    # step 1: m̂ = g, v̂ = g², so θ ← θ(1 − lr·λ) − lr · g / (|g| + eps) = θ(1 − lr·λ) − lr · sign(g)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = adapters.get_adamw_cls()([p], lr=0.1, weight_decay=0.5, eps=1e-12)
    p.grad = torch.tensor([3.0, -0.5])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1]))


def test_adamw_skips_params_without_grad_and_rejects_bad_args():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = adapters.get_adamw_cls()([p, q], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(q.data, torch.ones(2)) and not torch.equal(p.data, torch.ones(2))
    with pytest.raises(ValueError):
        adapters.get_adamw_cls()([p], lr=-1.0)


# ---------------------------------------------------------------------------------------------------------
# cosine schedule
# ---------------------------------------------------------------------------------------------------------


def test_cosine_schedule_hand_values():
    kw = dict(max_learning_rate=1.0, min_learning_rate=0.1, warmup_iters=7, cosine_cycle_iters=21)
    lr = lambda it: adapters.run_get_lr_cosine_schedule(it=it, **kw)
    assert lr(0) == 0.0
    assert abs(lr(3) - 3 / 7) < 1e-12                        # linear warmup
    assert abs(lr(7) - 1.0) < 1e-12                          # peak at the end of warmup
    assert abs(lr(14) - 0.55) < 1e-12                        # halfway: min + (max - min) / 2
    expected_10 = 0.1 + 0.5 * (1 + math.cos(math.pi * 3 / 14)) * 0.9
    assert abs(lr(10) - expected_10) < 1e-12
    assert abs(lr(21) - 0.1) < 1e-12 and lr(22) == 0.1 and lr(1000) == 0.1
    values = [lr(it) for it in range(7, 22)]
    assert all(a >= b for a, b in zip(values, values[1:]))   # monotone decay


def test_cosine_schedule_without_warmup():
    lr = adapters.run_get_lr_cosine_schedule(it=0, max_learning_rate=2.0, min_learning_rate=0.0, warmup_iters=0,
                                             cosine_cycle_iters=10)
    assert lr == 2.0
    with pytest.raises(ValueError):
        adapters.run_get_lr_cosine_schedule(it=0, max_learning_rate=1.0, min_learning_rate=0.0, warmup_iters=5,
                                            cosine_cycle_iters=3)


# ---------------------------------------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------------------------------------


def _params_with_grads(scale: float) -> list[torch.nn.Parameter]:
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.randn(2))]
    for p in params[:2]:  # the last one has no gradient and must be skipped
        p.grad = torch.randn_like(p) * scale
    return params


@pytest.mark.parametrize("scale", [10.0, 1e-3])
def test_clip_gradients_matches_torch(scale):
    ours, ref = _params_with_grads(scale), _params_with_grads(scale)
    before = [p.grad.clone() for p in ours[:2]]
    adapters.run_gradient_clipping(parameters=(p for p in ours), max_l2_norm=1.0)
    torch.nn.utils.clip_grad_norm_([p for p in ref if p.grad is not None], max_norm=1.0)
    for p, q in zip(ours[:2], ref[:2]):
        torch.testing.assert_close(p.grad, q.grad)
    assert ours[2].grad is None
    if scale < 1:  # below the threshold: untouched, bit for bit
        assert all(torch.equal(p.grad, b) for p, b in zip(ours[:2], before))


def test_clip_gradients_returns_pre_clip_norm():
    from cs336_alignment.lm.nn_utils import clip_gradients
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_gradients([p], max_l2_norm=1.0)
    assert abs(norm.item() - 5.0) < 1e-6
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))
