"""The first rows of every local data file a spec names, read at `validate` time: a column the spec
expects that none of them has is a spec problem, at the spec's line:col, beside every other problem,
before any stage runs (not in the data stage, after the model stage's download).

Light and bounded: the standard library reads JSON Lines, JSON and CSV; Parquet gives its column names
from its footer where pyarrow is installed, and is skipped where it is not. At most FIRST_ROWS rows and
MAX_BYTES bytes of a file are read, so a huge line, bad bytes or deeply nested JSON cannot crash or stall
`validate`: what cannot be read here is left to the data stage, which counts each bad row by reason.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.core.globwalk import has_glob
from runner.spec.rules import data_sources
from runner.spec.yamlpos import clip, format_path

FIRST_ROWS = 20
MAX_BYTES = 1 << 20  # 1 MiB: twenty rows of any real data set, read in milliseconds

Problems = list[tuple[tuple[Any, ...], str]]
# (where the field mapping is in the spec, or None for a built-in format's own columns; what reads the
# column, for the message; the columns any one of which will do)
Need = tuple[tuple[Any, ...] | None, str, tuple[str, ...]]


def row_problems(doc: dict[str, Any], base_dir: Path, written: Callable[[tuple[Any, ...]], bool]) -> Problems:
    """A problem for each column the spec expects that no first row of its file has. `written`: whether
    a path is in the spec as written (a problem points at the field mapping there, else at `path:`)."""
    found: Problems = []
    data = doc["data"]
    for where, src in data_sources(data):
        fmt = src.get("format") or data["format"]
        fields_at = where + ("fields",) if src.get("fields") is not None else ("data", "fields")
        fields = src.get("fields") or data["fields"]
        found += _check(src["path"], where, _source_needs(fmt, fields, fields_at), base_dir, written)
    for i, bench in enumerate(doc["eval"]["benchmarks"]):
        where = ("eval", "benchmarks", i)
        found += _check(bench["path"], where, _benchmark_needs(bench, where), base_dir, written)
    ppl = doc["eval"]["perplexity"]
    if ppl is not None and str(ppl["path"]).lower().endswith(".jsonl"):
        field = ("eval", "perplexity", "field")
        found += _check(ppl["path"], ("eval", "perplexity"), [(field, format_path(field), (ppl["field"],))],
                        base_dir, written)
    return found


def _source_needs(fmt: str, fields: dict[str, Any], at: tuple[Any, ...]) -> list[Need]:
    """The columns a training format reads through `fields` (optional ones, like alpaca's input, left out)."""
    names = {"multiple_choice": ["question", "options", "answer_key", "context"], "qa": ["question", "answer", "context"],
             "alpaca": ["instruction", "output"], "text": ["text"],
             "reasoning": ["question", "trace", "context"]}
    if fmt == "chat":  # a row is read from the named key, or from `messages` or `conversations`
        keys = tuple(dict.fromkeys((fields["messages"], "messages", "conversations")))
        return [(at + ("messages",), format_path(at + ("messages",)), keys)]
    needs: list[Need] = []
    for name in names.get(fmt, []):
        value = fields[name]
        for column in value if isinstance(value, list) else [value]:
            if column is not None:
                needs.append((at + (name,), format_path(at + (name,)), (column,)))
    return needs


BUILT_IN: dict[str, list[tuple[str, ...]]] = {  # a built-in benchmark format's columns, either layout
    "medqa": [("question", "sent1")], "pubmedqa": [("QUESTION", "question"), ("final_decision",)],
    "medmcqa": [("question",), ("opa",), ("opb",), ("opc",), ("opd",), ("cop",)]}


def _benchmark_needs(bench: dict[str, Any], where: tuple[Any, ...]) -> list[Need]:
    if bench["format"] in BUILT_IN:
        return [(None, f"format {bench['format']}", columns) for columns in BUILT_IN[bench["format"]]]
    return _source_needs(bench["format"], bench["fields"], where + ("fields",))


def _check(path: str | None, where: tuple[Any, ...], needs: list[Need], base_dir: Path,
           written: Callable[[tuple[Any, ...]], bool]) -> Problems:
    if path is None or not needs or has_glob(path):
        return []
    full = base_dir / path
    try:
        if not full.is_file():
            return []  # a missing file is the path rule's problem; a folder is a text source's documents
    except OSError:
        return []
    columns = first_columns(full)
    if not columns:
        return []
    found: Problems = []
    for at, what, wanted in needs:
        if columns.isdisjoint(wanted):
            seen = ", ".join(clip(c, 30) for c in sorted(columns)[:8]) + (", ..." if len(columns) > 8 else "")
            at_mapping = at is not None and written(at)  # else at `path:`, the message naming the field
            message = (f"no column {' or '.join(repr(clip(w, 40)) for w in wanted)}"
                       f"{'' if at_mapping else f' ({what})'} in the first rows of {clip(repr(path))}; "
                       f"its columns: {seen}")
            found.append((at if at_mapping and at is not None else where + ("path",), message))
    return found


def first_columns(path: Path) -> frozenset[str]:
    """Every column of the file's first rows (empty: none read here, and nothing is reported)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_columns(path)
    if suffix not in (".jsonl", ".json", ".csv"):
        return frozenset()
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAX_BYTES + 1)
    except OSError:
        return frozenset()
    cut = len(head) > MAX_BYTES  # the last line may be a part of one: left out
    head = head[:MAX_BYTES]
    if suffix == ".csv":
        return _csv_columns(head, cut)
    rows = _json_rows(head, cut) if suffix == ".json" else _json_lines(head, cut)
    return frozenset(key for row in itertools.islice(rows, FIRST_ROWS) for key in row)


def _json_lines(head: bytes, cut: bool) -> Iterator[dict[str, Any]]:
    lines = head.split(b"\n")
    for raw in lines[:-1] if cut else lines:
        row = _parse(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace"))
        if isinstance(row, dict):
            yield row


def _json_rows(head: bytes, cut: bool) -> Iterator[dict[str, Any]]:
    """A JSON document's rows (an array, `{"data": [...]}` or one row), or JSON Lines under a .json name.
    A document longer than MAX_BYTES is read element by element when it is an array."""
    text = head.decode("utf-8-sig", errors="replace")
    document = None if cut else _parse(text)
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if isinstance(document, list):
        yield from (row for row in document if isinstance(row, dict))
    elif isinstance(document, dict):
        yield document
    elif text.lstrip().startswith("["):
        yield from _array_items(text)
    else:
        yield from _json_lines(head, cut)


def _array_items(text: str) -> Iterator[dict[str, Any]]:
    decoder = json.JSONDecoder()
    at = text.index("[") + 1
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return  # the end of what was read, or a broken item: the data stage says which
        if isinstance(item, dict):
            yield item


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." deeper than the interpreter's stack
        return None


def _csv_columns(head: bytes, cut: bool) -> frozenset[str]:
    text = head.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1] if cut else text))
    try:
        header = next(reader, [])
    except csv.Error:  # a field over csv's size limit, a NUL byte
        return frozenset()
    return frozenset(name for name in header if name)


def _parquet_columns(path: Path) -> frozenset[str]:
    """A Parquet file's top-level column names, from its footer only, where pyarrow is installed."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return frozenset()
    try:
        return frozenset(pq.read_schema(path).names)
    except Exception:  # any unreadable file: the data stage names the error
        return frozenset()
