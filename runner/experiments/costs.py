"""What a compared run's training took (time, memory, parameters, tokens seen) and its loss curves,
read from the train and data stages' outputs. Light: no torch; compare calls it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from runner.core.outputs import DataStats, RunRecord, TrainRow, TrainSummary, optional_number


@dataclass(frozen=True)
class Cost:
    """What a run's training took, as the cost table shows it."""

    train_seconds: float | None  # the Trainer's runtime
    stage_seconds: float | None  # the whole train stage (loading and saving included)
    peak_memory_mib: float | None
    device: str | None
    trainable: int | None
    total: int | None
    steps: int | None
    tokens: int | None  # of the training examples seen


def training_cost(artifacts: dict[str, Path], record: RunRecord) -> Cost:
    """What the run's training took, from the train stage's summary, metrics log and manifest."""
    train, data = artifacts.get("train"), artifacts.get("data")
    summary = TrainSummary.read(train / "summary.json") if train else TrainSummary()
    stage_seconds = optional_number(train / "manifest.json", "info", "seconds") if train else None
    rows = TrainRow.read(train / "metrics.jsonl") if train else []
    stats = data / "stats.json" if data else None
    total = DataStats.read(stats).train_tokens.total if stats is not None and stats.exists() else None
    memory = [r.memory_mib for r in rows if r.memory_mib is not None]
    return Cost(summary.seconds, stage_seconds, max(memory) if memory else None, record.device, summary.trainable,
                summary.total, summary.steps, tokens_seen(rows, summary, total, record.batch_size))


def tokens_seen(rows: list[TrainRow], summary: TrainSummary, total: int | None, batch: int | None) -> int | None:
    """The Trainer's count where it logged one, else the data stage's token count of one epoch times the
    epochs trained: the Trainer's last logged epoch, else the steps over the steps an epoch takes (its
    last batch partial, not full)."""
    seen = [r.tokens_seen for r in rows if r.tokens_seen is not None]
    if seen:
        return round(seen[-1])
    if not total:
        return None
    epochs = next((r.epoch for r in reversed(rows) if r.epoch is not None), None)
    if epochs is None and summary.train_rows and summary.steps and batch:
        epochs = summary.steps / math.ceil(summary.train_rows / batch)
    return round(total * epochs) if epochs is not None else None


def curves(artifacts: dict[str, Path]) -> dict[str, list[tuple[float, float]]]:
    """Training loss per logged step, and validation loss before training, wherever logged, and after."""
    train = artifacts.get("train")
    rows = TrainRow.read(train / "metrics.jsonl") if train else []
    summary = TrainSummary.read(train / "summary.json") if train else TrainSummary()
    validation = [(float(r.step), r.eval_loss) for r in rows if r.step is not None and r.eval_loss is not None]
    before, after = _finite(summary.eval_loss_before), _finite(summary.eval_loss_after)
    if before is not None and not any(step == 0 for step, _ in validation):
        validation.insert(0, (0.0, before))
    last = summary.steps
    if after is not None and last is not None and not any(s == last for s, _ in validation):
        validation.append((float(last), after))
    return {"train": [(float(r.step), r.loss) for r in rows if r.step is not None and r.loss is not None],
            "validation": validation}


def _finite(x: float | None) -> float | None:
    """A loss the stage could not compute is written as NaN: no point on a curve."""
    return x if x is not None and math.isfinite(x) else None
