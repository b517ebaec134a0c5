"""How far a model's confidence in its multiple-choice answers can be trusted: calibration and
selective accuracy, from the log-likelihoods the eval stage scores the choices with.

Pure Python (no torch, no numpy), so each formula is unit-tested against values worked by hand.

- Probabilities: a softmax over the choices' summed log-likelihoods, the very scores the prediction
  takes its argmax of (lm-evaluation-harness `acc`, not the length-normalised `acc_norm`). The
  prediction is the first choice with the highest probability, as the harness picks it; its
  probability is the answer's confidence.
- Expected calibration error: 10 equal-width confidence bins, [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]
  (the last one closed); the sum over bins of (share of questions) x |accuracy - mean confidence|.
- Brier score, multi-class: the mean over questions of sum_k (p_k - y_k)^2, y the one-hot answer
  (0 for a perfect forecast, 2 at worst; 1 - 1/k for a uniform one over k choices).
- Selective accuracy at coverage c: the accuracy over the ceil(c x n) questions the model is most
  confident about (it abstains on the rest); ties keep the questions' order, so it is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

BINS = 10
COVERAGES = (1.0, 0.8, 0.6, 0.4, 0.2)
PROBABILITIES = "softmax over the choices' summed log-likelihoods (the harness's acc score, not acc_norm)"


def softmax(logliks: Sequence[float]) -> list[float]:
    """Probabilities of the choices from their log-likelihoods (shifted by the largest: no overflow)."""
    top = max(logliks)
    weights = [math.exp(x - top) for x in logliks]
    total = sum(weights)
    return [w / total for w in weights]


def argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (numpy's argmax, as the harness)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> float:
    return sum(len(members) / len(confidences) * abs(acc - conf)
               for _, members, conf, acc in _binned(confidences, correct, bins)) if confidences else math.nan


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> list[dict[str, Any]]:
    """Per non-empty bin: its edges, how many questions, their mean confidence and their accuracy."""
    return [{"bin": [i / bins, (i + 1) / bins], "n": len(members), "confidence": _round(conf), "acc": _round(acc)}
            for i, members, conf, acc in _binned(confidences, correct, bins)]


def brier(probabilities: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
    if not probabilities:
        return math.nan
    return sum(sum((p - (k == answer)) ** 2 for k, p in enumerate(probs))
               for probs, answer in zip(probabilities, answers)) / len(probabilities)


def selective_accuracy(confidences: Sequence[float], correct: Sequence[bool], coverage: float) -> float:
    """Accuracy over the most confident `coverage` share of the questions (at least one of them)."""
    if not confidences:
        return math.nan
    keep = max(1, math.ceil(coverage * len(confidences) - 1e-9))  # 0.8 x 10 is 8.000000000000002 in floats
    order = sorted(range(len(confidences)), key=lambda k: -confidences[k])  # stable: ties keep their order
    return sum(correct[k] for k in order[:keep]) / keep


def calibration(logliks: Sequence[Sequence[float]], answers: Sequence[int], bins: int = BINS,
                coverages: Sequence[float] = COVERAGES) -> dict[str, Any]:
    """Every figure for one model on one benchmark: `logliks[i]` are question i's choices' scores."""
    probabilities = [softmax(item) for item in logliks]
    picked = [argmax(p) for p in probabilities]
    confidences = [p[k] for p, k in zip(probabilities, picked)]
    correct = [k == a for k, a in zip(picked, answers)]
    n = len(confidences)
    return {"n": n, "ece": _round(expected_calibration_error(confidences, correct, bins)),
            "brier": _round(brier(probabilities, answers)),
            "confidence": _round(sum(confidences) / n if n else math.nan),
            "selective_acc": {f"{round(100 * c)}": _round(selective_accuracy(confidences, correct, c)) for c in coverages},
            "reliability": reliability(confidences, correct, bins)}


def _bin(confidence: float, bins: int) -> int:
    return min(int(confidence * bins), bins - 1)


def _binned(confidences: Sequence[float], correct: Sequence[bool],
            bins: int) -> list[tuple[int, list[int], float, float]]:
    """(bin, its questions, their mean confidence, their accuracy) of every non-empty bin."""
    out = []
    for i in range(bins):
        members = [k for k, c in enumerate(confidences) if _bin(c, bins) == i]
        if members:
            out.append((i, members, sum(confidences[k] for k in members) / len(members),
                        sum(correct[k] for k in members) / len(members)))
    return out


def _round(x: float, digits: int = 4) -> float | None:
    return None if math.isnan(x) else round(x, digits)
