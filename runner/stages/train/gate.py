"""The train stage's gate: benchmark questions found in the training data before training starts.

The gate reads rows (the training source, each benchmark) the way the data and eval stages read
them, so it lives among the stages; what it compares and logs is `runner.rows.contamination`'s, pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.core.errors import DataError
from runner.core.stage import Log
from runner.rows.contamination import found_in_training, stop_if_found, training_texts
from runner.rows.formats import convert_rows, prompt_text, scored_turns, to_example
from runner.rows.mixture import is_mixture, local_paths, resolved
from runner.rows.reading import read_source
from runner.scoring.benchmarks import Item, benchmark_items
from runner.spec.typed import FREE_TEXT, Benchmark, Spec
from runner.stages.data import read_rows


def before_training(spec: Spec, log: Log) -> dict[str, Any]:
    """Each benchmark's questions found in the training data (every source), logged. Counts per benchmark."""
    check = spec.eval.contamination
    if not check.check or not spec.eval.benchmarks:
        return {}
    train, origins = training_texts_of(spec, ("train", "validation"))
    found: dict[str, Any] = {}
    for bench in spec.eval.benchmarks:
        prompts = _prompts(spec, bench)
        found[bench.name] = found_in_training(bench.name, prompts, train, check.similarity, log, origins)
    return found


def training_texts_of(spec: Spec, roles: tuple[str, ...]) -> tuple[list[str], list[tuple[str, int]]]:
    """The prompts of every source of `roles` (train, validation), and for each (its source, its
    index among that source's converted rows)."""
    texts: list[str] = []
    origins: list[tuple[str, int]] = []
    mixture = is_mixture(spec)
    for src in [s for role in roles for s in resolved(spec, role)]:
        try:
            paths = local_paths(spec, src)
            limit = spec.data.max_rows if src.role == "train" else None
            found = training_texts(read_source(src.source, paths, src.format, limit), src.format, src.fields)
        except DataError:
            raise
        except Exception as exc:  # the Hub unreachable for a Hub training source
            raise DataError(f"contamination check: cannot read training source {src.name} ({type(exc).__name__}: "
                            f"{exc}); fix data.{src.role} or set eval.contamination.check: false") from exc
        texts += found
        # A mixture's sources by name; the one-source form by its file or dataset, as the user wrote it.
        name = src.name if mixture else str(src.source.path or src.source.hub)
        origins += [(name, row) for row in range(len(found))]
    return texts, origins


def _items(spec: Spec, bench: Benchmark) -> list[Item]:
    try:
        rows = read_rows(bench, spec.resolve(bench.path) if bench.path is not None else None, None)
        items, _ = benchmark_items(bench, rows, spec.resolve(bench.ids) if bench.ids is not None else None)
    except DataError:
        raise
    except Exception as exc:  # the Hub unreachable, a dataset renamed: say which and how to go on
        raise DataError(f"contamination check: cannot read benchmark {bench.name} ({type(exc).__name__}: {exc}); "
                        f"fix its source or set eval.contamination.check: false") from exc
    return items


def _prompts(spec: Spec, bench: Benchmark) -> list[str]:
    """The benchmark's questions; a free-text benchmark's are its examples' last user turns."""
    if bench.format not in FREE_TEXT:
        return [it.prompt for it in _items(spec, bench)]
    rows = read_rows(bench, spec.resolve(bench.path) if bench.path is not None else None, None)
    examples, _ = convert_rows(rows, lambda row: scored_turns(to_example(row, bench.format, bench.fields)), bench.limit)
    return [prompt_text(e) for e in examples]


@dataclass(frozen=True)
class BeforeTraining:
    """The train stage's gate: the contamination check, then the spec's action on what it found."""

    name: str = "contamination"

    def check(self, spec: Spec, log: Log) -> dict[str, Any]:
        return before_training(spec, log)

    def stop(self, spec: Spec, found: dict[str, Any]) -> None:
        stop_if_found(spec, found)  # eval.contamination.action: stop, and questions were found


check_before_training = BeforeTraining()
