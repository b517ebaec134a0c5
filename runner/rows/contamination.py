"""Training questions that also appear in a benchmark: exact copies and near duplicates.

A benchmark question the model trained on measures memory, not skill. Texts are compared after
normalising case, punctuation and spacing; near duplicates by the Jaccard similarity of their word
8-gram sets (the shingles of near-duplicate detection), found through an index of those shingles so
a 10k x 1k comparison stays fast. Pure Python: it takes rows and texts, never reads a source.

The train stage's gate (`runner/stages/train/gate.py`, which reads the rows) runs the check between
the data and train stages, so a run can stop before it spends hours on a contaminated set; eval
repeats it per benchmark for the report.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.core.errors import DataError
from runner.rows.formats import Dropped, convert_rows, document_text
from runner.rows.pairs import example_of
from runner.spec.typed import Fields, Spec

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


def training_texts(rows: Iterable[dict[str, Any] | Dropped], fmt: str, fields: Fields) -> list[str]:
    """The prompts of a source's rows as the data stage converts them (validation rows included): what
    a benchmark question would be copied into. A text source: its documents."""
    if fmt == "text":
        texts, _ = convert_rows(rows, lambda row: document_text(row, fields.text))
        return texts
    examples, _ = convert_rows(rows, lambda row: example_of(row, fmt, fields))  # preference, kto: runner.rows.pairs
    return ["\n".join(content for role, content in e.messages if role != "assistant") for e in examples]


def found_in_training(name: str, prompts: Sequence[str], train: Sequence[str], similarity: float,
                      log: Callable[[str], None], origins: Sequence[tuple[str, int]] | None = None) -> dict[str, Any]:
    """One benchmark's questions found in the training texts, logged; the counts the run record keeps.
    `origins`: (source, row in it) of each training text, so a hit names the source it came from."""
    hits = overlaps(train, prompts, similarity)
    exact = sum(o.similarity == 1.0 for o in hits)
    where = (lambda row: f"training row {origins[row][1]} of {origins[row][0]}") if origins else (lambda row: f"training row {row}")
    example = (f"; e.g. question {hits[0].item} ~ {where(hits[0].row)} "
               f"({'exact copy' if hits[0].similarity == 1.0 else f'similarity {hits[0].similarity:g}'})") if hits else ""
    log(f"contamination: {name}: {len(hits)} of {len(prompts)} questions are in the training data "
        f"({exact} exact, {len(hits) - exact} near, similarity >= {similarity:g}){example}")
    pairs = [vars(o) | ({"source": origins[o.row][0], "source_row": origins[o.row][1]} if origins else {})
             for o in hits[:10]]
    found: dict[str, Any] = {"n": len(prompts), "exact": exact, "near": len(hits) - exact, "pairs": pairs}
    if origins:
        found["sources"] = dict(sorted(Counter(origins[o.row][0] for o in hits).items()))
    return found


def stop_if_found(spec: Spec, found: dict[str, Any]) -> None:
    """A DataError when the spec's `eval.contamination.action` is `stop` and questions were found."""
    dirty = {name: f for name, f in found.items() if f["exact"] + f["near"]}
    if dirty and spec.eval.contamination.action == "stop":
        worst = ", ".join(f"{name} {f['exact'] + f['near']}/{f['n']}" for name, f in dirty.items())
        named = sorted({s for f in dirty.values() for s in f.get("sources", {})})
        source = ", ".join(named) if named else "the training data"
        raise DataError(f"benchmark questions are in the training data ({worst}); remove them from {source} "
                        f"or set eval.contamination.action: report to train anyway (model and data stages are kept)")
