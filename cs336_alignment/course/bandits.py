"""The CS336 (2026) derivations on bandits small enough to solve exactly, each closed form beside a check that
does not use it (Monte Carlo, enumeration of every outcome, or autograd). Reference material for the written
problems baseline_calcs, derive_difficulty_reweightings, think_about_rft and derive_surrogate_objectives: it holds
their answers, so the student handout leaves it out.

    python -m cs336_alignment.course.bandits all [--out FILE.json]     # every derivation: closed form vs check

Everything is float64. Sources: REINFORCE and its baselines (Williams 1992; Greensmith, Bartlett & Baxter 2004,
"Variance reduction techniques for gradient estimates in RL", the optimal constant baseline); GRPO's group
normalisation (Shao et al. 2024, DeepSeekMath, §4.1.2); Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like
training: a critical perspective"); MaxRL's mean normaliser, as CS336's 2026 assignment 5 states it; RFT (Yuan et al.
2023, "Scaling relationship on learning mathematical reasoning with large language models"); GRPO's token-level and
GSPO's sequence-level importance ratios (Shao et al. 2024, eq. 3; Zheng et al. 2025, "Group sequence policy
optimization").
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

NORMALIZERS = ("std", "mean", "none")
BASELINES = ("mean", "none")


# ---------------------------------------------------------------------------------------------------------
# baseline_calcs: the two-action bandit, p = sigmoid(theta), r = 1{A = 1}, g = (r - b) d/dtheta log pi(A)
# ---------------------------------------------------------------------------------------------------------

def score(action: Tensor, p: float) -> Tensor:
    """d/dtheta log pi(A) for pi(A = 1) = p = sigmoid(theta): 1 - p if A = 1, -p if A = 0, i.e. A - p.

    action: 0/1 tensor of any shape, float64; returns the same shape. Check: autograd (tests)."""
    return action.to(torch.float64) - p


def estimator_moments(p: float, b: float = 0.0) -> tuple[float, float]:
    """Exact (mean, variance) of g = (1{A=1} - b)(A - p), A ~ Bernoulli(p), for a constant baseline b.

    E[g] = p(1 - p) = dp/dtheta for every b (a constant baseline adds no bias, since E[A - p] = 0);
    Var[g] = p(1 - p)[(1 - p)(1 - b)^2 + p b^2 - p(1 - p)], which is p(1 - p)^3 at b = 0, p(1 - p)(1 - 2p)^2 at
    b = p, and 0 at the optimal b* = 1 - p (`optimal_baseline`). Raises ValueError unless 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    mean = p * (1 - p)
    var = p * (1 - p) * ((1 - p) * (1 - b) ** 2 + p * b * b - p * (1 - p))
    return mean, var


def optimal_baseline(p: float) -> float:
    """The constant b minimising Var[g]: b* = E[r s^2] / E[s^2] = p(1 - p)^2 / (p(1 - p)) = 1 - p, s = A - p.

    With it g = p(1 - p) for both actions: a zero-variance estimator (possible only because there are two
    actions). Not the value baseline b = E[r] = p, which is better than none only for p < 2/3."""
    return 1.0 - p


def estimator_monte_carlo(theta: float, b: float, n: int, seed: int = 0) -> dict[str, float]:
    """n samples of g = (r - b) d/dtheta log pi(A) with the score taken by autograd (not `score`): the sample
    mean and variance of g, the spread max(g) - min(g), and the standard errors of mean and variance (se_var from the sample fourth central moment,
    sqrt((m4 - var^2 (n - 3)/(n - 1)) / n)). Independent of `estimator_moments`."""
    gen = torch.Generator().manual_seed(seed)
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    p = torch.sigmoid(th)
    (d_log_p1,) = torch.autograd.grad(torch.log(p), th, retain_graph=True)
    (d_log_p0,) = torch.autograd.grad(torch.log1p(-p), th)
    actions = torch.bernoulli(p.detach().expand(n), generator=gen)
    g = (actions - b) * torch.where(actions == 1, d_log_p1, d_log_p0)
    mean, var = g.mean(), g.var(unbiased=True)
    m4 = ((g - mean) ** 4).mean().item()
    return {"mean": mean.item(), "var": var.item(), "spread": (g.max() - g.min()).item(),
            "se_mean": math.sqrt(var.item() / n),
            "se_var": math.sqrt(max(m4 - var.item() ** 2 * (n - 3) / (n - 1), 0.0) / n)}


