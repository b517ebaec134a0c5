"""Typed readers of what the runner writes: a run record, the eval stage's metrics.json and
predictions.jsonl, the train stage's summary.json and metrics.jsonl, as `runner compare` reads them.

Each `read(path)` checks what it reads (a regular file of bounded size, UTF-8 JSON of bounded depth,
each field's type, numbers finite) and raises OutputError naming the file and the field: a reader of
the store never meets a shape it did not check, whoever wrote the file. Light: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.errors import RunnerError
from runner.core.files import NotRegularFile, TooLarge, read_regular

MAX_JSON_BYTES = 8 * 2**20  # a run record or metrics.json is a few kB; a few MB is already hostile
MAX_JSONL_BYTES = 256 * 2**20  # predictions of a large benchmark suite stay far below
MAX_DEPTH = 64  # the runner's own files nest a handful of levels
MAX_NAME = 200  # characters of a name (spec, benchmark) kept; longer is cut where shown, refused as a key
MAX_BENCHMARKS = 200  # benchmarks in one metrics.json: more is no eval this runner wrote
DAMAGED = "the artifact is damaged or was not written by this runner: run that spec again with --force eval"


class OutputError(RunnerError):
    """A file in the store is not what the stage that owns it writes."""

    exit_code = 6


def shown(value: Any, limit: int = 40) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value[:limit])
    return text if len(text) <= limit + 2 else text[:limit] + "..."


def cut(name: str, limit: int = MAX_NAME) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _regular_bytes(path: Path, limit: int) -> bytes:
    """The file's bytes, when it is a regular file under `limit` (a FIFO or /dev/zero would hang)."""
    try:
        return read_regular(path, limit)
    except NotRegularFile:
        raise OutputError(f"{path}: not a regular file; give a file the runner wrote") from None
    except TooLarge:
        raise OutputError(f"{path}: more than the {limit:,} bytes such a file can hold; {DAMAGED}") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parse(text: bytes, where: str) -> Any:
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise OutputError(f"{where}: not UTF-8 text; {DAMAGED}") from None
    except RecursionError:
        raise OutputError(f"{where}: JSON nested too deep (more than {MAX_DEPTH} levels); {DAMAGED}") from None
    except ValueError as exc:
        raise OutputError(f"{where}: not JSON ({str(exc)[:80]}); {DAMAGED}") from None
    if _depth(data) > MAX_DEPTH:
        raise OutputError(f"{where}: JSON nested too deep (more than {MAX_DEPTH} levels); {DAMAGED}")
    return data


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH and isinstance(item, (dict, list)):
            todo += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def load_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """JSON from a regular file of at most `limit` bytes, nested at most MAX_DEPTH deep."""
    return _parse(_regular_bytes(path, limit), str(path))


