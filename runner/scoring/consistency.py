"""Self-consistency: k sampled answers per question, their majority vote, how much the samples agree,
and pass@k, each with its interval.

Pure Python (no torch), unit-tested on cases worked by hand (tests/unit/test_consistency.py).

- The vote: the answer most samples gave. A sample nothing could be read from (None) does not vote:
  one readable answer beats three failures. A tie goes to the tied answer sampled first (the same
  rule as lm-eval's `majority_vote`, whose Counter keeps first-seen order), so the vote is a function
  of the seeded samples and nothing else. All samples failing is a failed vote, counted wrong.
- Agreement: the vote's share of all k samples (failures included), a confidence in [0, 1] that the
  uncertainty section reads like any other signal.
- Single-sample accuracy: sample 1's (a paired comparison with the vote, question by question) and
  the mean over all k samples (the expected accuracy of one draw, with less noise).
- pass@k: Chen et al. (2021)'s unbiased estimator 1 - C(n-c, k) / C(n, k) per question (n samples,
  c right), averaged; its interval is the normal one over questions (each question's value is in
  [0, 1]), clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from runner.scoring.significance import Z95, accuracy, paired

Answer = str | None  # a choice label, or None where no answer could be read


def vote(samples: Sequence[Answer]) -> tuple[Answer, float]:
    """The majority answer and its agreement (its count over all samples)."""
    counts: dict[str, int] = {}
    for a in samples:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1  # dicts keep first-seen order: max() keeps the first of a tie
    if not counts:
        return None, 0.0
    winner = max(counts, key=lambda a: counts[a])
    return winner, counts[winner] / len(samples)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn without replacement from n (c right) is right:
    1 - C(n-c, k) / C(n, k), as a product so that large n does not overflow a float."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_interval(values: Sequence[float], z: float = Z95) -> dict[str, Any]:
    """Mean over questions with a normal 95% interval, clipped to [0, 1]."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": [None, None]}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return {"n": n, "mean": round(mean, 4), "ci95": [round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)]}


def ks_of(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... and n itself."""
    ks = [1]
    while ks[-1] * 2 < n:
        ks.append(ks[-1] * 2)
    return ks + ([n] if n > 1 else [])


def consistency(samples: Sequence[Sequence[Answer]], keys: Sequence[str]) -> dict[str, Any]:
    """One model's self-consistency summary: per question its k samples' answers, and the right one."""
    if len(samples) != len(keys):
        raise ValueError(f"consistency: {len(samples)} questions sampled, {len(keys)} keys")
    k = min((len(s) for s in samples), default=0)
    if any(len(s) != k for s in samples) or (samples and k == 0):
        raise ValueError("consistency: every question needs the same number (>= 1) of samples")
    votes = [vote(s) for s in samples]
    vote_right = [v == key for (v, _), key in zip(votes, keys)]
    first_right = [s[0] == key for s, key in zip(samples, keys)]
    rights = [sum(a == key for a in s) for s, key in zip(samples, keys)]
    out: dict[str, Any] = {
        "samples": k,
        "vote": accuracy(vote_right),
        "single": accuracy(first_right),
        "single_mean": mean_interval([r / k for r in rights]) if k else mean_interval([]),
        "agreement": mean_interval([a for _, a in votes]),
        "failed_samples": sum(a is None for s in samples for a in s),
        "failed_votes": sum(v is None for v, _ in votes),
        "pass_at_k": {str(j): mean_interval([pass_at_k(k, r, j) for r in rights]) for j in ks_of(k)},
        "vote_vs_single": paired(first_right, vote_right),  # "tuned" here is the vote
    }
    return out


def per_question(samples: Sequence[Answer], key: str) -> dict[str, Any]:
    """What predictions.jsonl keeps per question and model: the answers, the vote, its agreement."""
    winner, agreement = vote(samples)
    return {"answers": list(samples), "vote": winner, "agreement": round(agreement, 4), "right": winner == key}


def compare(base: Sequence[Sequence[Answer]], tuned: Sequence[Sequence[Answer]], keys: Sequence[str]) -> dict[str, Any]:
    """Base vs fine-tuned, paired question by question: on the vote and on sample 1."""
    def right(samples: Sequence[Sequence[Answer]], pick: int | None) -> list[bool]:
        return [(vote(s)[0] if pick is None else s[pick]) == key for s, key in zip(samples, keys)]

    return {"vote": paired(right(base, None), right(tuned, None)), "single": paired(right(base, 0), right(tuned, 0))}
