"""Preferences and the report's metrics: the Bradley-Terry annotator, ECE, distinct-n, best-of-N KL and
weights, pass@k (graded); pair making and preference-file loading (ungraded).

Oracles: hand-computed values, label frequencies against sigma(du / tau) within sampling error, the exact
KL of best-of-N computed from its distribution, and brute-force enumeration of all N-subsets of a pool.
"""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from cs336_alignment.lm.data import DataError
from cs336_alignment.evaluation.metrics import (best_of_n_kl, best_of_n_weights, distinct_n, expected_calibration_error,
                                     pairwise_calibration_error, pass_at_k)
from cs336_alignment.evaluation.preferences import (Annotator, load_preferences, make_preference_pairs, preference_probability,
                                         step_validity, write_preferences)

PART = "3.2 Preferences, calibration and best-of-N"

RIGHT = "5 + 7 = 12\n12 - 3 = 9\n#### 9"          # ground truth "... #### 9"
WRONG_FORMATTED = "5 + 7 = 12\n12 - 3 = 8\n#### 8"  # one invalid step, wrong answer, formatted
NO_FORMAT = "5 + 7 = 13"                           # invalid step, no final line


def _close(actual, expected, msg, atol=1e-9):
    torch.testing.assert_close(torch.tensor(float(actual), dtype=torch.float64),
                               torch.tensor(float(expected), dtype=torch.float64), atol=atol, rtol=0, msg=msg)


# ---------------------------------------------------------------------------------------------------------
# The annotator
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_preference_probability(numpy_snapshot):
    _close(preference_probability(1.0, 0.5, tau=0.25), 1 / (1 + math.exp(-2.0)), "sigma((u_a - u_b) / tau)")
    _close(preference_probability(0.3, 0.3, tau=0.1), 0.5, "equal utilities: a coin flip")
    for ua, ub, tau in [(0.2, 1.0, 0.5), (3.0, -1.0, 2.0)]:
        _close(preference_probability(ua, ub, tau) + preference_probability(ub, ua, tau), 1.0, "P(a>b) + P(b>a) = 1")
    # Noiseless limit and no overflow for huge gaps.
    assert preference_probability(1.0, 0.0, tau=0.0) == 1.0 and preference_probability(0.0, 1.0, tau=0.0) == 0.0
    assert preference_probability(0.0, 0.0, tau=0.0) == 0.5
    assert preference_probability(1e4, 0.0, tau=1e-3) == 1.0 and preference_probability(0.0, 1e4, tau=1e-3) == 0.0
    with pytest.raises(ValueError):
        preference_probability(0.0, 1.0, tau=-1.0)
    numpy_snapshot.assert_match([preference_probability(ua, ub, tau) for ua, ub, tau in
                                 [(1.0, 0.5, 0.25), (0.3, 0.3, 0.1), (0.2, 1.0, 0.5), (3.0, -1.0, 2.0), (1.0, 0.0, 0.0),
                                  (0.0, 0.0, 0.0), (1e4, 0.0, 1e-3), (0.0, 1e4, 1e-3)]], "test_preference_probability")


@pytest.mark.points(1)
def test_annotator_without_noise_picks_higher_utility(numpy_snapshot):
    annotator, rng = Annotator(tau=0.0), random.Random(0)
    u = {r: annotator.utility(r, "#### 9", n_tokens=10) for r in (RIGHT, WRONG_FORMATTED, NO_FORMAT)}
    assert u[RIGHT] > u[WRONG_FORMATTED] > u[NO_FORMAT], "gold, then format and valid steps"
    for a, b in itertools.permutations(u, 2):
        assert all(annotator.prefers_first(u[a], u[b], rng) == (u[a] > u[b]) for _ in range(50))
    numpy_snapshot.assert_match({"utilities": [u[r] for r in (RIGHT, WRONG_FORMATTED, NO_FORMAT)],
                                 "prefers_first": [annotator.prefers_first(u[a], u[b], rng)
                                                   for a, b in itertools.permutations(u, 2)]},
                                "test_annotator_without_noise_picks_higher_utility")


