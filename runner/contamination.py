"""Training questions that also appear in a benchmark: exact copies and near duplicates.

A benchmark question the model trained on measures memory, not skill. Texts are compared after
normalising case, punctuation and spacing; near duplicates by the Jaccard similarity of their word
8-gram sets (the shingles of near-duplicate detection), found through an index of those shingles so
a 10k x 1k comparison stays fast. Pure Python.

`before_training` runs the check between the data and train stages, so a run can stop before it
spends hours on a contaminated set; eval repeats it per benchmark for the report.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import DataError
from runner.spec import Spec

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


def training_texts(spec: Spec, path: Path | None) -> list[str]:
    """The prompts of the training source as the data stage reads them (validation rows included):
    what a benchmark question would be copied into."""
    from runner.formats import Dropped, to_example
    from runner.stages.data import read_rows

    texts = []
    for row in read_rows(spec.data.train, path, spec.data.max_rows):
        try:
            if isinstance(row, Dropped):
                continue
            example = to_example(row, spec.data.format, spec.data.fields)
        except Dropped:
            continue
        texts.append("\n".join(content for role, content in example.messages if role != "assistant"))
    return texts


def before_training(spec: Spec, log: Callable[[str], None]) -> dict[str, Any]:
    """Each benchmark's questions found in the training data, logged. Counts per benchmark."""
    from runner.benchmarks import load_items

    check = spec.eval.contamination
    if not check.check or not spec.eval.benchmarks:
        return {}
    train_path = spec.resolve(spec.data.train.path) if spec.data.train.path is not None else None
    try:
        train = training_texts(spec, train_path)
    except Exception as exc:  # the Hub unreachable for a Hub training source
        raise DataError(f"contamination check: cannot read the training data ({type(exc).__name__}: {exc}); "
                        f"fix data.train or set eval.contamination.check: false") from exc
    found: dict[str, Any] = {}
    for bench in spec.eval.benchmarks:
        try:
            items, _ = load_items(bench, spec.resolve(bench.path) if bench.path is not None else None,
                                  spec.resolve(bench.ids) if bench.ids is not None else None)
        except DataError:
            raise
        except Exception as exc:  # the Hub unreachable, a dataset renamed: say which and how to go on
            raise DataError(f"contamination check: cannot read benchmark {bench.name} ({type(exc).__name__}: {exc}); "
                            f"fix its source or set eval.contamination.check: false") from exc
        hits = overlaps(train, [it.prompt for it in items], check.similarity)
        exact = sum(o.similarity == 1.0 for o in hits)
        found[bench.name] = {"n": len(items), "exact": exact, "near": len(hits) - exact,
                             "pairs": [vars(o) for o in hits[:10]]}
        example = (f"; e.g. question {hits[0].item} ~ training row {hits[0].row} "
                   f"({'exact copy' if hits[0].similarity == 1.0 else f'similarity {hits[0].similarity:g}'})") if hits else ""
        log(f"contamination: {bench.name}: {len(hits)} of {len(items)} questions are in the training data "
            f"({exact} exact, {len(hits) - exact} near, similarity >= {check.similarity:g}){example}")
    return found


def stop_if_found(spec: Spec, found: dict[str, Any]) -> None:
    """A DataError when the spec's `eval.contamination.action` is `stop` and questions were found."""
    dirty = {name: f for name, f in found.items() if f["exact"] + f["near"]}
    if dirty and spec.eval.contamination.action == "stop":
        worst = ", ".join(f"{name} {f['exact'] + f['near']}/{f['n']}" for name, f in dirty.items())
        source = spec.data.train.path or spec.data.train.hub
        raise DataError(f"benchmark questions are in the training data ({worst}); remove them from {source} "
                        f"or set eval.contamination.action: report to train anyway (model and data stages are kept)")


@dataclass(frozen=True)
class BeforeTraining:
    """The train stage's gate: the contamination check, then the spec's action on what it found."""

    name: str = "contamination"

    def __call__(self, spec: Spec, log: Callable[[str], None]) -> dict[str, Any]:
        found = before_training(spec, log)
        stop_if_found(spec, found)
        return found


check_before_training = BeforeTraining()
