"""How sure we are: accuracy intervals, the paired base vs fine-tuned comparison, group breakdowns.

Pure Python (no torch, no scipy), so each formula is unit-tested against values worked by hand.
Base and fine-tuned answer the same questions, so their difference is tested as paired data:
McNemar's exact test on the questions where they disagree, and Newcombe's interval for a paired
difference. Two independent intervals that overlap say little about a paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Z95 = 1.959963984540054  # the 97.5% point of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(correct: Sequence[bool]) -> dict[str, Any]:
    n, k = len(correct), sum(correct)
    lo, hi = wilson(k, n)
    return {"n": n, "correct": k, "acc": _round(k / n if n else math.nan), "ci95": [_round(lo), _round(hi)]}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant question is a fair
    coin, so min(b, c) is Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / (1 << n)  # 2**n, typed as int
    return min(1.0, 2 * tail)


def paired_difference(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """Fine-tuned minus base accuracy with Newcombe's (1998, method 10) 95% interval for paired data.

    a: both right, b: only base right, c: only fine-tuned right, d: both wrong.
    """
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = (a + c) / n, (a + b) / n  # fine-tuned, base
    l1, u1 = wilson(a + c, n, z)
    l2, u2 = wilson(a + b, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return (diff, max(-1.0, diff - delta), min(1.0, diff + epsilon))


def paired(base: Sequence[bool], tuned: Sequence[bool]) -> dict[str, Any]:
    """The paired comparison of two models' right/wrong answers on the same questions."""
    a = sum(x and y for x, y in zip(base, tuned))
    b = sum(x and not y for x, y in zip(base, tuned))
    c = sum(y and not x for x, y in zip(base, tuned))
    d = len(base) - a - b - c
    diff, lo, hi = paired_difference(a, b, c, d)
    return {"delta": _round(diff), "ci95": [_round(lo), _round(hi)], "only_base_right": b,
            "only_tuned_right": c, "mcnemar_p": float(f"{mcnemar_exact(b, c):.4g}")}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the smallest of m is multiplied by m,
    the next by m - 1, ..., each kept at least as large as the one before (and at most 1). A
    difference "survives" when its adjusted p is below the level: the chance of any false claim
    among all m comparisons stays below it."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def summarize(answers: Sequence[int], groups: Sequence[str | None], scored: Mapping[str, Sequence[int]],
              dropped: dict[str, int]) -> dict[str, Any]:
    """Accuracy per model, the paired test when there is a base, and the same per group."""
    out = _scores(answers, scored)
    out["dropped"] = dropped
    names = sorted({g for g in groups if g is not None})
    if names:
        out["groups"] = {}
        for name in names:
            keep = [i for i, g in enumerate(groups) if g == name]
            out["groups"][name] = _scores([answers[i] for i in keep],
                                          {label: [p[i] for i in keep] for label, p in scored.items()})
    return out


def _scores(answers: Sequence[int], scored: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    correct = {label: [p == a for p, a in zip(preds, answers)] for label, preds in scored.items()}
    out: dict[str, Any] = {label: accuracy(c) for label, c in correct.items()}
    if "base" in correct and "tuned" in correct:
        out["paired"] = paired(correct["base"], correct["tuned"])
    return out


def _round(x: float, digits: int = 4) -> float | None:
    """Rounded for the JSON file; None where there is no number (JSON has no NaN)."""
    return None if math.isnan(x) else round(x, digits)