@pytest.mark.points(1)
def test_label_frequencies_match_bradley_terry(numpy_snapshot):
    annotator, rng, n = Annotator(tau=0.25), random.Random(1), 4000
    for du in (0.0, 0.1, 0.25, 0.6):
        p = 1 / (1 + math.exp(-du / 0.25))
        freq = sum(annotator.prefers_first(du, 0.0, rng) for _ in range(n)) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, "label frequency is sigma(du / tau)"
    # The labels themselves depend on how the implementation draws from rng: only sigma(du / tau) is recorded.
    numpy_snapshot.assert_match([preference_probability(du, 0.0, 0.25) for du in (0.0, 0.1, 0.25, 0.6)],
                                "test_label_frequencies_match_bradley_terry")


@pytest.mark.points(1)
def test_length_bias_flips_preference_to_longer(numpy_snapshot):
    short_right, long_wrong = RIGHT, WRONG_FORMATTED + "\n" + "\n".join(["1 + 1 = 2"] * 10)
    n_short, n_long = 12, 80
    fair, biased = Annotator(tau=0.0), Annotator(tau=0.0, length_bias=0.05)
    rng = random.Random(0)
    u_fair = fair.utility(short_right, "9", n_short), fair.utility(long_wrong, "9", n_long)
    u_biased = biased.utility(short_right, "9", n_short), biased.utility(long_wrong, "9", n_long)
    assert fair.prefers_first(*u_fair, rng), "without bias the right answer wins"
    assert not biased.prefers_first(*u_biased, rng), "with length bias the long wrong answer wins"
    _close(u_biased[1] - u_fair[1], 0.05 * n_long, "the bias adds length_bias per token")
    numpy_snapshot.assert_match({"fair": list(u_fair), "biased": list(u_biased)},
                                "test_length_bias_flips_preference_to_longer")


def test_step_validity():
    assert step_validity(RIGHT) == 1.0
    assert step_validity(WRONG_FORMATTED) == 0.5
    assert step_validity("#### 9") == 0.0 and step_validity("") == 0.0
    assert step_validity("12 / 4 = 3\n7 * 3 = 20\nblah") == 0.5


# ---------------------------------------------------------------------------------------------------------
# Calibration and diversity
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_expected_calibration_error_hand_example(numpy_snapshot):
    probs = torch.tensor([0.12, 0.15, 0.82, 0.91, 0.95], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1, 0])
    # 2 bins: [0.12, 0.15] -> |1/2 - 0.135| * 2/5 = 0.146;  [0.82, 0.91, 0.95] -> |2/3 - 0.89333| * 3/5 = 0.136
    _close(expected_calibration_error(probs, labels, n_bins=2), 0.282, "ECE with 2 bins", atol=1e-6)
    # 10 bins: bin 1 -> 0.146, bin 8 -> |1 - 0.82| / 5 = 0.036, bin 9 -> |1/2 - 0.93| * 2/5 = 0.172
    _close(expected_calibration_error(probs, labels, n_bins=10), 0.354, "ECE with 10 bins", atol=1e-6)
    _close(expected_calibration_error(torch.full((4,), 0.5), torch.tensor([1, 0, 1, 0])), 0.0, "calibrated")
    _close(expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1, 0])), 0.5, "p = 1 in the last bin")
    numpy_snapshot.assert_match([expected_calibration_error(probs, labels, n_bins=2),
                                 expected_calibration_error(probs, labels, n_bins=10),
                                 expected_calibration_error(torch.full((4,), 0.5), torch.tensor([1, 0, 1, 0])),
                                 expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1, 0]))],
                                "test_expected_calibration_error_hand_example")