# ---------------------------------------------------------------------------------------------------------
# derive_difficulty_reweightings: K prompts, G samples each, binary reward; E[gradient] = sum_k w(p_k) grad p_k
# ---------------------------------------------------------------------------------------------------------

def group_advantages(rewards: Tensor, baseline: str = "mean", normalizer: str = "std", eps: float = 1e-6) -> Tensor:
    """Advantages of one group, written the naive way: (r - mean(r) or 0) / (std(r) + eps | mean(r) + eps | 1).

    rewards: (..., G) float64; std is the unbiased one (torch's default), as in GRPO and the course's contract.
    Returns (..., G). Raises ValueError on an unknown baseline or normaliser."""
    if baseline not in BASELINES or normalizer not in NORMALIZERS:
        raise ValueError(f"baseline must be one of {BASELINES} and normalizer one of {NORMALIZERS}, "
                         f"got {baseline!r}, {normalizer!r}")
    centred = rewards - rewards.mean(-1, keepdim=True) if baseline == "mean" else rewards
    if normalizer == "std":
        return centred / (rewards.std(-1, keepdim=True) + eps)
    if normalizer == "mean":
        return centred / (rewards.mean(-1, keepdim=True) + eps)
    return centred


def reweighting(p: Tensor | float, G: int, normalizer: str, baseline: str = "mean", eps: float = 1e-6) -> Tensor:
    """w(p), exact for group size G: E[(1/G) sum_i A_i grad log pi(y_i)] = w(p) grad p for a prompt the policy
    solves with probability p.

    Derivation: given its reward, E[grad log pi(y) | r = 1] = grad p / p and E[grad log pi(y) | r = 0] =
    -grad p / (1 - p), whatever the responses are; the advantages depend only on the number of successes n ~
    Binomial(G, p), and sum_i A_i s_i = [n/p - beta (n/G)(n/p - (G - n)/(1 - p))] / D_n with beta = 1 for the
    mean baseline, 0 for none, and D_n = std_n + eps, n/G + eps or 1. So w(p) = (1/G) E_n[...], a sum of G + 1
    terms. Closed forms (eps = 0, baseline mean): none -> (G - 1)/G; mean -> (1 - (1 - p)^(G-1)) / p;
    std -> sqrt(G(G - 1)) E[sqrt(n(G - n))] / (G^2 p(1 - p)). Large G: `reweighting_limit`.
    p: float or tensor in (0, 1), any shape; returns float64 of that shape. Raises ValueError for G < 2."""
    if G < 2:
        raise ValueError(f"a group needs G >= 2 samples, got {G}")
    p = torch.as_tensor(p, dtype=torch.float64)
    n = torch.arange(G + 1, dtype=torch.float64)
    log_binom = torch.lgamma(torch.tensor(G + 1.0, dtype=torch.float64)) - torch.lgamma(n + 1) - torch.lgamma(G - n + 1)
    pmf = torch.exp(log_binom + n * torch.log(p[..., None]) + (G - n) * torch.log1p(-p[..., None]))  # (..., G+1)
    beta = 1.0 if baseline == "mean" else 0.0
    pp = p[..., None]
    total = n / pp - beta * (n / G) * (n / pp - (G - n) / (1 - pp))
    if normalizer == "std":
        denominator = torch.sqrt(n * (G - n) / (G * (G - 1))) + eps
    elif normalizer == "mean":
        denominator = n / G + eps
    elif normalizer == "none":
        denominator = torch.ones_like(n)
    else:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    term = torch.where(total == 0, 0.0, total / denominator)   # a group with no signal adds 0 (also at eps = 0)
    return (pmf * term).sum(-1) / G


