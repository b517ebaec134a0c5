"""The eval stage's outputs: metrics.json (per benchmark accuracy, its interval, the paired test,
generative accuracy, calibration; free-text scores; perplexity) and predictions.jsonl's rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.outputs.jsonio import (
    DAMAGED,
    MAX_BENCHMARKS,
    MAX_NAME,
    JsonFile,
    OutputError,
    cut,
    integer,
    interval,
    jsonl_objects,
    mapping,
    real,
    shown,
    text,
)

LABELS = ("base", "tuned")  # the two models every figure is given for, in the order shown


@dataclass(frozen=True)
class Score:
    """An accuracy entry ({n, correct, acc, ci95}); acc and its interval are None when n is 0."""

    n: int | None = None
    acc: float | None = None
    ci95: tuple[float, float] | None = None
    unreadable: int | None = None  # generative: answers no choice could be read from

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> Score:
        acc = real(part, "acc", where)
        if acc is not None and not 0 <= acc <= 1:
            raise OutputError(f"{where}: acc is {acc}, not a fraction in [0, 1]; {DAMAGED}")
        raw_ci = part.get("ci95")
        ci = None if acc is None and raw_ci in (None, [None, None]) else interval(part, "ci95", where)
        if acc is not None and (ci is None or not all(0 <= x <= 1 for x in ci)):
            raise OutputError(f"{where}: ci95 is {shown(raw_ci)}, not two fractions [low, high]; {DAMAGED}")
        if acc is not None and ci is not None and not ci[0] <= acc <= ci[1]:
            raise OutputError(f"{where}: ci95 {shown(raw_ci)} does not hold acc {acc}; {DAMAGED}")
        return cls(integer(part, "n", where), acc, ci, integer(part, "unreadable", where))


def score(obj: dict[str, Any], label: str, where: str) -> Score | None:
    return Score.parse(mapping(obj, label, where), f"{where}.{label}") if label in obj else None


@dataclass(frozen=True)
class Paired:
    """The paired test of two models on the same questions (delta = second minus first)."""

    delta: float | None
    ci95: tuple[float, float] | None
    mcnemar_p: float | None
    only_base_right: int | None
    only_tuned_right: int | None

    @classmethod
    def parse(cls, obj: dict[str, Any], key: str, where: str) -> Paired | None:
        part, here = mapping(obj, key, where), f"{where}.{key}"
        if not part:
            return None
        ci = None if part.get("ci95") in (None, [None, None]) else interval(part, "ci95", here)
        return cls(real(part, "delta", here), ci, real(part, "mcnemar_p", here),
                   integer(part, "only_base_right", here), integer(part, "only_tuned_right", here))


@dataclass(frozen=True)
class Generative:
    """Accuracy of the answers read off greedy text (eval.generative)."""

    tuned: Score
    base: Score | None
    paired: Paired | None
    max_new_tokens: int | None

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> Generative:
        return cls(score(part, "tuned", where) or Score(), score(part, "base", where), Paired.parse(part, "paired", where),
                   integer(part, "max_new_tokens", where))


@dataclass(frozen=True)
class Calibrated:
    """One model's calibration figures."""

    ece: float | None
    brier: float | None
    confidence: float | None
    selective_acc: dict[str, float | None]  # coverage in percent, as text ("20") -> accuracy

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> Calibrated:
        selective = mapping(part, "selective_acc", where)
        return cls(real(part, "ece", where), real(part, "brier", where), real(part, "confidence", where),
                   {k: real(selective, k, f"{where}.selective_acc") for k in selective})


@dataclass(frozen=True)
class Benchmark:
    """One multiple-choice benchmark's entry; `raw` keeps the figures read as they are (groups,
    contamination, reliability bins) for the report's tables."""

    tuned: Score
    base: Score | None = None
    paired: Paired | None = None
    generative: Generative | None = None
    calibration: dict[str, Calibrated] = field(default_factory=dict)  # base / tuned
    dropped: dict[str, int] = field(default_factory=dict)
    format: str | None = None
    harness_task: str | None = None
    chance: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, entry: Any, name: str, where: str) -> Benchmark:
        here = f"{where}: benchmarks.{cut(name, 60)}"
        if len(name) > MAX_NAME or not isinstance(entry, dict):
            raise OutputError(f"{here}: not a benchmark's scores (a name of at most {MAX_NAME} characters "
                              f"and an object); {DAMAGED}")
        gen = mapping(entry, "generative", here)
        cal = mapping(entry, "calibration", here)
        dropped = mapping(entry, "dropped", here)
        return cls(score(entry, "tuned", here) or Score(), score(entry, "base", here), Paired.parse(entry, "paired", here),
                   Generative.parse(gen, f"{here}.generative") if "generative" in entry else None,
                   {label: Calibrated.parse(mapping(cal, label, f"{here}.calibration"), f"{here}.calibration.{label}")
                    for label in LABELS if label in cal},
                   {k: integer(dropped, k, f"{here}.dropped") or 0 for k in dropped},
                   text(entry, "format", here), text(entry, "harness_task", here), real(entry, "chance", here), entry)