@pytest.mark.points(1)
def test_pairwise_calibration_error(numpy_snapshot):
    # r_c - r_r = log 3 -> p = 0.75 (label 1) and 0.25 (label 0): bins 7 and 2, each off by 0.25.
    chosen, rejected = torch.tensor([math.log(3.0)]), torch.tensor([0.0])
    _close(pairwise_calibration_error(chosen, rejected), 0.25, "both orders of the pair", atol=1e-6)
    # Four pairs at p = 0.75 of which three are right-ordered: calibrated.
    chosen, rejected = torch.tensor([math.log(3.0)] * 3 + [0.0]), torch.tensor([0.0] * 3 + [math.log(3.0)])
    _close(pairwise_calibration_error(chosen, rejected), 0.0, "3 of 4 pairs at p = 0.75 are right", atol=1e-6)
    numpy_snapshot.assert_match([pairwise_calibration_error(torch.tensor([math.log(3.0)]), torch.tensor([0.0])),
                                 pairwise_calibration_error(chosen, rejected)], "test_pairwise_calibration_error")


@pytest.mark.points(1)
def test_distinct_n(numpy_snapshot):
    seqs = [[1, 2, 3], [1, 2, 4]]
    _close(distinct_n(seqs, 2), 3 / 4, "bigrams (1,2) (2,3) (1,2) (2,4)")
    _close(distinct_n(seqs, 1), 4 / 6, "unigrams")
    _close(distinct_n([[5, 5, 5, 5]], 2), 1 / 3, "one bigram repeated")
    assert distinct_n([[1], []], 2) == 0.0
    numpy_snapshot.assert_match([distinct_n(seqs, 2), distinct_n(seqs, 1), distinct_n([[5, 5, 5, 5]], 2),
                                 distinct_n([[1], []], 2)], "test_distinct_n")


# ---------------------------------------------------------------------------------------------------------
# Best-of-N and pass@k
# ---------------------------------------------------------------------------------------------------------

def _exact_bon_kl(n: int, m: int) -> float:
    """KL(best-of-n || uniform over m items with distinct rewards), from the BoN distribution itself:
    the item of ascending rank i wins with probability ((i+1)^n - i^n) / m^n."""
    kl = 0.0
    for i in range(m):
        p = ((i + 1) ** n - i ** n) / m ** n
        if p > 0:
            kl += p * math.log(p * m)
    return kl


@pytest.mark.points(1)
def test_best_of_n_kl_against_exact_computation(numpy_snapshot):
    _close(best_of_n_kl(1), 0.0, "best-of-1 is the policy")
    _close(best_of_n_kl(2), math.log(2) - 0.5, "log 2 - 1/2")
    for n in (2, 4, 16, 64):
        exact = _exact_bon_kl(n, m=4000)  # a fine discrete distribution approaches the continuous case
        assert exact <= best_of_n_kl(n) + 1e-12, "the closed form bounds the exact KL from above"
        _close(exact, best_of_n_kl(n), f"exact KL of best-of-{n} matches the closed form", atol=2e-2)
    # With few distinct outcomes the bound is loose: 2 equally likely responses, best-of-4 -> KL = 0.459 < 0.636.
    _close(_exact_bon_kl(4, m=2), 15 / 16 * math.log(15 / 8) + 1 / 16 * math.log(1 / 8), "exact KL, 2 outcomes")
    assert _exact_bon_kl(4, m=2) < best_of_n_kl(4) - 0.1, "ties make the closed form loose"
    numpy_snapshot.assert_match([best_of_n_kl(n) for n in (1, 2, 4, 16, 64)],
                                "test_best_of_n_kl_against_exact_computation")


@pytest.mark.points(1)
def test_pass_at_k_against_enumeration(numpy_snapshot):
    n = 6
    for c in range(n + 1):
        correct = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(correct, k))
            brute = sum(max(s) for s in subsets) / len(subsets)
            _close(pass_at_k(n, c, k), brute, f"pass@{k} with {c}/{n} right", atol=1e-12)
    numpy_snapshot.assert_match([[pass_at_k(n, c, k) for k in range(1, n + 1)] for c in range(n + 1)],
                                "test_pass_at_k_against_enumeration")


def test_best_of_n_weights_against_enumeration():
    pool = 6
    for N in range(1, pool + 1):
        counts = [0] * pool
        subsets = list(itertools.combinations(range(pool), N))  # ranks; the best is the largest rank
        for s in subsets:
            counts[max(s)] += 1
        torch.testing.assert_close(best_of_n_weights(pool, N), torch.tensor(counts, dtype=torch.float64) / len(subsets))


