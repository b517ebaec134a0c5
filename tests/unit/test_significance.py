"""Intervals and the paired test, against values worked by hand and a coverage simulation."""

from __future__ import annotations

import math
import random

import pytest

from runner.scoring.significance import accuracy, mcnemar_exact, paired, paired_difference, summarize, wilson


def test_wilson_known_values() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))
    assert accuracy([True, False, True, True]) == {"n": 4, "correct": 3, "acc": 0.75, "ci95": [0.3006, 0.9544]}


def test_mcnemar_exact_is_the_two_sided_binomial_on_discordant_pairs() -> None:
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 17) == mcnemar_exact(17, 3) < 0.01


def test_paired_difference_interval_shape() -> None:
    diff, lo, hi = paired_difference(40, 5, 5, 50)
    assert diff == 0 and lo < 0 < hi and lo == pytest.approx(-hi, abs=1e-9)
    diff, lo, hi = paired_difference(40, 0, 15, 45)  # every disagreement favours the fine-tuned model
    assert diff == pytest.approx(0.15) and 0 < lo < diff < hi < 1
    diff, lo, hi = paired_difference(0, 0, 10, 0)  # all ten flipped from wrong to right
    assert diff == 1.0 and hi == 1.0 and 0.5 < lo < 1


def test_paired_difference_covers_the_truth_95_percent_of_the_time() -> None:
    """Newcombe's interval should hold the true difference in about 95% of repeated experiments."""
    rng = random.Random(0)
    # Cell probabilities of (both right, only base, only tuned, both wrong): true difference 0.08.
    cells, truth, n, runs, hits = (0.45, 0.06, 0.14, 0.35), 0.14 - 0.06, 150, 1500, 0
    for _ in range(runs):
        counts = [0, 0, 0, 0]
        for _ in range(n):
            u, k = rng.random(), 0
            while u > cells[k] and k < 3:
                u -= cells[k]
                k += 1
            counts[k] += 1
        _, lo, hi = paired_difference(*counts)
        hits += lo <= truth <= hi
    assert 0.93 <= hits / runs <= 0.975, hits / runs


def test_paired_counts_and_summary_by_group() -> None:
    base = [True, True, False, False, True, False]
    tuned = [True, False, True, True, True, False]
    p = paired(base, tuned)
    assert (p["only_base_right"], p["only_tuned_right"], p["delta"]) == (1, 2, round(1 / 6, 4))
    answers = [0, 1, 2, 3, 0, 1]
    preds_base = [a if ok else (a + 1) % 4 for a, ok in zip(answers, base)]
    preds_tuned = [a if ok else (a + 1) % 4 for a, ok in zip(answers, tuned)]
    out = summarize(answers, ["x", "y", "x", "y", "x", None], {"base": preds_base, "tuned": preds_tuned}, {"bad": 2})
    assert out["base"]["correct"] == 3 and out["tuned"]["correct"] == 4 and out["paired"] == p
    assert out["dropped"] == {"bad": 2}
    assert set(out["groups"]) == {"x", "y"}
    assert out["groups"]["x"]["tuned"]["n"] == 3 and out["groups"]["y"]["base"]["correct"] == 1
    only_tuned = summarize(answers, [None] * 6, {"tuned": preds_tuned}, {})
    assert "paired" not in only_tuned and "groups" not in only_tuned
