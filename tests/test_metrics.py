"""metrics.paired_difference: the report's error bars for two policies on the same problems."""
from __future__ import annotations

import math
import random

import pytest

from cs336_alignment.evaluation.metrics import paired_difference


def test_paired_difference_hand_example():
    # a - b = [1, 0, 0, 1]: mean 1/2, sample variance (4 * 1/4) / 3 = 1/3, standard error sqrt(1/3) / 2
    mean, se = paired_difference([1, 0, 1, 1], [0, 0, 1, 0])
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 3) / 2)


def test_paired_difference_identical_and_shifted():
    scores = [0.0, 1.0, 0.5, 1.0, 0.0]
    assert paired_difference(scores, scores) == (0.0, 0.0)
    mean, se = paired_difference([s + 0.25 for s in scores], scores)  # a constant gain: no noise at all
    assert mean == pytest.approx(0.25) and se == pytest.approx(0.0, abs=1e-12)


def test_paired_is_tighter_than_unpaired_when_problems_drive_the_scores():
    # Two policies that agree except near each problem's difficulty threshold (a solves what b solves, and
    # 5% more): the scores vary mostly between problems, which cancels in a - b, so the paired error is
    # sqrt(0.05 * 0.95 / n) while treating the two accuracies as independent gives about sqrt(2 * 0.25 / n).
    rng = random.Random(0)
    draws = [(rng.random(), rng.random()) for _ in range(2000)]  # (problem easiness, luck)
    b = [float(luck < easy) for easy, luck in draws]
    a = [float(luck < easy + 0.05) for easy, luck in draws]
    mean, se = paired_difference(a, b)
    n = len(a)
    pa, pb = sum(a) / n, sum(b) / n
    unpaired_se = math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n)
    assert mean == pytest.approx(pa - pb)
    assert se < 0.5 * unpaired_se


@pytest.mark.parametrize("a, b", [([1, 0], [1]), ([1], [0])])
def test_paired_difference_rejects_bad_lengths(a, b):
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(a, b)
