"""Where the data stage's rows come from, read as they are consumed so memory does not grow with
the data: local files line by line (Parquet batch by batch), Hub sets through `datasets` streaming,
and a text source's documents (.txt/.md files read whole, or a column of a JSONL/Parquet file).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runner.core.errors import DataError
from runner.rows.formats import TEXT_KEY, Dropped
from runner.rows.rowfiles import read_local
from runner.spec.rules import TEXT_SUFFIXES
from runner.spec.typed import Benchmark, Source

DOCUMENT_BYTES = 64 << 20  # one .txt/.md document at most: past it the file is dropped, never read whole


def document_bytes() -> int:
    """The bound on one document, `RUNNER_MAX_DOCUMENT_BYTES` where set (the tests lower it to stay fast)."""
    value = os.environ.get("RUNNER_MAX_DOCUMENT_BYTES", "")
    return int(value) if value.isdigit() and int(value) > 0 else DOCUMENT_BYTES


def read_rows(src: Source | Benchmark, path: Path | None, limit: int | None) -> Iterable[dict[str, Any] | Dropped]:
    """The rows of a training source or a benchmark (both name a local file or a Hub dataset the same
    way): from `path`, the file whose digest is in the key, else from the Hub at the source's revision.
    `limit`: the first rows only, dropped ones counted. Read as they are consumed."""
    if path is not None:
        return itertools.islice(read_local(path), limit)
    return _hub_rows(src, limit)


def _hub_rows(src: Source | Benchmark, limit: int | None) -> Iterator[dict[str, Any]]:
    """A Hub set's rows. A training source streams (`datasets` streaming: shards fetched and parsed as
    the rows are read, never the whole set in memory); a benchmark, small, is loaded as before, from
    the local cache when there is one. Cannot run here: the tests have no network."""
    import datasets

    assert src.hub is not None  # the spec gives a source exactly one of path and hub
    if isinstance(src, Benchmark):
        ds = datasets.load_dataset(src.hub, src.config, split=src.split, revision=src.revision)
        yield from (ds.select(range(min(limit, len(ds)))) if limit else ds)
        return
    streamed = datasets.load_dataset(src.hub, src.config, split=src.split, revision=src.revision, streaming=True)
    yield from (streamed.take(limit) if limit else streamed)


def read_source(src: Source, paths: list[Path], fmt: str, limit: int | None) -> Iterator[dict[str, Any] | Dropped]:
    """A training source's rows, in order. A text source may be many files: .txt/.md files give one
    document each (under the column `text_column`'s name, so every text row looks alike)."""
    if src.hub is not None:
        yield from read_rows(src, None, limit)
        return
    if fmt != "text":
        yield from read_rows(src, paths[0], limit)
        return
    yield from itertools.islice(_documents(paths), limit)


def _documents(paths: list[Path]) -> Iterator[dict[str, Any] | Dropped]:
    for path in paths:
        if path.suffix.lower() not in TEXT_SUFFIXES:
            yield from read_local(path)
            continue
        yield _document(path, document_bytes())


def _document(path: Path, limit: int) -> dict[str, Any] | Dropped:
    """One .txt/.md file as a document, or why it is not one: too big to read whole, not UTF-8, or
    binary (a NUL byte: no text file holds one, and a NUL-filled file tokenizes into garbage)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check the path in the spec") from exc
    if len(data) > limit:
        return Dropped(f"document over {limit} bytes")
    if b"\x00" in data:
        return Dropped("not text (NUL bytes)")
    try:
        return {TEXT_KEY: data.decode("utf-8-sig")}
    except UnicodeDecodeError:
        return Dropped("not UTF-8")
