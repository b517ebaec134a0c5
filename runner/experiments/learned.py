"""compare's "Learning signals" sections: for each method other than SFT among the runs, what each run
optimised, side by side: the eval report's table (report/learning.py), one column per run, and the
method's headline figure per step, one line per run (GRPO: the weighted reward; DPO, ORPO, KTO: the
reward margin on the training pairs). SFT runs have their loss in compare's Loss section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from runner.core.outputs import TrainRow, TrainSummary

Figure = Callable[[TrainRow], float | None]
HEADLINE: dict[str, tuple[str, Figure]] = {
    "grpo": ("weighted reward", lambda r: r.reward),
    "dpo": ("reward margin, training pairs", lambda r: r.reward_margin),
    "orpo": ("reward margin, training pairs", lambda r: r.reward_margin),
    "kto": ("reward margin, training examples", lambda r: r.reward_margin)}


class Trained(Protocol):
    label: str
    artifacts: dict[str, Path]


def method_of(run: Trained) -> tuple[str, TrainSummary | None, list[TrainRow]]:
    """(method, summary.json, metrics.jsonl's rows) of the run's train artifact; SFT when it has none."""
    folder = run.artifacts.get("train")
    if folder is None or not (folder / "summary.json").is_file():
        return "sft", None, []
    summary = TrainSummary.read(folder / "summary.json")
    rows = TrainRow.read(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    return summary.method, summary, rows


def figures(method: str, summary: TrainSummary | None, rows: list[TrainRow]) -> dict[str, str]:
    """The report's learning table of one run as {figure: first -> last (or before -> after)}."""
    from runner.report.learning import grpo_rows, preference_rows, unit_of

    if method == "grpo":
        return {row[0]: row[1] for row in grpo_rows(rows)}
    unit = unit_of(method)
    found = {}
    for name, training, held_out in preference_rows(summary, rows):
        found[f"{name}, training {unit} (first -> last quarter)"] = training
        found[f"{name}, held-out {unit} (before -> after)"] = held_out
    return found


Read = tuple[str, TrainSummary | None, list[TrainRow]]


def learning_sections(runs: list[Any], folder: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """One section per method other than SFT, its picture written into `folder`."""
    read = {run.label: method_of(run) for run in runs}
    methods = dict.fromkeys(m for m, _, _ in read.values() if m in HEADLINE)
    found = [(f"Learning signals ({m})", _blocks(m, {k: v for k, v in read.items() if v[0] == m}, folder)) for m in methods]
    return [(title, blocks) for title, blocks in found if blocks]


def _blocks(method: str, read: dict[str, Read], folder: Path) -> list[tuple[Any, ...]]:
    """The picture, the table (a column per run) and the words, or none when no run logged a figure."""
    from runner.report.learning import GRPO_NOTE, KTO_NOTE, PREFERENCE_NOTE

    tables = {label: figures(method, summary, rows) for label, (_, summary, rows) in read.items()}
    names = list(dict.fromkeys(name for table in tables.values() for name in table))
    if not names:
        return []
    steps = ["steps", *(str(sum(1 for r in rows if r.loss is not None)) for _, _, rows in read.values())]
    table = [steps, *([name, *(t.get(name, "-") for t in tables.values())] for name in names)]
    note = GRPO_NOTE if method == "grpo" else PREFERENCE_NOTE + (KTO_NOTE if method == "kto" else "")
    return [*_picture(method, read, folder), ("table", ["", *read], table), ("p", note)]


def _picture(method: str, read: dict[str, Read], folder: Path) -> list[tuple[Any, ...]]:
    from runner.report.learning import plot_compared

    shown, figure = HEADLINE[method]
    series = {label: [(r.step, v) for r in rows if r.loss is not None and r.step is not None and (v := figure(r)) is not None]
              for label, (_, _, rows) in read.items()}
    if not any(series.values()):
        return []
    plot_compared(shown, series, folder / f"learning-{method}.png")
    return [("img", f"learning-{method}.png", f"{method}: {shown} per step, all {method} runs")]
