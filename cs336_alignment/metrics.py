"""Metrics of the post-training report: calibration, diversity, best-of-N statistics, and a policy's gold reward,
proxy (reward-model) reward and KL to the SFT reference measured on its own samples.

- Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3).
- distinct-n: distinct n-grams / all n-grams over a set of responses (Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models", §4.3).
- Best-of-N: KL(pi_BoN || pi) = log N - (N - 1) / N (Stiennon et al. 2020, appendix G.3; Beirami et al. 2024
  prove it is an upper bound, exact when the N samples are distinct almost surely), and the exact average of
  best-of-N over all N-subsets of a pool of n samples (the same combinatorics as the unbiased pass@k
  estimator of Chen et al. 2021, eq. 1).
- KL to the reference on the policy's samples: mean over y ~ pi of sum_t log pi(y_t | .) - log pi_ref(y_t | .)
  (the k1 estimator at sequence level, unbiased; Schulman 2020, "Approximating KL Divergence").
- Paired differences: two policies scored on the same problems differ by mean(a_i - b_i), with standard error
  sd(a_i - b_i) / sqrt(n) (the paired t-test's denominator; Miller 2024, "Adding Error Bars to Evals").
  Problem difficulty cancels in a_i - b_i, so this is much tighter than the two accuracies' own errors.

Metric names returned by `evaluate_policy` (one vocabulary with the training loops):
    accuracy/greedy       gold accuracy of greedy responses (tasks.gold_reward)
    reward/gold_mean      mean gold reward of temperature-1 samples
    reward/format_mean    fraction of those samples with a final "#### N" line
    reward/proxy_mean     mean reward-model score of those samples (when a reward model is given)
    kl/sft                mean sequence KL(pi || pi_sft) of those samples (nats)
    response/length_mean  mean response length of those samples (tokens, stop token excluded)
    response/distinct_2   distinct-2 of those samples (token bigrams)
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


# ---------------------------------------------------------------------------------------------------------
# A policy measured on its own samples
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sequence_log_probs(model, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 64
                       ) -> Tensor:
    """log pi(response | prompt) summed over the response tokens (stop token included when present).

    Args:
        model: TransformerLM.  prompts, responses: B token lists (responses may be empty: they sum to 0).
    Returns:
        (B,) float32, nats.
    """
    from cs336_alignment.data import pad_sequences
    from cs336_alignment.logprobs import get_response_log_probs

    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [p + r for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        full, _ = pad_sequences(rows, pad_value=0)                              # (b, L), right-padded
        mask = torch.zeros_like(full, dtype=torch.bool)
        for row, (p, r) in enumerate(zip(prompts[i:i + batch_size], responses[i:i + batch_size])):
            mask[row, len(p):len(p) + len(r)] = True
        full, mask = full.to(device), mask.to(device)
        log_probs = get_response_log_probs(model, full[:, :-1], full[:, 1:])["log_probs"]  # (b, L-1)
        out.append(torch.where(mask[:, 1:], log_probs.float(), 0.0).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate_policy(policy, tokenizer, problems: list[dict[str, str]], *, reference=None, reward_model=None,
                    samples_per_prompt: int = 1, max_new_tokens: int = 64, seed: int = 0, batch_size: int = 128,
                    greedy: bool = True, distinct_over: int | None = None, return_per_problem: bool = False
                    ) -> dict[str, float] | tuple[dict[str, float], dict[str, list[float]]]:
    """The report's columns for one policy (see the module docstring for the names).

    Samples `samples_per_prompt` temperature-1 responses per problem (seeded), and scores them with the gold
    reward, the reward model (if given) and the reference's log-probs (if given). With greedy=True it also
    measures greedy gold accuracy on the same problems. distinct-2 is over the samples of the first
    `distinct_over` problems (None = all): distinct-n falls as a corpus grows, so compare equal counts.

    With return_per_problem=True it returns (metrics, per_problem), per_problem = {"sampled": each problem's
    mean gold reward over its samples, "greedy": each problem's greedy gold reward (with greedy=True)}, lists
    in the order of `problems`: the inputs of `paired_difference`.
    """
    from cs336_alignment.evaluate import build_prompt, evaluate_model
    from cs336_alignment.preferences import sample_responses
    from cs336_alignment.tasks import gold_reward
    from cs336_alignment.train.reward_model import score_responses

    questions = [p["question"] for p in problems]
    samples = sample_responses(policy, tokenizer, questions, samples_per_prompt, max_new_tokens=max_new_tokens,
                               seed=seed, batch_size=batch_size)
    flat_q = [q for q in questions for _ in range(samples_per_prompt)]
    flat_a = [p["answer"] for p in problems for _ in range(samples_per_prompt)]
    flat = [s for group in samples for s in group]
    gold = [gold_reward(s["text"], a) for s, a in zip(flat, flat_a)]
    metrics: dict[str, float] = {}
    per_problem = {"sampled": [sum(g["reward"] for g in gold[i:i + samples_per_prompt]) / samples_per_prompt
                               for i in range(0, len(gold), samples_per_prompt)]}
    if greedy:
        greedy_metrics, greedy_samples = evaluate_model(policy, tokenizer, problems, fmt="chat",
                                                        max_new_tokens=max_new_tokens, batch_size=batch_size)
        metrics["accuracy/greedy"] = greedy_metrics["reward/gold_mean"]
        per_problem["greedy"] = [s["reward"] for s in greedy_samples]
    metrics["reward/gold_mean"] = sum(g["reward"] for g in gold) / len(gold)
    metrics["reward/format_mean"] = sum(g["format_reward"] for g in gold) / len(gold)
    if reward_model is not None:
        metrics["reward/proxy_mean"] = float(torch.tensor(score_responses(reward_model, tokenizer, flat_q,
                                                                          [s["text"] for s in flat])).mean())
    if reference is not None:
        prompts = [build_prompt(q, tokenizer, "chat") for q in flat_q]
        responses = [s["tokens"] for s in flat]  # generated tokens, stop token included
        kl = sequence_log_probs(policy, prompts, responses) - sequence_log_probs(reference, prompts, responses)
        metrics["kl/sft"] = float(kl.mean())
    metrics["response/length_mean"] = sum(s["n_tokens"] for s in flat) / len(flat)
    first = flat[:None if distinct_over is None else distinct_over * samples_per_prompt]
    metrics["response/distinct_2"] = distinct_n([s["tokens"][:s["n_tokens"]] for s in first], 2)
    return (metrics, per_problem) if return_per_problem else metrics
