"""Metrics of the post-training report, pure functions of tensors and numbers: calibration, diversity, best-of-N
statistics and paired differences. (`evaluate.evaluate_policy` measures a policy with them.)

- Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3).
- distinct-n: distinct n-grams / all n-grams over a set of responses (Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models", §4.3).
- Best-of-N: KL(pi_BoN || pi) = log N - (N - 1) / N (Stiennon et al. 2020, appendix G.3; Beirami et al. 2024
  prove it is an upper bound, exact when the N samples are distinct almost surely), and the exact average of
  best-of-N over all N-subsets of a pool of n samples (the same combinatorics as the unbiased pass@k
  estimator of Chen et al. 2021, eq. 1).
- Paired differences: two policies scored on the same problems differ by mean(a_i - b_i), with standard error
  sd(a_i - b_i) / sqrt(n) (the paired t-test's denominator; Miller 2024, "Adding Error Bars to Evals").
  Problem difficulty cancels in a_i - b_i, so this is much tighter than the two accuracies' own errors.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------
# Calibration and diversity
# ---------------------------------------------------------------------------------------------------------


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """ECE = sum over bins b of (|b| / n) * |mean(labels in b) - mean(probs in b)| (Guo et al. 2017, eq. 3).

    Bins split [0, 1] into n_bins equal widths; p falls in bin min(floor(p * n_bins), n_bins - 1), so p = 1
    joins the last bin. Empty bins contribute nothing.

    Args:
        probs: (n,) float, predicted probabilities that the label is 1.
        labels: (n,) 0/1 (bool, int or float) outcomes.
        n_bins: number of equal-width bins (>= 1).

    Returns:
        ECE as a float in [0, 1].

    Raises:
        ValueError: on mismatched or empty inputs, probabilities outside [0, 1], or n_bins < 1.
    """
    probs, labels = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    if probs.shape != labels.shape or probs.dim() != 1 or probs.numel() == 0:
        raise ValueError("probs and labels must be non-empty (n,) tensors of the same shape")
    if n_bins < 1 or bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError("need n_bins >= 1 and probabilities in [0, 1]")
    # BEGIN SOLUTION
    bins = (probs * n_bins).floor().clamp(max=n_bins - 1).long()                   # (n,)
    counts = torch.bincount(bins, minlength=n_bins).double()                        # (n_bins,)
    prob_sums = torch.bincount(bins, weights=probs, minlength=n_bins)
    label_sums = torch.bincount(bins, weights=labels, minlength=n_bins)
    # |mean(labels) - mean(probs)| * |b| / n  ==  |sum(labels) - sum(probs)| / n  per bin.
    return float((label_sums - prob_sums).abs().sum() / probs.numel())
    # END SOLUTION


def pairwise_calibration_error(chosen_rewards: Tensor, rejected_rewards: Tensor, n_bins: int = 10) -> float:
    """ECE of the Bradley-Terry prediction sigma(r_a - r_b) against the annotator's labels.

    Every pair is scored in both orders, (chosen, rejected) with label 1 and (rejected, chosen) with label 0,
    so the result does not depend on which response a file happens to list first.
    """
    p = torch.sigmoid(torch.as_tensor(chosen_rewards, dtype=torch.float64)
                      - torch.as_tensor(rejected_rewards, dtype=torch.float64))           # (n,)
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    return expected_calibration_error(torch.cat([p, 1 - p]), labels, n_bins)


def distinct_n(sequences: Sequence[Sequence[Hashable]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over all sequences (Li et al. 2016); 0 when there is no n-gram.

    Args:
        sequences: responses as token lists (or any sequences of hashable items, e.g. words).
        n: n-gram order (>= 1).

    Returns:
        float in [0, 1]; 1 = no n-gram repeats anywhere, near 0 = the same text over and over.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # BEGIN SOLUTION
    ngrams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# Best-of-N and pass@k
# ---------------------------------------------------------------------------------------------------------


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base policy) = log n - (n - 1) / n nats (Stiennon et al. 2020, app. G.3).

    Exact for a continuous reward (no ties); an upper bound otherwise (Beirami et al. 2024, Theorem 1).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # BEGIN SOLUTION
    return math.log(n) - (n - 1) / n
    # END SOLUTION


def best_of_n_weights(pool_size: int, n: int) -> Tensor:
    """Probability that the sample of ascending rank i (0-based) wins best-of-n over a uniformly random
    n-subset of a pool: C(i, n - 1) / C(pool_size, n). Averaging a quantity with these weights gives its
    exact mean over all subsets, i.e. the limit of subsampling n of the pool infinitely often.

    Returns:
        (pool_size,) float64 weights summing to 1 (zero below rank n - 1).
    """
    if not 1 <= n <= pool_size:
        raise ValueError(f"need 1 <= n <= pool_size, got n={n}, pool_size={pool_size}")
    total = math.comb(pool_size, n)
    return torch.tensor([math.comb(i, n - 1) / total for i in range(pool_size)], dtype=torch.float64)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021, eq. 1).

    This is also gold-oracle best-of-k: the chance that the best of k samples (by the gold reward) is right.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    # BEGIN SOLUTION
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))  # numerically stable product form
    # END SOLUTION


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of a_i - b_i: how much policy a beats policy b on the same n problems.

    Args:
        a, b: per-problem scores of the two policies (e.g. 0/1 greedy correctness, or a problem's mean gold
            reward over its samples), in the same problem order.
    Returns:
        (mean difference, standard error sd(a - b) / sqrt(n) with the n - 1 sample variance), in the scores'
        units. A difference more than ~2 standard errors from 0 is unlikely to be evaluation noise.
    Raises:
        ValueError: if the lengths differ or n < 2 (no variance estimate).
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equal-length score lists of at least 2 problems, got {len(a)} and {len(b)}")
    diff = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)  # (n,)
    return float(diff.mean()), float(diff.std(correction=1) / math.sqrt(len(diff)))
