"""Training questions that also appear in a benchmark: exact copies and near duplicates.

A benchmark question the model trained on measures memory, not skill. Texts are compared after
normalising case, punctuation and spacing; near duplicates by the Jaccard similarity of their word
8-gram sets (the shingles of near-duplicate detection), found through an index of those shingles so
a 10k x 1k comparison stays fast. Pure Python.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

SHINGLE = 8  # words: long enough that shared boilerplate ("which of the following is") rarely matches


@dataclass(frozen=True)
class Overlap:
    item: int  # index of the benchmark question
    row: int  # index of the training text
    similarity: float  # 1.0 for an exact copy (after normalising)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def shingles(words: Sequence[str]) -> set[tuple[str, ...]]:
    if len(words) <= SHINGLE:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def overlaps(train: Sequence[str], bench: Sequence[str], threshold: float) -> list[Overlap]:
    """For each benchmark text, its most similar training text when the similarity reaches `threshold`."""
    exact: dict[str, int] = {}
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    train_sets = []
    for row, text in enumerate(train):
        norm = normalise(text)
        exact.setdefault(norm, row)
        grams = shingles(norm.split())
        train_sets.append(grams)
        for gram in grams:
            index[gram].append(row)
    found = []
    for item, text in enumerate(bench):
        norm = normalise(text)
        if norm in exact:
            found.append(Overlap(item, exact[norm], 1.0))
            continue
        grams = shingles(norm.split())
        shared: dict[int, int] = defaultdict(int)
        for gram in grams:
            for row in index.get(gram, ()):
                shared[row] += 1
        best = max(((count / (len(grams) + len(train_sets[row]) - count), row) for row, count in shared.items()),
                   default=(0.0, -1))
        if best[0] >= threshold:
            found.append(Overlap(item, best[1], round(best[0], 4)))
    return found