@dataclass(frozen=True)
class FreeText:
    """A free-text benchmark: ROUGE-L and BLEU per model."""

    n: int | None
    format: str | None
    max_new_tokens: int | None
    scores: dict[str, dict[str, float | None]]  # base / tuned -> rougeL, bleu

    @classmethod
    def parse(cls, entry: dict[str, Any], where: str) -> FreeText:
        scores = {label: {k: real(mapping(entry, label, where), k, f"{where}.{label}") for k in ("rougeL", "bleu")}
                  for label in LABELS if label in entry}
        return cls(integer(entry, "n", where), text(entry, "format", where), integer(entry, "max_new_tokens", where),
                   scores)


@dataclass(frozen=True)
class Perplexity:
    """Perplexity of each model on a held-out corpus (eval.perplexity)."""

    path: str | None
    tokens: int | None
    texts: int | None
    max_length: int | None
    ppl: dict[str, float | None]  # base / tuned
    nll: dict[str, float | None]

    @classmethod
    def parse(cls, part: dict[str, Any], where: str) -> Perplexity:
        models = {label: mapping(part, label, where) for label in LABELS if label in part}
        return cls(text(part, "path", where), integer(part, "tokens", where), integer(part, "texts", where),
                   integer(part, "max_length", where),
                   {label: real(m, "ppl", f"{where}.{label}") for label, m in models.items()},
                   {label: real(m, "nll", f"{where}.{label}") for label, m in models.items()})


@dataclass(frozen=True)
class EvalMetrics(JsonFile):
    """The eval stage's metrics.json, checked; its further figures are in `raw`, read as they are."""

    benchmarks: dict[str, Benchmark]
    free_text: dict[str, FreeText]
    perplexity: Perplexity | None
    chat_template: bool | None
    VERSION = 6  # the eval stage's version (6 added calibration); older layouts have fewer fields, all optional here
    STAGE = "eval"
    REQUIRED = ("benchmarks",)

    @property
    def data(self) -> dict[str, Any]:
        return self.raw

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> EvalMetrics:
        benches = mapping(data, "benchmarks", where)
        if len(benches) > MAX_BENCHMARKS:
            raise OutputError(f"{where}: {len(benches):,} benchmarks, more than the {MAX_BENCHMARKS} compare shows; {DAMAGED}")
        free = mapping(data, "free_text", where)
        if not all(isinstance(v, dict) for v in free.values()) or len(free) > MAX_BENCHMARKS:
            raise OutputError(f"{where}: free_text is not an object of at most {MAX_BENCHMARKS} objects; {DAMAGED}")
        ppl = mapping(data, "perplexity", where)
        template = data.get("chat_template")
        return cls({name: Benchmark.parse(entry, name, where) for name, entry in benches.items()},
                   {name: FreeText.parse(entry, f"{where}: free_text.{cut(name, 60)}") for name, entry in free.items()},
                   Perplexity.parse(ppl, f"{where}: perplexity") if ppl else None,
                   template if isinstance(template, bool) else None, raw=data)


Question = str | int | None


@dataclass(frozen=True)
class Prediction:
    """One row of the eval stage's predictions.jsonl, the fields a paired test needs."""

    benchmark: str
    question: Question  # the row's id, else its index
    answer: str | int
    tuned: str | int | None
    raw: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)  # the row as written

    @classmethod
    def read(cls, path: Path) -> list[Prediction]:
        return list(cls.rows(path))

    @classmethod
    def rows(cls, path: Path) -> Iterator[Prediction]:
        for number_, row in jsonl_objects(path):
            yield cls.of(row, f"{path} line {number_}")

    @classmethod
    def of(cls, row: dict[str, Any], where: str = "Prediction") -> Prediction:
        if not {"benchmark", "answer", "tuned"} <= set(row):
            raise OutputError(f"{where}: a row without benchmark, answer and tuned; {DAMAGED}")
        question = row["id"] if row.get("id") is not None else row.get("index")
        values = {"benchmark": row["benchmark"], "answer": row["answer"], "tuned": row["tuned"], "id": question}
        for key, value in values.items():
            if not (value is None and key in ("tuned", "id")) and (
                    isinstance(value, bool) or not isinstance(value, (str, int)) or (key == "benchmark" and not isinstance(value, str))):
                raise OutputError(f"{where}: {key} is {shown(value)}, not text or a whole number; {DAMAGED}")
        return cls(row["benchmark"], question, row["answer"], row["tuned"], raw=row)

    def line(self) -> str:
        """The row as the eval stage writes it (json.dumps, non-ASCII kept, keys in the order scored)."""
        return json.dumps(self.raw, ensure_ascii=False) + "\n"

    @classmethod
    def write(cls, path: Path, rows: list[Prediction]) -> None:
        path.write_text("".join(row.line() for row in rows), "utf-8")
