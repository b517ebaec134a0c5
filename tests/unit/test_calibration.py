"""Calibration and selective accuracy against values worked by hand."""

from __future__ import annotations

import math

import pytest

from runner.scoring.calibration import (
    argmax,
    brier,
    calibration,
    expected_calibration_error,
    selective_accuracy,
    softmax,
)


def test_softmax_of_log_probabilities_gives_them_back_and_does_not_overflow() -> None:
    assert softmax([math.log(0.5), math.log(0.25), math.log(0.25)]) == pytest.approx([0.5, 0.25, 0.25])
    assert softmax([-1000.0, -1000.0]) == pytest.approx([0.5, 0.5])  # exp(-1000) alone is 0


def test_argmax_takes_the_first_of_equal_scores_as_the_harness() -> None:
    assert argmax([0.2, 0.4, 0.4]) == 1
    assert argmax([-1.0, -1.0]) == 0


def test_ece_by_hand() -> None:
    # Bin [0.9, 1.0]: confidence 0.95, accuracy 1/2 -> |0.5 - 0.95| = 0.45, half the questions.
    # Bin [0.5, 0.6): confidence 0.55, accuracy 1 -> 0.45, the other half. ECE = 0.225 + 0.225.
    assert expected_calibration_error([0.95, 0.95, 0.55, 0.55], [True, False, True, True]) == pytest.approx(0.45)
    # Perfectly calibrated: 0.75 confident, right 3 times of 4.
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    # Equal-width bins: 0.91 and 0.99 share a bin (their mean 0.95 against accuracy 1), 0.89 does not.
    assert expected_calibration_error([0.91, 0.99], [True, True]) == pytest.approx(0.05)
    assert expected_calibration_error([0.89, 0.99], [True, True]) == pytest.approx(0.5 * 0.11 + 0.5 * 0.01)


def test_multiclass_brier_by_hand() -> None:
    # [0.5, 0.25, 0.25] against A: 0.25 + 0.0625 + 0.0625; against B: 0.25 + 0.5625 + 0.0625.
    assert brier([[0.5, 0.25, 0.25]], [0]) == pytest.approx(0.375)
    assert brier([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]], [0, 1]) == pytest.approx(0.625)
    assert brier([[0.25] * 4], [2]) == pytest.approx(0.75)  # uniform over k: 1 - 1/k
    assert brier([[1.0, 0.0]], [0]) == 0.0 and brier([[1.0, 0.0]], [1]) == 2.0


def test_selective_accuracy_by_hand() -> None:
    confidences = [0.6, 0.9, 0.5, 0.8, 0.7]  # most confident first: 0.9 T, 0.8 T, 0.7 F, 0.6 T, 0.5 F
    correct = [True, True, False, True, False]
    assert selective_accuracy(confidences, correct, 1.0) == pytest.approx(3 / 5)
    assert selective_accuracy(confidences, correct, 0.8) == pytest.approx(3 / 4)
    assert selective_accuracy(confidences, correct, 0.6) == pytest.approx(2 / 3)
    assert selective_accuracy(confidences, correct, 0.4) == 1.0
    assert selective_accuracy(confidences, correct, 0.2) == 1.0
    assert selective_accuracy([0.5, 0.5], [False, True], 0.5) == 0.0  # a tie keeps the questions' order
    assert selective_accuracy([0.5] * 10, [True] * 8 + [False] * 2, 0.8) == 1.0  # 8 kept, not 9


def test_calibration_of_one_model_by_hand() -> None:
    # Question 1: A at 0.7, the answer (right). Question 2: B at 0.8, the answer is A (wrong).
    out = calibration([[math.log(0.7), math.log(0.3)], [math.log(0.2), math.log(0.8)]], [0, 0])
    assert out["n"] == 2
    assert out["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.8)
    assert out["brier"] == pytest.approx(((0.09 + 0.09) + (0.64 + 0.64)) / 2)
    assert out["confidence"] == pytest.approx(0.75)
    # ceil(0.6 x 2) = 2 questions kept, ceil(0.4 x 2) = 1: the 0.8-confident wrong one.
    assert out["selective_acc"] == {"100": 0.5, "80": 0.5, "60": 0.5, "40": 0.0, "20": 0.0}
    assert out["reliability"] == [{"bin": [0.7, 0.8], "n": 1, "confidence": 0.7, "acc": 1.0},
                                  {"bin": [0.8, 0.9], "n": 1, "confidence": 0.8, "acc": 0.0}]


def test_no_questions_give_no_numbers() -> None:
    out = calibration([], [])
    assert out["ece"] is None and out["brier"] is None and out["selective_acc"]["100"] is None