def reweighting_limit(p: Tensor | float, normalizer: str) -> Tensor:
    """w(p) as G -> infinity (eps -> 0, baseline mean): std -> 1/sqrt(p(1 - p)) (the group std concentrates at
    sqrt(p(1 - p))); mean -> 1/p (MaxRL: sum_k grad p_k / p_k = grad sum_k log p_k, the likelihood's gradient);
    none -> 1 (the plain policy gradient, grad sum_k p_k). Returns float64 of p's shape."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if normalizer == "std":
        return 1.0 / torch.sqrt(p * (1 - p))
    if normalizer == "mean":
        return 1.0 / p
    if normalizer == "none":
        return torch.ones_like(p)
    raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def tabular_policy(K: int = 3, M: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A K-prompt bandit: logits theta (K, M) float64 (softmax over M responses per prompt) and a bool mask
    correct (K, M) of the responses that earn reward 1 (at least one right and one wrong per prompt)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, M, generator=gen, dtype=torch.float64)
    correct = torch.zeros(K, M, dtype=torch.bool)
    for k in range(K):
        correct[k, : 1 + k % (M - 1)] = True
    return theta, correct


def success_probability(theta: Tensor, correct: Tensor) -> Tensor:
    """p_k = sum over the correct responses of softmax(theta_k): (K, M), (K, M) bool -> (K,)."""
    return (torch.softmax(theta, -1) * correct).sum(-1)


def expected_group_gradient(theta: Tensor, correct: Tensor, G: int, baseline: str = "mean",
                            normalizer: str = "std", eps: float = 1e-6, rft: str | None = None) -> Tensor:
    """The exact expected gradient of the group estimator sum_k (1/G) sum_i A_i grad log pi(y_ki | x_k), by
    enumerating all M^G response tuples of each prompt (their probabilities held fixed, the advantages computed
    by `group_advantages`, the gradient by autograd).

    rft="constant" is RFT instead (no advantages): the SFT loss -sum over the group's correct samples of
    log pi, divided by the constant G; rft="per_prompt" divides it by the number of correct samples n_k of the
    group instead (the SFT mean over the kept samples; a group with none adds nothing).
    theta (K, M), correct (K, M) bool -> (K, M). Raises ValueError on an unknown rft mode."""
    if rft not in (None, "constant", "per_prompt"):
        raise ValueError(f"rft must be None, 'constant' or 'per_prompt', got {rft!r}")
    theta = theta.detach().clone().requires_grad_(True)
    log_pi = torch.log_softmax(theta, -1)
    M = theta.shape[-1]
    tuples = torch.tensor(list(itertools.product(range(M), repeat=G)))                 # (M^G, G)
    objective = theta.new_zeros(())
    for k in range(theta.shape[0]):
        prob = log_pi[k, tuples].sum(-1).detach().exp()                               # (M^G,)
        rewards = correct[k, tuples].to(torch.float64)                                 # (M^G, G)
        token_lp = log_pi[k, tuples]                                                  # (M^G, G)
        if rft is None:
            adv = group_advantages(rewards, baseline, normalizer, eps)
            objective = objective + (prob * (adv * token_lp).sum(-1)).sum() / G
            continue
        for t in range(len(tuples)):                                                   # SFT on the kept samples
            kept = correct[k, tuples[t]]
            if kept.any():
                divisor = G if rft == "constant" else int(kept.sum())
                objective = objective + prob[t] * token_lp[t][kept].sum() / divisor
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def reweighted_gradient(theta: Tensor, correct: Tensor, G: int, baseline: str = "mean", normalizer: str = "std",
                        eps: float = 1e-6) -> Tensor:
    """sum_k w(p_k) grad p_k with w from `reweighting` and grad p_k by autograd: (K, M) -> (K, M)."""
    theta = theta.detach().clone().requires_grad_(True)
    p = success_probability(theta, correct)
    w = reweighting(p.detach(), G, normalizer, baseline, eps)
    (grad,) = torch.autograd.grad((w * p).sum(), theta)
    return grad


# ---------------------------------------------------------------------------------------------------------
# think_about_rft: RFT (SFT on the correct samples, divided by a constant) against on-policy Dr. GRPO
# ---------------------------------------------------------------------------------------------------------

def rft_reweighting(p: Tensor | float, G: int, normalization: str = "constant") -> Tensor:
    """w(p) of RFT with G samples per prompt: E[(1/C) sum_{i: r_i = 1} grad log pi(y_i)] = w(p) grad p.

    constant (C = G): sum_i r_i grad log pi(y_i) is, sample by sample, Dr. GRPO's estimator with baseline none
    and no normaliser (A_i = r_i), so w = E[n]/(G p) = 1: the policy gradient of sum_k p_k. Dr. GRPO with the
    mean baseline has w = (G - 1)/G (`reweighting`): the same direction, scaled by a constant that depends on G
    only. per_prompt (C = n, the kept count): E[1{n >= 1} (1/n) n grad p / p] = (1 - (1 - p)^G) / p, a
    difficulty reweighting ~ 1/p like MaxRL's. Returns float64 of p's shape."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if normalization == "constant":
        return torch.ones_like(p)
    if normalization == "per_prompt":
        return -torch.expm1(G * torch.log1p(-p)) / p
    raise ValueError(f"normalization must be 'constant' or 'per_prompt', got {normalization!r}")


