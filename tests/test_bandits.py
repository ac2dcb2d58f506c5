"""The CS336 (2026) derivations (cs336_alignment/course/bandits.py): each closed form against a check that does not use
it — Monte Carlo within 4 standard errors (fixed seeds), exact enumeration of every outcome within 1e-12, autograd —
and the properties the written answers rely on. Instructor-only like the module (the answers to written problems).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from cs336_alignment.course import bandits as bd
THETAS = (-1.0, 0.5, 2.0)


def _sigmoid(theta: float) -> float:
    return 1 / (1 + math.exp(-theta))


# ---- baseline_calcs

@pytest.mark.parametrize("theta", THETAS)
def test_score_is_the_derivative_of_log_pi(theta):
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    p = torch.sigmoid(th)
    for action, log_pi in ((1, torch.log(p)), (0, torch.log(1 - p))):
        (expected,) = torch.autograd.grad(log_pi, th, retain_graph=True)
        assert bd.score(torch.tensor(action), p.item()).item() == pytest.approx(expected.item(), abs=1e-15)


@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("baseline", ["zero", "value", "optimal", "two"])
def test_estimator_moments_equal_the_two_action_sum(theta, baseline):
    """E[g] and Var[g] written the naive way: sum over the two actions of pi(a) g(a) and pi(a) g(a)^2."""
    p = _sigmoid(theta)
    b = {"zero": 0.0, "value": p, "optimal": 1 - p, "two": 2.0}[baseline]
    g = {1: (1 - b) * (1 - p), 0: (0 - b) * (0 - p)}
    mean = p * g[1] + (1 - p) * g[0]
    var = p * g[1] ** 2 + (1 - p) * g[0] ** 2 - mean ** 2
    got_mean, got_var = bd.estimator_moments(p, b)
    assert got_mean == pytest.approx(mean, abs=1e-15) and got_var == pytest.approx(var, abs=1e-15)
    assert got_mean == pytest.approx(p * (1 - p), abs=1e-15)  # unbiased for every constant b: dp/dtheta


def test_estimator_variance_hand_values():
    """p = 1/2, b = 0: g is 1/4 or 0 with probability 1/2 each, variance 1/16; special cases of the formula."""
    assert bd.estimator_moments(0.5, 0.0) == (0.25, 0.0625)
    for p in (0.1, 0.3, 0.8):
        assert bd.estimator_moments(p, 0.0)[1] == pytest.approx(p * (1 - p) ** 3, abs=1e-15)
        assert bd.estimator_moments(p, p)[1] == pytest.approx(p * (1 - p) * (1 - 2 * p) ** 2, abs=1e-15)
        assert bd.estimator_moments(p, 1 - p)[1] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("baseline", ["zero", "value"])
def test_estimator_moments_match_monte_carlo(theta, baseline):
    p = _sigmoid(theta)
    b = 0.0 if baseline == "zero" else p
    mean, var = bd.estimator_moments(p, b)
    mc = bd.estimator_monte_carlo(theta, b, n=200_000, seed=1)
    assert abs(mc["mean"] - mean) < 4 * mc["se_mean"]
    assert abs(mc["var"] - var) < 4 * mc["se_var"]


@pytest.mark.parametrize("theta", THETAS)
def test_optimal_baseline_gives_every_sample_the_same_value(theta):
    p = _sigmoid(theta)
    mc = bd.estimator_monte_carlo(theta, bd.optimal_baseline(p), n=10_000, seed=2)
    assert mc["spread"] < 1e-12 and mc["mean"] == pytest.approx(p * (1 - p), abs=1e-12)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_optimal_baseline_minimises_the_variance(p):
    best = bd.estimator_moments(p, bd.optimal_baseline(p))[1]
    for b in torch.linspace(-2, 3, 501).tolist():
        assert best <= bd.estimator_moments(p, b)[1] + 1e-15


def test_value_baseline_beats_none_below_two_thirds():
    for p in torch.linspace(0.01, 0.99, 99).tolist():
        better = bd.estimator_moments(p, p)[1] < bd.estimator_moments(p, 0.0)[1]
        assert better == (p < 2 / 3), p


def test_estimator_moments_reject_a_deterministic_policy():
    with pytest.raises(ValueError, match="p must lie in"):
        bd.estimator_moments(1.0)


# ---- derive_difficulty_reweightings

def test_group_advantages_hand_example():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)      # mean 1/2, unbiased std sqrt(1/3)
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(bd.group_advantages(r, "mean", "none"), 0.5 * sign)
    assert torch.allclose(bd.group_advantages(r, "mean", "mean", eps=0.0), sign)
    assert torch.allclose(bd.group_advantages(r, "mean", "std", eps=0.0), 0.5 * math.sqrt(3) * sign)
    assert torch.allclose(bd.group_advantages(r, "none", "mean", eps=0.0), 2 * r)
    with pytest.raises(ValueError, match="normalizer"):
        bd.group_advantages(r, "mean", "max")


@pytest.mark.parametrize("K, M, G", [(3, 3, 4), (3, 2, 8)])
@pytest.mark.parametrize("baseline", bd.BASELINES)
@pytest.mark.parametrize("normalizer", bd.NORMALIZERS)
def test_reweighting_equals_the_enumerated_expected_gradient(K, M, G, baseline, normalizer):
    """Every M^G response tuple of every prompt, weighted by its probability: E[grad] = sum_k w(p_k) grad p_k."""
    theta, correct = bd.tabular_policy(K, M, seed=M)
    exact = bd.expected_group_gradient(theta, correct, G, baseline, normalizer)
    closed = bd.reweighted_gradient(theta, correct, G, baseline, normalizer)
    assert (exact - closed).abs().max() <= 1e-12 * closed.abs().max()
    assert closed.abs().max() > 0.01


def _binomial(G, p):
    return [math.comb(G, n) * p ** n * (1 - p) ** (G - n) for n in range(G + 1)]


@pytest.mark.parametrize("G", [2, 5, 8, 16])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_reweighting_closed_forms(G, p):
    """eps = 0: none -> (G-1)/G (1 with baseline none), mean -> (1 - (1-p)^(G-1))/p,
    std -> sqrt(G(G-1)) E[sqrt(n(G-n))] / (G^2 p(1-p)) with the expectation summed by math.comb."""
    w = {z: bd.reweighting(p, G, z, "mean", eps=0.0).item() for z in bd.NORMALIZERS}
    assert w["none"] == pytest.approx((G - 1) / G, rel=1e-12)
    assert bd.reweighting(p, G, "none", "none").item() == pytest.approx(1.0, rel=1e-12)   # w_none == 1
    assert w["mean"] == pytest.approx((1 - (1 - p) ** (G - 1)) / p, rel=1e-12)
    e_sqrt = sum(q * math.sqrt(n * (G - n)) for n, q in enumerate(_binomial(G, p)))
    assert w["std"] == pytest.approx(math.sqrt(G * (G - 1)) * e_sqrt / (G * G * p * (1 - p)), rel=1e-12)


@pytest.mark.parametrize("normalizer", bd.NORMALIZERS)
def test_reweighting_tends_to_its_large_group_limit(normalizer):
    p = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    big = bd.reweighting(p, 4000, normalizer, "mean", eps=0.0)
    assert torch.allclose(big, bd.reweighting_limit(p, normalizer), rtol=2e-3)
    hand = {"std": [1 / 0.3, 2.0, 1 / 0.3], "mean": [10.0, 2.0, 1 / 0.9], "none": [1.0, 1.0, 1.0]}[normalizer]
    assert torch.allclose(bd.reweighting_limit(p, normalizer), torch.tensor(hand, dtype=torch.float64))


def test_std_weight_is_symmetric_and_mean_weight_favours_hard_prompts():
    p = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    w_std = bd.reweighting(p, 8, "std")
    assert torch.allclose(w_std, w_std.flip(0), rtol=1e-12)          # p and 1 - p weigh the same
    assert (w_std[1:10] < w_std[:9]).all()                            # smallest at p = 1/2
    assert (bd.reweighting(p, 8, "mean").diff() < 0).all()            # falls with p: hard prompts weigh most


def test_reweighting_rejects_a_group_of_one():
    with pytest.raises(ValueError, match="G >= 2"):
        bd.reweighting(0.5, 1, "std")


# ---- think_about_rft

@pytest.mark.parametrize("G", [2, 4])
def test_rft_is_dr_grpo_without_a_baseline(G):
    theta, correct = bd.tabular_policy(3, 3, seed=1)
    rft = bd.expected_group_gradient(theta, correct, G, rft="constant")
    assert torch.allclose(rft, bd.expected_group_gradient(theta, correct, G, "none", "none"), rtol=0, atol=1e-12)
    dr_mean = bd.expected_group_gradient(theta, correct, G, "mean", "none")
    assert torch.allclose(rft * (G - 1) / G, dr_mean, rtol=0, atol=1e-12)      # a constant, the same for all k
    th = theta.clone().requires_grad_(True)
    (grad_sum_p,) = torch.autograd.grad(bd.success_probability(th, correct).sum(), th)
    assert torch.allclose(rft, grad_sum_p, rtol=0, atol=1e-12)                  # the policy gradient of sum_k p_k


def test_rft_averaged_per_prompt_reweights_by_difficulty():
    G = 4
    theta, correct = bd.tabular_policy(3, 3, seed=1)
    exact = bd.expected_group_gradient(theta, correct, G, rft="per_prompt")
    th = theta.clone().requires_grad_(True)
    p = bd.success_probability(th, correct)
    (closed,) = torch.autograd.grad((bd.rft_reweighting(p.detach(), G, "per_prompt") * p).sum(), th)
    assert torch.allclose(exact, closed, rtol=0, atol=1e-12)
    assert bd.rft_reweighting(0.2, G, "per_prompt").item() == pytest.approx((1 - 0.8 ** G) / 0.2, rel=1e-12)


# ---- derive_surrogate_objectives

@pytest.mark.parametrize("cliprange", [None, 0.2])
def test_surrogates_have_the_policy_gradient_at_pi_old(cliprange):
    g = bd.surrogate_gradients(cliprange=cliprange, offset=0.0)
    assert g["pg"].abs().max() > 0.01
    for kind in ("token", "sequence"):
        assert torch.allclose(g[kind], g["pg"], rtol=0, atol=1e-12), kind
    assert torch.allclose(g["product"], g["pg_sum"], rtol=0, atol=1e-12)


def test_surrogates_differ_away_from_pi_old():
    """The equality is a property of rho = 1, not an identity: off policy the three gradients differ."""
    g = bd.surrogate_gradients(cliprange=None, offset=0.5)
    assert (g["token"] - g["sequence"]).abs().max() > 1e-3
    assert (g["token"] - g["pg"]).abs().max() > 1e-3


def test_only_the_full_sequence_ratio_is_unbiased_off_policy():
    g = bd.exact_off_policy_gradients(offset=0.5)
    scale = g["true"].abs().max()
    assert (g["product"] - g["true"]).abs().max() <= 1e-12 * scale
    for kind in ("token", "sequence"):
        assert (g[kind] - g["true"]).abs().max() > 0.05 * scale, kind


def test_surrogate_rejects_an_unknown_kind():
    x = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="kind must be"):
        bd.surrogate(x, x, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2), "pairwise")


# ---- the command line (the answer key's check)

def test_command_writes_its_checks(tmp_path, capsys):
    out = tmp_path / "rft.json"
    assert bd.main(["think_about_rft", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"think_about_rft/rft_vs_drgrpo_none", "think_about_rft/rft_times_ratio_vs_drgrpo_mean",
                            "think_about_rft/rft_per_prompt_vs_closed_form"}
    assert max(metrics.values()) < 1e-12
    assert "think_about_rft" in capsys.readouterr().out
