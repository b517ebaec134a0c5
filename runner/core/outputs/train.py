"""The train stage's outputs: summary.json (losses, parameters, time) and metrics.jsonl's rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.outputs.jsonio import JsonFile, integer, jsonl_objects, mapping, number, real, text


@dataclass(frozen=True)
class TrainRow:
    """One row of the train stage's metrics.jsonl (a logging step or a validation), numbers only."""

    step: int | None
    loss: float | None
    eval_loss: float | None
    memory_mib: float | None
    tokens_seen: float | None
    epoch: float | None
    raw: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)  # the row as written

    @classmethod
    def of(cls, row: dict[str, Any], where: str = "TrainRow") -> TrainRow:
        return cls(integer(row, "step", where), number(row, "loss", where, finite=False),
                   number(row, "eval_loss", where, finite=False), number(row, "memory_mib", where, finite=False),
                   number(row, "num_input_tokens_seen", where, finite=False), number(row, "epoch", where, finite=False),
                   raw=row)

    @classmethod
    def read(cls, path: Path) -> list[TrainRow]:
        return [cls.of(row, f"{path} line {number_}") for number_, row in jsonl_objects(path)]

    def line(self) -> str:
        """The row as the train stage's MetricsLog writes it (json.dumps, keys in the order logged)."""
        return json.dumps(self.raw) + "\n"

    @classmethod
    def write(cls, path: Path, rows: list[TrainRow]) -> None:
        path.write_text("".join(row.line() for row in rows), "utf-8")


@dataclass(frozen=True)
class SourceLoss:
    """A mixture source's validation loss before and after training."""

    before: float | None
    after: float | None


@dataclass(frozen=True)
class EarlyStopping:
    reason: str
    best_step: int | None
    best_eval_loss: float | None


@dataclass(frozen=True)
class TrainSummary(JsonFile):
    """The train stage's summary.json (an absent one reads as all None: a run whose training is elsewhere)."""

    seconds: float | None = None
    trainable: int | None = None
    total: int | None = None
    steps: int | None = None
    train_rows: int | None = None
    validation_rows: int | None = None
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    by_source: dict[str, SourceLoss] | None = None
    early_stopping: EarlyStopping | None = None
    raw: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)  # TrainSummary(): no training
    VERSION = 4  # the train stage's version; summary.json's layout is that of version 1 with fields added
    STAGE = "train"
    REQUIRED = ("steps",)

    @classmethod
    def read(cls, path: Path) -> TrainSummary:
        return super().read(path) if path.exists() else cls()

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> TrainSummary:
        sources = mapping(data, "eval_loss_by_source", where)
        stop = mapping(data, "early_stopping", where)
        here = f"{where}: early_stopping"
        return cls(number(data, "seconds", where, finite=False), integer(data, "trainable_parameters", where),
                   integer(data, "total_parameters", where), integer(data, "steps", where),
                   integer(data, "train_rows", where), integer(data, "validation_rows", where),
                   real(data, "train_loss_first", where), real(data, "train_loss_last", where),
                   real(data, "eval_loss_before", where), real(data, "eval_loss_after", where),
                   {name: SourceLoss(real(mapping(sources, name, where), "before", where),
                                     real(mapping(sources, name, where), "after", where)) for name in sources},
                   EarlyStopping(text(stop, "reason", here) or "", integer(stop, "best_step", here),
                                 real(stop, "best_eval_loss", here)) if stop else None, raw=data)