# ---------------------------------------------------------------------------------------------------------
# derive_surrogate_objectives: token-level (GRPO) and sequence-level (GSPO) importance-weighted surrogates
# ---------------------------------------------------------------------------------------------------------

def bigram_log_probs(theta: Tensor, seqs: Tensor) -> Tensor:
    """Per-token log pi(y_t | y_{t-1}) of a bigram policy: theta (V + 1, V) logits (row V is the start state),
    seqs (N, T) long in [0, V) -> (N, T) float64."""
    V = theta.shape[1]
    prev = torch.cat([torch.full_like(seqs[:, :1], V), seqs[:, :-1]], dim=1)
    return torch.log_softmax(theta, -1)[prev, seqs]


def surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, kind: str,
              cliprange: float | None = None) -> Tensor:
    """The batch's surrogate objective (to maximise), written the naive way.

    token:    (1/N) sum_j (1/|y_j|) sum_t A_j rho_jt,  rho_jt = pi(y_jt | .) / pi_old(y_jt | .)   (GRPO)
    sequence: (1/N) sum_j A_j s_j, s_j = (prod_t rho_jt)^(1/|y_j|)                              (GSPO)
    product:  (1/N) sum_j A_j prod_t rho_jt, the full sequence ratio pi(y_j) / pi_old(y_j) (unbiased IS)
    pg:       (1/N) sum_j (1/|y_j|) sum_t A_j log pi(y_jt | .)  (the on-policy policy-gradient loss, negated)
    With cliprange, rho (token) or s (sequence) enters as min(rho A, clip(rho, 1 - eps, 1 + eps) A).
    log_probs, old_log_probs, mask: (N, T); advantages (N,); returns a 0-d float64."""
    length = mask.sum(-1)
    log_ratio = (log_probs - old_log_probs) * mask

    def clipped(ratio: Tensor, adv: Tensor) -> Tensor:
        if cliprange is None:
            return ratio * adv
        return torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * adv)

    if kind == "token":
        per_seq = (clipped(log_ratio.exp(), advantages[:, None]) * mask).sum(-1) / length
    elif kind == "sequence":
        per_seq = clipped((log_ratio.sum(-1) / length).exp(), advantages)
    elif kind == "product":
        per_seq = clipped(log_ratio.sum(-1).exp(), advantages)
    elif kind == "pg":
        per_seq = advantages * (log_probs * mask).sum(-1) / length
    else:
        raise ValueError(f"kind must be token, sequence, product or pg, got {kind!r}")
    return per_seq.mean()


