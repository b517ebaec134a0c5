"""Local data files read as rows: JSON Lines (whatever the extension says), JSON, CSV and Parquet,
streamed so memory does not grow with the file. A bad line or row is yielded as `Dropped` with its
reason, never raised; a file that cannot be read at all is a DataError naming it. Pure Python but
for Parquet (pyarrow, imported when such a file is read)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.core.errors import DataError
from runner.rows.formats import Dropped

ROW_BYTES = 64 << 20  # one row at most (a JSONL line, a CSV field): past it the row is dropped, not parsed


def row_bytes() -> int:
    """The bound on one row, `RUNNER_MAX_ROW_BYTES` where set (the tests lower it to stay fast)."""
    import os

    value = os.environ.get("RUNNER_MAX_ROW_BYTES", "")
    return int(value) if value.isdigit() and int(value) > 0 else ROW_BYTES


def read_local(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    """Rows of a local file. A bad line or row is yielded as Dropped, never raised; a file that cannot
    be read at all raises DataError naming it, and the line where there is one."""
    readers = {".jsonl": _read_json_lines, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix.lower()!r}; use .jsonl, .json, .csv or .parquet")
    try:
        yield from reader(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check the path in the spec") from exc


NOT_UTF8, NOT_JSON, TOO_DEEP = "not UTF-8", "not valid JSON", "not valid JSON (nested too deeply)"


def _parse_line(raw: bytes) -> dict[str, Any] | Dropped | None:
    """One JSON Lines row, or None for a blank line."""
    try:
        # A BOM is what some editors put before the first line; it is not part of the row.
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        return Dropped(NOT_UTF8)
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except RecursionError:  # "[[[[..." deeper than the interpreter's stack allows
        return Dropped(TOO_DEEP)
    except ValueError:
        return Dropped(NOT_JSON)
    return row if isinstance(row, dict) else Dropped("not a JSON object")


def _read_json_lines(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    limit = row_bytes()
    with open(path, "rb") as handle:  # bytes: one line of bad UTF-8 is one dropped row
        # A bounded readline: a 200 MB line is skipped in 1 MiB steps, never held or parsed whole.
        while raw := handle.readline(limit + 1):
            if len(raw) > limit and not raw.endswith(b"\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield Dropped(f"row over {limit} bytes")
                continue
            row = _parse_line(raw)
            if row is not None:
                yield row


def _read_json(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    """One document (an array of rows, `{"data": [...]}` or a single row), or JSON Lines under a
    `.json` name, as MedMCQA's own release (`dev.json`) is."""
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        yield from _json_lines_or_error(path, data, exc)
        return
    if isinstance(document, dict):
        rows = document["data"] if isinstance(document.get("data"), list) else [document]
    else:
        rows = document if isinstance(document, list) else [document]
    for row in rows:
        yield row if isinstance(row, dict) else Dropped("not a JSON object")


def _json_lines_or_error(path: Path, data: bytes, exc: Exception) -> list[dict[str, Any] | Dropped]:
    """The rows if the file is JSON Lines, else DataError for the broken document.

    JSON Lines if most lines parse on their own: that holds with a few broken rows (even a broken
    first one), and fails for a broken pretty-printed document, whose lines (`"a": 1,`) rarely do."""
    numbered = [(n, row) for n, row in enumerate(map(_parse_line, data.split(b"\n")), 1) if row is not None]
    unreadable = [n for n, row in numbered if isinstance(row, Dropped) and str(row) in (NOT_UTF8, NOT_JSON, TOO_DEEP)]
    if 2 * len(unreadable) < len(numbered):
        return [row for _, row in numbered]
    if isinstance(exc, UnicodeDecodeError):
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from exc
    if isinstance(exc, json.JSONDecodeError):
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    raise DataError(f"{path}:{unreadable[0] if unreadable else 1}: {TOO_DEEP}") from exc


def _read_csv(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    import csv

    # surrogateescape keeps a bad byte as a marker in its row, so only that row is dropped.
    limit, before = row_bytes(), csv.field_size_limit()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        csv.field_size_limit(limit)  # the default (128 KiB) stopped the whole file at one long field
        try:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    if "field larger than field limit" not in str(exc):
                        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc
                    yield Dropped(f"row over {limit} bytes")  # the reader goes on at the next line
                    continue
                yield row if _is_utf8(row) else Dropped(NOT_UTF8)
        finally:
            csv.field_size_limit(before)


def _is_utf8(row: dict[Any, Any]) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(path: Path) -> Iterator[dict[str, Any] | Dropped]:
    import pyarrow.parquet as pq  # comes with datasets

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)  # a batch at a time: memory stays flat
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else exc!r})") from exc
