"""When not to answer: how well a confidence signal ranks a model's right answers above its wrong ones,
and what an abstention threshold buys, from (confidence, correct) pairs. Pure Python, no torch.

A signal is any number in [0, 1] the runner has for an answer (the log-likelihood softmax of the picked
choice, the geometric-mean probability of a generated answer's tokens, the share of sampled answers
that agree with the vote). Each signal scores the answer it belongs to, so an eval prediction carries
the pair: `signals[label][name] = {"confidence": c, "correct": bool}`.

- Risk at coverage k/n: the error rate over the k answers the signal is most confident about. A
  threshold cannot split answers of equal confidence, so a group of ties straddling k counts with its
  mean error (the expectation over every order of the ties), never the questions' order; the
  calibration module's older `selective_accuracy` keeps the order, and its figures stay as they were.
- AURC (Geifman et al. 2019): the mean of the risk over k = 1..n, the area under the risk-coverage
  curve (lower is better). Excess AURC: AURC minus the AURC of a perfect ranking (every right answer
  first) for the same accuracy, so 0 is a perfect ranking whatever the accuracy.
- ECE (calibration.py's bins) and the binary Brier score mean((c - correct)^2) of the signal itself.
- Abstention at threshold t: answer when c >= t; accuracy on the answered share, share abstained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from runner.scoring.calibration import COVERAGES, expected_calibration_error

CURVE_POINTS = 20  # coverages 5%, 10%, ..., 100% kept in metrics.json for the report's curves


def cumulative_errors(confidences: Sequence[float], correct: Sequence[bool]) -> list[float]:
    """errors[k]: the expected number of wrong answers among the k most confident (errors[0] = 0);
    within a group of tied confidences each answer counts the group's mean error."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness flags")
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    out = [0.0]
    for _, tied in groupby(order, key=lambda i: confidences[i]):
        members = list(tied)
        mean_error = sum(not correct[i] for i in members) / len(members)
        before = out[-1]
        out += [before + mean_error * (j + 1) for j in range(len(members))]
    return out


def risk_at(errors: Sequence[float], k: int) -> float:
    return errors[k] / k


def selective_accuracy(confidences: Sequence[float], correct: Sequence[bool], coverage: float) -> float:
    """Accuracy over the most confident `coverage` share (at least one answer), ties averaged."""
    if not confidences:
        return math.nan
    keep = max(1, math.ceil(coverage * len(confidences) - 1e-9))  # 0.8 x 10 is 8.000000000000002 in floats
    return 1.0 - risk_at(cumulative_errors(confidences, correct), keep)


def aurc(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean risk over coverages 1/n .. n/n (lower is better)."""
    n = len(confidences)
    if not n:
        return math.nan
    errors = cumulative_errors(confidences, correct)
    return sum(risk_at(errors, k) for k in range(1, n + 1)) / n


def optimal_aurc(correct: Sequence[bool]) -> float:
    """The AURC of a ranking that puts every right answer first: only wrong answers carry risk."""
    n, right = len(correct), sum(bool(c) for c in correct)
    return sum(max(0, k - right) / k for k in range(1, n + 1)) / n if n else math.nan


def brier_binary(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """mean (confidence - correct)^2: 0 best, 1 worst (the signal's own Brier, not the choices')."""
    return sum((c - bool(y)) ** 2 for c, y in zip(confidences, correct)) / len(confidences) if confidences else math.nan


def curve(confidences: Sequence[float], correct: Sequence[bool], points: int = CURVE_POINTS) -> list[list[float]]:
    """[coverage, risk] at coverages 1/points .. 1 (each rounded up to a whole answer)."""
    n = len(confidences)
    if not n:
        return []
    errors = cumulative_errors(confidences, correct)
    ks = sorted({max(1, math.ceil(j * n / points - 1e-9)) for j in range(1, points + 1)})
    return [[round(k / n, 4), round(risk_at(errors, k), 4)] for k in ks]


def abstain(confidences: Sequence[float], correct: Sequence[bool], threshold: float) -> dict[str, Any]:
    """Answer only when confidence >= threshold: accuracy on the answered share (None when none is
    answered) and the share abstained, so a clinic can read the operating point off one row."""
    answered = [bool(y) for c, y in zip(confidences, correct) if c >= threshold]
    n = len(confidences)
    return {"threshold": threshold, "n": n, "answered": len(answered),
            "abstained": _round((n - len(answered)) / n) if n else None,
            "acc_answered": _round(sum(answered) / len(answered)) if answered else None,
            "acc_all": _round(sum(bool(y) for y in correct) / n) if n else None}


def signal_figures(confidences: Sequence[float], correct: Sequence[bool],
                   coverages: Sequence[float] = COVERAGES) -> dict[str, Any]:
    """Every figure of one signal for one model on one benchmark."""
    n = len(confidences)
    a = aurc(confidences, correct)
    return {"n": n, "acc": _round(sum(bool(y) for y in correct) / n) if n else None,
            "confidence": _round(sum(confidences) / n) if n else None,
            "aurc": _round(a), "eaurc": _round(a - optimal_aurc(correct)),
            "ece": _round(expected_calibration_error(confidences, correct)),
            "brier": _round(brier_binary(confidences, correct)),
            "selective_acc": {f"{round(100 * c)}": _round(selective_accuracy(confidences, correct, c))
                              for c in coverages},
            "curve": curve(confidences, correct)}


def pairs_of(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[list[float], list[bool]]]]:
    """From prediction rows carrying `signals`: label -> signal -> (confidences, correct), in row order.
    A signal counts only the rows that carry it (a failed extraction may carry none)."""
    out: dict[str, dict[str, tuple[list[float], list[bool]]]] = {}
    for row in rows:
        for label, signals in (row.get("signals") or {}).items():
            for name, pair in signals.items():
                confs, right = out.setdefault(label, {}).setdefault(name, ([], []))
                confs.append(float(pair["confidence"]))
                right.append(bool(pair["correct"]))
    return out


def uncertainty(rows: Sequence[dict[str, Any]], rule: tuple[str, float] | None = None) -> dict[str, Any]:
    """metrics.json's `uncertainty` entry of one benchmark: per model and signal its figures, and,
    when the spec declares an abstention rule (signal, threshold), that rule's outcome per model."""
    pairs = pairs_of(rows)
    out: dict[str, Any] = {label: {name: signal_figures(*pair) for name, pair in signals.items()}
                           for label, signals in pairs.items()}
    if rule is not None:
        name, threshold = rule
        out["abstain"] = {"signal": name, "threshold": threshold,
                          **{label: abstain(*signals[name], threshold) for label, signals in pairs.items()
                             if name in signals}}
    return out


def _round(x: float, digits: int = 4) -> float | None:
    return None if math.isnan(x) else round(x, digits)