def surrogate_gradients(V: int = 3, T: int = 4, N: int = 6, seed: int = 0, cliprange: float | None = 0.2,
                        offset: float = 0.0) -> dict[str, Tensor]:
    """Gradients (autograd, float64) of the four surrogates at theta = theta_old + offset * noise for a random
    bigram policy and N sampled sequences of random lengths 1..T with random advantages: {kind: (V + 1, V)}.
    At offset 0 the token, sequence and product ones equal the on-policy gradients: grad rho_t = grad log pi_t
    at rho = 1, grad s = (1/|y|) sum_t grad log pi_t, grad prod_t rho_t = sum_t grad log pi_t."""
    gen = torch.Generator().manual_seed(seed)
    theta_old = torch.randn(V + 1, V, generator=gen, dtype=torch.float64)
    theta = (theta_old + offset * torch.randn(V + 1, V, generator=gen, dtype=torch.float64)).requires_grad_(True)
    seqs = torch.randint(0, V, (N, T), generator=gen)
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (N, 1), generator=gen)).to(torch.float64)
    advantages = torch.randn(N, generator=gen, dtype=torch.float64)
    old = bigram_log_probs(theta_old, seqs)
    out = {}
    for kind in ("token", "sequence", "product", "pg"):
        (out[kind],) = torch.autograd.grad(surrogate(bigram_log_probs(theta, seqs), old, advantages, mask, kind,
                                                     cliprange), theta)
    out["pg_sum"] = torch.autograd.grad((advantages * (bigram_log_probs(theta, seqs) * mask).sum(-1)).mean(),
                                        theta)[0]
    return out


def exact_off_policy_gradients(V: int = 2, T: int = 3, offset: float = 0.5, seed: int = 0) -> dict[str, Tensor]:
    """Enumerate all V^T sequences: the exact expected gradient under pi_old of the token, sequence and product
    surrogates with A(y) = r(y) (a random reward per sequence), and the true grad J(pi) = grad sum_y pi(y) r(y),
    at pi != pi_old. Only the product (full-sequence) ratio is unbiased: E_old[prod_t rho_t r] = J(pi) exactly."""
    gen = torch.Generator().manual_seed(seed)
    theta_old = torch.randn(V + 1, V, generator=gen, dtype=torch.float64)
    theta = (theta_old + offset * torch.randn(V + 1, V, generator=gen, dtype=torch.float64)).requires_grad_(True)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=T)))
    reward = torch.rand(len(seqs), generator=gen, dtype=torch.float64)
    mask = torch.ones(seqs.shape, dtype=torch.float64)
    old = bigram_log_probs(theta_old, seqs)
    p_old = old.sum(-1).exp()
    out = {"true": torch.autograd.grad((bigram_log_probs(theta, seqs).sum(-1).exp() * reward).sum(), theta)[0]}
    for kind in ("token", "sequence", "product"):
        # surrogate() averages over the N = V^T rows; weighting row y by N p_old(y) takes E_{y ~ pi_old}
        weighted = surrogate(bigram_log_probs(theta, seqs), old, reward * p_old * len(seqs), mask, kind)
        out[kind] = torch.autograd.grad(weighted, theta)[0]
    return out


# ---------------------------------------------------------------------------------------------------------
# The command line: each derivation's closed form against its check, printed, and returned as flat metrics
# ---------------------------------------------------------------------------------------------------------

