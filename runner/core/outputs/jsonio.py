"""Reading and writing the store's JSON files: bounded, checked, one line naming the file and field.

Each reader checks what it reads (a regular file of bounded size, UTF-8 JSON of bounded depth, each
field's type, numbers finite where they must be) and raises OutputError: a reader of the store never
meets a shape it did not check, whoever wrote the file. Each writer writes the bytes the stage always
wrote (the formatting is part of the artifact's digest). Light: no torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

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


def real(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    """obj[key] as a number or None, kept as written (NaN included: a figure the stage could not make)."""
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise OutputError(f"{where}: {key} is {shown(value)}, not a number; {DAMAGED}")
    return value


def interval(obj: Mapping[str, Any], key: str, where: str) -> tuple[float, float] | None:
    """obj[key] as [low, high] (None when absent)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
        raise OutputError(f"{where}: {key} is {shown(value)}, not two numbers [low, high]; {DAMAGED}")
    return (value[0], value[1])


def optional_number(path: Path, *keys: str) -> float | None:
    """A finite number at `keys` in the JSON object at `path` (None when the file or a level is absent)."""
    if not path.exists():
        return None
    obj, where = load_object(path), str(path)
    for key in keys[:-1]:
        obj = mapping(obj, key, where)
    return number(obj, keys[-1], where, finite=False)


def dumps(data: Any, indent: int = 1, sort_keys: bool = True) -> str:
    """The text every stage writes its JSON in: indent 1, sorted keys (parity.json keeps its order)."""
    return json.dumps(data, indent=indent, sort_keys=sort_keys)


OutputT = TypeVar("OutputT", bound="JsonFile")


def stage_version(path: Path, stage: str, depth: int) -> int | None:
    """The version of the stage that wrote the file at `path`, from its artifact's manifest.json
    (`depth` folders up: 0 for stats.json, 1 for adapter/metadata.json); None outside an artifact of
    `stage` (a work folder, a file made by hand) or in a manifest that does not record one."""
    folder = path.parents[depth] if depth < len(path.parents) else path.parent
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    data = load_object(manifest)
    inputs = mapping(data, "inputs", str(manifest))
    if data.get("stage") != stage or "version" not in inputs:
        return None
    return integer(inputs, "version", f"{manifest}: inputs")


@dataclass(frozen=True)
class JsonFile:
    """One JSON object a stage writes: `raw` is the object as written (its bytes are in the stage's
    digest, so writing never reorders or reformats it); the subclass's fields are its checked, typed
    reading. VERSION is the version of the STAGE that writes the layout (a test keeps the two equal): it
    is not written into the file, whose bytes (and so every downstream key) stay what they were; the
    artifact's manifest records it, and `read` refuses a file of a stage version outside OLDEST..VERSION
    (a newer runner's layout) and a file without one of REQUIRED's keys, in one line."""

    raw: dict[str, Any] = field(kw_only=True, repr=False, compare=False)
    VERSION: ClassVar[int] = 1
    OLDEST: ClassVar[int] = 1  # the oldest stage version whose file this reader still reads
    STAGE: ClassVar[str | None] = None  # the stage that writes it (None: no stage, no manifest)
    DEPTH: ClassVar[int] = 0  # folders between the file and its artifact's folder
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # keys every version of the stage writes
    SORT_KEYS: ClassVar[bool] = True

    @classmethod
    def parse(cls: type[OutputT], data: dict[str, Any], where: str) -> OutputT:
        raise NotImplementedError

    @classmethod
    def checked(cls: type[OutputT], data: dict[str, Any], where: str) -> OutputT:
        missing = [key for key in cls.REQUIRED if key not in data]
        if missing:
            raise OutputError(f"{where}: no {missing[0]} in it, which the {cls.STAGE} stage always writes; the file is "
                              f"damaged or was not written by this runner: run that spec again with --force {cls.STAGE}")
        return cls.parse(data, where)

    @classmethod
    def of(cls: type[OutputT], data: dict[str, Any]) -> OutputT:
        """What a stage is about to write, checked as a reader will check it."""
        return cls.checked(data, cls.__name__)

    @classmethod
    def read(cls: type[OutputT], path: Path) -> OutputT:
        cls.check_version(path)
        return cls.checked(load_object(path), str(path))

    @classmethod
    def check_version(cls, path: Path) -> None:
        found = stage_version(path, cls.STAGE, cls.DEPTH) if cls.STAGE else None
        if found is not None and not cls.OLDEST <= found <= cls.VERSION:
            newer = found > cls.VERSION
            raise OutputError(f"{path}: written by the {cls.STAGE} stage version {found}, and this runner reads "
                              f"{cls.__name__} of versions {cls.OLDEST} to {cls.VERSION}; "
                              + ("read it with the runner that wrote it" if newer else
                                 f"run that spec again with --force {cls.STAGE}"))

    def dumped(self) -> str:
        return dumps(self.raw, sort_keys=self.SORT_KEYS)

    def write(self, path: Path) -> None:
        path.write_text(self.dumped(), "utf-8")


def write_atomic(path: Path, text: str) -> None:
    """Write-then-rename, so a reader (or a kill) never meets half a file; the temporary is removed on
    failure and the OSError raised."""
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # under a file or on a read-only mount there is nothing to remove
        raise
