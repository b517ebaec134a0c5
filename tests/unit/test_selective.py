"""Risk-coverage, AURC, per-signal calibration and the abstention rule against values worked by hand."""

from __future__ import annotations

import math

import pytest

from runner.scoring.selective import (
    abstain,
    aurc,
    brier_binary,
    cumulative_errors,
    curve,
    optimal_aurc,
    pairs_of,
    selective_accuracy,
    signal_figures,
    uncertainty,
)

CONF = [0.9, 0.8, 0.7, 0.6]


def test_aurc_of_a_perfect_and_a_worst_ranking() -> None:
    # Right answers first: risks at k = 1..4 are 0, 0, 1/3, 1/2 -> AURC = (1/3 + 1/2) / 4 = 5/24.
    assert aurc(CONF, [True, True, False, False]) == pytest.approx(5 / 24)
    assert optimal_aurc([True, True, False, False]) == pytest.approx(5 / 24)
    # Wrong answers first: risks 1, 1, 2/3, 1/2 -> 19/24.
    assert aurc(CONF, [False, False, True, True]) == pytest.approx(19 / 24)
    # The optimum depends on the accuracy only, not on the order of the flags.
    assert optimal_aurc([False, True, False, True]) == pytest.approx(5 / 24)
    figures = signal_figures(CONF, [True, True, False, False])
    assert figures["eaurc"] == 0.0
    assert signal_figures(CONF, [False, False, True, True])["eaurc"] == pytest.approx(round(14 / 24, 4))


def test_all_right_or_all_wrong_leave_nothing_to_rank() -> None:
    assert aurc(CONF, [True] * 4) == 0.0 and optimal_aurc([True] * 4) == 0.0
    assert aurc(CONF, [False] * 4) == 1.0 and optimal_aurc([False] * 4) == 1.0


def test_ties_count_their_mean_error_not_the_questions_order() -> None:
    # All four tied, half right: whatever the order, the expected risk is 1/2 at every coverage.
    assert cumulative_errors([0.5] * 4, [True, False, True, False]) == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])
    assert aurc([0.5] * 4, [True, False, True, False]) == pytest.approx(0.5)
    assert aurc([0.5] * 4, [False, False, True, True]) == pytest.approx(0.5)  # the order does not matter
    # calibration.selective_accuracy keeps the order (0.0 here); a threshold cannot split ties: 1/2.
    assert selective_accuracy([0.5, 0.5], [False, True], 0.5) == pytest.approx(0.5)
    # A tie group after a lone top answer: 0.9 right, then {0.4 wrong, 0.4 right, 0.4 wrong}.
    errors = cumulative_errors([0.4, 0.9, 0.4, 0.4], [False, True, True, False])
    assert errors == pytest.approx([0, 0, 2 / 3, 4 / 3, 2])
    assert aurc([0.4, 0.9, 0.4, 0.4], [False, True, True, False]) == pytest.approx((0 + 1 / 3 + 4 / 9 + 1 / 2) / 4)


def test_selective_accuracy_and_curve() -> None:
    confidences = [0.6, 0.9, 0.5, 0.8, 0.7]  # most confident first: 0.9 T, 0.8 T, 0.7 F, 0.6 T, 0.5 F
    correct = [True, True, False, True, False]
    assert selective_accuracy(confidences, correct, 1.0) == pytest.approx(3 / 5)
    assert selective_accuracy(confidences, correct, 0.6) == pytest.approx(2 / 3)
    assert selective_accuracy(confidences, correct, 0.2) == 1.0
    assert math.isnan(selective_accuracy([], [], 0.5))
    assert curve(confidences, correct, points=5) == [[0.2, 0.0], [0.4, 0.0], [0.6, 0.3333], [0.8, 0.25], [1.0, 0.4]]
    assert curve(confidences, correct, points=20)[-1] == [1.0, 0.4]  # 20 points over 5 answers: 5 distinct
    assert len(curve(confidences, correct, points=20)) == 5


def test_brier_and_ece_of_a_signal() -> None:
    assert brier_binary([1.0, 0.0], [True, False]) == 0.0
    assert brier_binary([1.0, 0.0], [False, True]) == 1.0
    assert brier_binary([0.75] * 4, [True, True, True, False]) == pytest.approx((3 * 0.0625 + 0.5625) / 4)
    figures = signal_figures([0.75] * 4, [True, True, True, False])
    assert figures["ece"] == 0.0 and figures["acc"] == 0.75 and figures["confidence"] == 0.75


def test_abstention_at_a_threshold() -> None:
    out = abstain(CONF, [True, False, True, False], 0.7)  # answers 0.9, 0.8, 0.7 (>= is answered)
    assert out == {"threshold": 0.7, "n": 4, "answered": 3, "abstained": 0.25, "acc_answered": 0.6667,
                   "acc_all": 0.5}
    none = abstain(CONF, [True] * 4, 0.95)
    assert none["answered"] == 0 and none["abstained"] == 1.0 and none["acc_answered"] is None


def test_rows_with_signals_are_scored_per_model_and_signal() -> None:
    rows = [{"signals": {"base": {"loglik": {"confidence": c, "correct": y}},
                         "tuned": {"loglik": {"confidence": c, "correct": not y},
                                   "vote": {"confidence": 1.0, "correct": True}}}}
            for c, y in zip(CONF, [True, True, False, False])]
    rows.append({"benchmark": "x"})  # a row without signals counts for none
    assert pairs_of(rows)["tuned"]["vote"] == ([1.0] * 4, [True] * 4)
    out = uncertainty(rows, ("loglik", 0.75))
    assert out["base"]["loglik"]["aurc"] == round(5 / 24, 4)
    assert out["tuned"]["loglik"]["aurc"] == round(19 / 24, 4)
    assert set(out["tuned"]) == {"loglik", "vote"} and set(out["base"]) == {"loglik"}
    assert out["abstain"]["base"]["acc_answered"] == 1.0 and out["abstain"]["tuned"]["acc_answered"] == 0.0
    assert out["abstain"]["signal"] == "loglik" and "abstain" not in uncertainty(rows)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="3 confidences but 2"):
        cumulative_errors([0.1, 0.2, 0.3], [True, False])