def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def report_baseline_calcs(n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Exact mean and variance of g at three thetas and three baselines (0, p, 1 - p) against n Monte-Carlo
    samples; returns the closed forms and the largest |z| (difference over its standard error). Where the
    closed-form variance is 0 the check is exact instead: every sample equals E[g] (spread and error < 1e-12)."""
    print(f"baseline_calcs: g = (r - b) dlog pi(A)/dtheta, p = sigmoid(theta); closed form vs {n:,} samples")
    print(f"{'theta':>6} {'p':>6} {'b':>4} {'E[g]':>8} {'MC':>8} {'Var[g]':>9} {'MC':>9}  |z| of mean, var")
    metrics, z_max, exact_err = {}, 0.0, 0.0
    for i, theta in enumerate((-1.0, 0.5, 2.0)):
        p = 1 / (1 + math.exp(-theta))
        for name, b in (("0", 0.0), ("p", p), ("1-p", optimal_baseline(p))):
            mean, var = estimator_moments(p, b)
            mc = estimator_monte_carlo(theta, b, n, seed + i)
            if var > 1e-12:
                z = (abs(mc["mean"] - mean) / mc["se_mean"], abs(mc["var"] - var) / mc["se_var"])
                z_max, shown = max(z_max, *z), f"{z[0]:5.2f} {z[1]:5.2f}"
            else:
                exact_err = max(exact_err, mc["spread"], abs(mc["mean"] - mean))
                shown = "exact: every sample = E[g]"
            print(f"{theta:6.2f} {p:6.3f} {name:>4} {mean:8.5f} {mc['mean']:8.5f} {var:9.6f} {mc['var']:9.6f}  {shown}")
            metrics[f"var_theta{theta:g}_b{name}"] = var
    metrics.update(max_abs_z=z_max, zero_variance_max_err=exact_err)
    print(f"largest |z| = {z_max:.2f}; the zero-variance rows: largest |g - E[g]| = {exact_err:.1e}")
    return metrics


def report_difficulty_reweightings(G: int = 8, eps: float = 1e-6) -> dict[str, float]:
    """w(p) for each normaliser at group size G and in the limit, and the enumeration check: the largest
    |E[group gradient] - sum_k w(p_k) grad p_k| / max |sum_k w(p_k) grad p_k| over a 3-prompt, 3-response bandit (G = 4) and a 3-prompt,
    2-response one (G = G), for every baseline x normaliser."""
    ps = torch.tensor([0.05, 0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    print(f"derive_difficulty_reweightings: E[grad] = sum_k w(p_k) grad p_k; w at G = {G} (exact) and G -> inf")
    print(f"{'p':>6}" + "".join(f"{f'{z} G={G}':>12}{f'{z} lim':>11}" for z in NORMALIZERS))
    metrics: dict[str, float] = {}
    finite = {z: reweighting(ps, G, z, "mean", eps) for z in NORMALIZERS}
    for j, p in enumerate(ps.tolist()):
        row = "".join(f"{finite[z][j].item():12.4f}{reweighting_limit(p, z).item():11.4f}" for z in NORMALIZERS)
        print(f"{p:6.2f}{row}")
        for z in NORMALIZERS:
            metrics[f"w_{z}_G{G}_p{p:g}"] = finite[z][j].item()
    err = 0.0
    for (K, M, g) in ((3, 3, 4), (3, 2, G)):
        theta, correct = tabular_policy(K, M, seed=M)
        for baseline in BASELINES:
            for z in NORMALIZERS:
                closed = reweighted_gradient(theta, correct, g, baseline, z, eps)
                err = max(err, _max_diff(expected_group_gradient(theta, correct, g, baseline, z, eps), closed)
                          / closed.abs().max().item())
    metrics["max_rel_err_vs_enumeration"] = err
    print(f"enumeration of every group (M^G tuples) vs sum_k w(p_k) grad p_k, every baseline x normaliser: "
          f"largest relative difference {err:.1e}")
    return metrics


def report_rft(G: int = 4) -> dict[str, float]:
    """RFT's exact expected gradient against Dr. GRPO's (baseline none and mean, no normaliser) and against
    the closed forms, on a 3-prompt, 3-response bandit."""
    theta, correct = tabular_policy(3, 3, seed=1)
    rft = expected_group_gradient(theta, correct, G, rft="constant")
    dr_none = expected_group_gradient(theta, correct, G, "none", "none")
    dr_mean = expected_group_gradient(theta, correct, G, "mean", "none")
    rft_prompt = expected_group_gradient(theta, correct, G, rft="per_prompt")
    th = theta.clone().requires_grad_(True)
    p = success_probability(th, correct)
    grad_p = [torch.autograd.grad(p[k], th, retain_graph=True)[0] for k in range(len(p))]
    closed = sum(rft_reweighting(p[k].detach(), G, "per_prompt") * grad_p[k] for k in range(len(p)))
    metrics = {"rft_vs_drgrpo_none": _max_diff(rft, dr_none),
               "rft_times_ratio_vs_drgrpo_mean": _max_diff(rft * (G - 1) / G, dr_mean),
               "rft_per_prompt_vs_closed_form": _max_diff(rft_prompt, closed)}
    print(f"think_about_rft (G = {G}, exact enumeration): |RFT - Dr.GRPO(none)| = {metrics['rft_vs_drgrpo_none']:.1e}; "
          f"|(G-1)/G RFT - Dr.GRPO(mean)| = {metrics['rft_times_ratio_vs_drgrpo_mean']:.1e}; RFT averaged per "
          f"prompt vs sum_k (1-(1-p_k)^G)/p_k grad p_k: {metrics['rft_per_prompt_vs_closed_form']:.1e}")
    return metrics


def report_surrogates() -> dict[str, float]:
    """At pi = pi_old the token, sequence (GSPO) and product surrogates' gradients against the on-policy ones;
    off-policy, each one's exact expected gradient against the true grad J (enumeration)."""
    on = surrogate_gradients(offset=0.0)
    metrics = {"token_vs_pg": _max_diff(on["token"], on["pg"]), "sequence_vs_pg": _max_diff(on["sequence"], on["pg"]),
               "product_vs_pg_sum": _max_diff(on["product"], on["pg_sum"])}
    off = exact_off_policy_gradients()
    scale = off["true"].abs().max().item()
    for kind in ("token", "sequence", "product"):
        metrics[f"off_policy_{kind}_rel_err"] = _max_diff(off[kind], off["true"]) / scale
    print("derive_surrogate_objectives, at pi = pi_old (autograd, clipped at 0.2): "
          f"|token - pg| = {metrics['token_vs_pg']:.1e}, |GSPO - pg| = {metrics['sequence_vs_pg']:.1e}, "
          f"|product - pg(sum)| = {metrics['product_vs_pg_sum']:.1e}")
    print("off policy (exact expectation over pi_old), relative error against the true grad J: " + ", ".join(
        f"{k} {metrics[f'off_policy_{k}_rel_err']:.3g}" for k in ("token", "sequence", "product")))
    return metrics


REPORTS = {"baseline_calcs": report_baseline_calcs, "derive_difficulty_reweightings": report_difficulty_reweightings,
           "think_about_rft": report_rft, "derive_surrogate_objectives": report_surrogates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment.course.bandits", description=__doc__.split("\n\n")[0])
    parser.add_argument("derivation", choices=[*REPORTS, "all"])
    parser.add_argument("--out", type=Path, default=None, help="write {'metrics': {...}} as json here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    metrics = {}
    for name, report in REPORTS.items():
        if args.derivation in (name, "all"):
            metrics.update({f"{name}/{k}": v for k, v in report().items()})
            print()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"metrics": metrics}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
