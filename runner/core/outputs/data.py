"""The data stage's stats.json: rows kept and dropped, per source, and the tokens of the training set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.core.outputs.jsonio import JsonFile, integer, mapping, real


@dataclass(frozen=True)
class SourceStats:
    """What one source (of a mixture, or the one training file) gave."""

    read: int | None
    kept: int | None
    dropped_total: int | None
    tokens: int | None
    share: float | None  # of an epoch

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> SourceStats:
        return cls(integer(part, "read", where), integer(part, "kept", where), integer(part, "dropped_total", where),
                   integer(part, "tokens", where), real(part, "share", where))


@dataclass(frozen=True)
class Tokens:
    """Token counts of the tokenized training examples (one epoch)."""

    total: int | None
    max: int | None
    answer: int | None


@dataclass(frozen=True)
class DataStats(JsonFile):
    train_rows: int | None
    validation_rows: int | None
    train_tokens: Tokens
    sources: dict[str, SourceStats]
    epochs: int | None  # a mixture's epochs drawn; None for a single source
    VERSION = 1
    STAGE = "data"
    REQUIRED = ("train_tokens",)  # what train and compare read

    @property
    def mixture(self) -> bool:
        return self.epochs is not None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> DataStats:
        rows, tokens = mapping(data, "rows", where), mapping(data, "train_tokens", where)
        sources = mapping(data, "sources", where)
        epochs = data.get("epochs")
        return cls(integer(rows, "train", f"{where}: rows"), integer(rows, "validation", f"{where}: rows"),
                   Tokens(integer(tokens, "total", f"{where}: train_tokens"), integer(tokens, "max", f"{where}: train_tokens"),
                          integer(tokens, "answer", f"{where}: train_tokens")),
                   {name: SourceStats.parse(mapping(sources, name, where), f"{where}: sources.{name}") for name in sources},
                   len(epochs) if isinstance(epochs, list) else None, raw=data)
