"""The train stage's gate: benchmark questions found in the training data before training starts.

The gate reads rows (the training sources through `runner.rows.training_texts`, which eval's report
reads too; each benchmark) the way the data and eval stages read them; what it compares and logs is
`runner.rows.contamination`'s, pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.core.errors import DataError
from runner.core.stage import Log
from runner.rows.contamination import found_in_training, stop_if_found
from runner.rows.formats import convert_rows, prompt_text, scored_turns, to_example
from runner.rows.reading import read_rows
from runner.rows.training_texts import training_texts_of
from runner.scoring.benchmarks import Item, benchmark_items
from runner.spec.typed import FREE_TEXT, Benchmark, Spec


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