# ---------------------------------------------------------------------------------------------------------
# Pairs and preference files
# ---------------------------------------------------------------------------------------------------------

def _response(text):
    return {"text": text, "tokens": [0] * len(text.split()), "n_tokens": len(text.split()), "truncated": False}


def test_make_preference_pairs_noiseless():
    problem = {"question": "Tom has 5 apples ...", "answer": "5 + 7 = 12\n12 - 3 = 9\n#### 9"}
    samples = [[_response(RIGHT), _response(RIGHT), _response(WRONG_FORMATTED), _response(NO_FORMAT)]]
    pairs = make_preference_pairs([problem], samples, Annotator(tau=0.0), seed=0)
    assert len(pairs) == 5, "all pairs of the 4 samples except the identical one"
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and pair["u_chosen"] > pair["u_rejected"]
        assert pair["p_chosen"] == 1.0 and pair["prompt_messages"][0]["content"] == problem["question"]
    assert sum(p["gold_chosen"] for p in pairs) == 4 and sum(p["gold_rejected"] for p in pairs) == 0
    assert len(make_preference_pairs([problem], samples, Annotator(), max_pairs_per_prompt=2)) == 2


def test_make_preference_pairs_skips_blank_responses_so_the_file_loads(tmp_path):
    problem = {"question": "Tom has 5 apples ...", "answer": "5 + 7 = 12\n12 - 3 = 9\n#### 9"}
    samples = [[_response(RIGHT), _response(""), _response(WRONG_FORMATTED), _response("  \n")]]
    pairs = make_preference_pairs([problem], samples, Annotator(), seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] in ([(RIGHT, WRONG_FORMATTED)], [(WRONG_FORMATTED, RIGHT)])
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    assert len(load_preferences(tmp_path / "pairs.jsonl")) == 1


def _write(tmp_path, lines):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_load_preferences_schemas(tmp_path):
    u = lambda c: {"role": "user", "content": c}           # noqa: E731
    a = lambda c: {"role": "assistant", "content": c}      # noqa: E731
    path = _write(tmp_path, [
        {"prompt": "q1", "chosen": "yes", "rejected": "no", "u_chosen": 1.0},
        {"chosen": [u("hi"), a("hello"), u("q2"), a("good")], "rejected": [u("hi"), a("hello"), u("q2"), a("bad")]},
        {"prompt": [u("q3")], "chosen": [a("A")], "rejected": [a("B")]},
    ])
    pairs = load_preferences(path)
    assert [p["prompt"] for p in pairs] == ["q1", "q2", "q3"]
    assert pairs[0]["u_chosen"] == 1.0 and pairs[0]["prompt_messages"] == [u("q1")]
    assert pairs[1]["prompt_messages"] == [u("hi"), a("hello"), u("q2")]
    assert (pairs[1]["chosen"], pairs[1]["rejected"], pairs[2]["chosen"]) == ("good", "bad", "A")
    out = tmp_path / "copy.jsonl"
    write_preferences(out, pairs)
    assert load_preferences(out) == pairs


@pytest.mark.parametrize("bad, field", [
    ({"prompt": "q", "rejected": "no"}, "chosen"),
    ({"prompt": "q", "chosen": "yes", "rejected": ""}, "rejected"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected"),
    ({"chosen": "yes", "rejected": "no"}, "prompt"),
    ({"prompt": "q", "chosen": 3, "rejected": "no"}, "chosen"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}, "rejected"),
    ({"chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "y"}]}, "chosen[0].role"),
    ({"prompt": "q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "y"}, "chosen[0]"),
])
def test_load_preferences_errors_name_file_line_field(tmp_path, bad, field):
    path = _write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, bad])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert f"{path}:2: field '{field}'" in str(info.value)


def test_load_preferences_malformed_json(tmp_path):
    path = _write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, "", "{not json"])
    with pytest.raises(DataError, match=f"{path}:3: malformed JSON"):
        load_preferences(path)