def load_object(path: Path, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    data = load_json(path, limit)
    if not isinstance(data, dict):
        raise OutputError(f"{path}: a JSON {type(data).__name__}, not an object; {DAMAGED}")
    return data


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; a missing file has none."""
    if not path.exists():
        return
    for number, line in enumerate(_regular_bytes(path, MAX_JSONL_BYTES).splitlines(), 1):
        if line.strip():
            row = _parse(line, f"{path} line {number}")
            if not isinstance(row, dict):
                raise OutputError(f"{path} line {number}: a JSON {type(row).__name__}, not an object; {DAMAGED}")
            yield number, row


def number(obj: dict[str, Any], key: str, where: str, finite: bool = True) -> float | None:
    """obj[key] as a number or None; a non-number is refused, a non-finite one refused (or None)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutputError(f"{where}: {key} is {shown(value)}, not a number; {DAMAGED}")
    if not math.isfinite(value):
        if finite:
            raise OutputError(f"{where}: {key} is {value}, not a finite number; {DAMAGED}")
        return None
    return value


def integer(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise OutputError(f"{where}: {key} is {shown(value)}, not a whole number; {DAMAGED}")
    return value


def text(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise OutputError(f"{where}: {key} is {shown(value)}, not text; {DAMAGED}")
    return value


def mapping(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """obj[key] as an object ({} when absent)."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OutputError(f"{where}: {key} is {shown(value)}, not an object; {DAMAGED}")
    return value


def plain_name(value: Any, where: str, key: str) -> str:
    """A name used as a folder of the store: text, no separator, not . or .., not too long."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or "\0" in value \
            or value in (".", "..") or len(value) > MAX_NAME:
        raise OutputError(f"{where}: {key} is {shown(value)}, not a stage name or key; {DAMAGED}")
    return value


@dataclass(frozen=True)
class RunRecord:
    """STORE/runs/<id>.json as runner.core.records writes it, the parts compare reads."""

    path: Path
    name: str  # the spec's name, cut to MAX_NAME characters
    spec: dict[str, Any]
    spec_path: str | None
    status: str | None
    started: float
    device: str | None
    batch_size: int | None
    stages: tuple[tuple[str, str], ...]  # (stage, key) of each stage that has a key

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        data, where = load_json(path), str(path)
        problem = ("" if isinstance(data, dict) else f"a JSON {type(data).__name__}, not a run record (an object)") \
            or ("" if isinstance(data.get("spec"), dict) else "no spec in it")
        stages = data.get("stages", []) if not problem else []
        if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("stage"), str) for s in stages):
            problem = "its stages are not a list of {stage, key}"
        if problem:
            raise OutputError(f"{path}: not a run record: {problem}; give a file from STORE/runs/ or a spec file")
        spec = data["spec"]
        keyed = tuple((plain_name(s.get("stage"), where, f"stages[{i}].stage"), plain_name(s["key"], where, f"stages[{i}].key"))
                      for i, s in enumerate(stages) if s.get("key") is not None)
        name = text(spec, "name", f"{where}: spec") or path.stem
        train = mapping(spec, "train", f"{where}: spec")
        batch = integer(train, "batch_size", f"{where}: spec.train")
        return cls(path, cut(name), spec, text(data, "spec_path", where), text(data, "status", where),
                   number(data, "started", where, finite=False) or 0.0,
                   text(mapping(data, "profile", where), "device", f"{where}: profile"),
                   batch if batch and batch > 0 else None, keyed)


def _score(entry: dict[str, Any], key: str, where: str) -> None:
    """An accuracy entry ({n, acc, ci95, ...}): acc in [0, 1], its interval two such numbers."""
    part = mapping(entry, key, where)
    here = f"{where}.{key}"
    acc = number(part, "acc", here)
    integer(part, "n", here)
    if acc is not None and not 0 <= acc <= 1:
        raise OutputError(f"{here}: acc is {acc}, not a fraction in [0, 1]; {DAMAGED}")
    ci = part.get("ci95")
    if (acc is not None or ci is not None) and (not isinstance(ci, list) or len(ci) != 2 or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1 for x in ci)):
        raise OutputError(f"{here}: ci95 is {shown(ci)}, not two fractions [low, high]; {DAMAGED}")
    if acc is not None and not ci[0] <= acc <= ci[1]:  # type: ignore[index]  # checked above
        raise OutputError(f"{here}: ci95 {shown(ci)} does not hold acc {acc}; {DAMAGED}")


@dataclass(frozen=True)
class EvalMetrics:
    """The eval stage's metrics.json: per benchmark the tuned (and base, generative) accuracy, checked;
    `data` is the whole object, its further figures read as they are by the report."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> EvalMetrics:
        data, where = load_object(path), str(path)
        benches = mapping(data, "benchmarks", where)
        if len(benches) > MAX_BENCHMARKS:
            raise OutputError(f"{path}: {len(benches):,} benchmarks, more than the {MAX_BENCHMARKS} compare shows; {DAMAGED}")
        for name, entry in benches.items():
            here = f"{where}: benchmarks.{cut(name, 60)}"
            if len(name) > MAX_NAME or not isinstance(entry, dict):
                raise OutputError(f"{here}: not a benchmark's scores (a name of at most {MAX_NAME} characters "
                                  f"and an object); {DAMAGED}")
            for label in ("tuned", "base"):
                _score(entry, label, here)
            generative = mapping(entry, "generative", here)
            for label in ("tuned", "base"):
                _score(generative, label, f"{here}.generative")
        free = mapping(data, "free_text", where)
        if not all(isinstance(v, dict) for v in free.values()) or len(free) > MAX_BENCHMARKS:
            raise OutputError(f"{where}: free_text is not an object of at most {MAX_BENCHMARKS} objects; {DAMAGED}")
        return cls(path, data)


Question = str | int | None


@dataclass(frozen=True)
class Prediction:
    """One row of the eval stage's predictions.jsonl, the fields a paired test needs."""

    benchmark: str
    question: Question  # the row's id, else its index
    answer: str | int
    tuned: str | int | None

    @classmethod
    def read(cls, path: Path) -> list[Prediction]:
        out = []
        for number_, row in jsonl_objects(path):
            where = f"{path} line {number_}"
            if not {"benchmark", "answer", "tuned"} <= set(row):
                raise OutputError(f"{where}: a row without benchmark, answer and tuned; {DAMAGED}")
            question = row["id"] if row.get("id") is not None else row.get("index")
            values = {"benchmark": row["benchmark"], "answer": row["answer"], "tuned": row["tuned"], "id": question}
            for key, value in values.items():
                if not (value is None and key in ("tuned", "id")) and (
                        isinstance(value, bool) or not isinstance(value, (str, int)) or (key == "benchmark" and not isinstance(value, str))):
                    raise OutputError(f"{where}: {key} is {shown(value)}, not text or a whole number; {DAMAGED}")
            out.append(cls(row["benchmark"], question, row["answer"], row["tuned"]))
        return out


@dataclass(frozen=True)
class TrainRow:
    """One row of the train stage's metrics.jsonl (a logging step or a validation), numbers only."""

    step: int | None
    loss: float | None
    eval_loss: float | None
    memory_mib: float | None
    tokens_seen: float | None
    epoch: float | None

    @classmethod
    def read(cls, path: Path) -> list[TrainRow]:
        out = []
        for number_, row in jsonl_objects(path):
            where = f"{path} line {number_}"
            out.append(cls(integer(row, "step", where), number(row, "loss", where, finite=False),
                           number(row, "eval_loss", where, finite=False), number(row, "memory_mib", where, finite=False),
                           number(row, "num_input_tokens_seen", where, finite=False), number(row, "epoch", where, finite=False)))
        return out


@dataclass(frozen=True)
class TrainSummary:
    """The train stage's summary.json, with its manifest's time and the data stage's token count."""

    seconds: float | None = None
    trainable: int | None = None
    total: int | None = None
    steps: int | None = None
    train_rows: int | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None

    @classmethod
    def read(cls, path: Path) -> TrainSummary:
        if not path.exists():
            return cls()
        data, where = load_object(path), str(path)
        return cls(number(data, "seconds", where, finite=False), integer(data, "trainable_parameters", where),
                   integer(data, "total_parameters", where), integer(data, "steps", where), integer(data, "train_rows", where),
                   number(data, "eval_loss_before", where, finite=False), number(data, "eval_loss_after", where, finite=False))


def optional_number(path: Path, *keys: str) -> float | None:
    """A finite number at `keys` in the JSON object at `path` (None when the file or a level is absent)."""
    if not path.exists():
        return None
    obj, where = load_object(path), str(path)
    for key in keys[:-1]:
        obj = mapping(obj, key, where)
    return number(obj, keys[-1], where, finite=False)
