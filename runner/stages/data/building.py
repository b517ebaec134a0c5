"""The data stage's passes over one source, and the Arrow files they write a batch at a time.

Nothing here holds a source's rows: they stream from the reader through conversion and tokenizing
into the writers, so the stage's peak memory is that of a batch (plus a byte per example for the
held-out split, and a length histogram). bench/data_memory.py measures it.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.rows.formats import THINKING, Dropped, Example, document_text, to_example
from runner.rows.mixture import Resolved, resolved
from runner.rows.pairs import Labelled, Pair, to_labelled, to_pair
from runner.rows.reading import read_source
from runner.spec.typed import Reasoning, Spec
from runner.stages.data.encoding import encode, encode_pair, fit_trace, text_blocks

BATCH = 1024  # rows per Arrow record batch at most: the unit of memory while writing...
BATCH_TOKENS = 65536  # ...or fewer when rows are long: a buffered token is a Python int (~36 bytes)


def row_kind(spec: Spec) -> str:
    """What a row of train.arrow holds: a pair (`preference`), a labelled completion (`kto`) or an
    example (`sft`); the method's rules keep every source of a spec in one of them."""
    formats = {src.format for role in ("train", "validation") for src in resolved(spec, role)}
    return next((f for f in ("preference", "kto") if f in formats), "sft")


class ArrowRows:
    """Rows (input_ids, labels, source, and where they came from) appended to an Arrow file in batches.
    `extra`: also the row's origin (source row, block), for a mixture's per-source parts. `kind`: the
    preference methods' rows add the rejected answer (input_ids and labels hold the chosen) or whether
    the completion is desirable (see runner.rows.pairs)."""

    def __init__(self, path: Path, extra: bool = False, random_access: bool = False, kind: str = "sft") -> None:
        import pyarrow as pa

        columns = [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("source", pa.string())]
        if kind == "preference":
            columns += [("rejected_ids", pa.list_(pa.int32())), ("rejected_labels", pa.list_(pa.int32()))]
        elif kind == "kto":
            columns += [("desirable", pa.bool_())]
        columns += [("row", pa.int64()), ("block", pa.int32())] if extra else []
        self.schema = pa.schema(columns)
        self.sink = pa.OSFile(str(path), "wb")
        new = pa.ipc.new_file if random_access else pa.ipc.new_stream  # stream: what Dataset.from_file maps
        self.writer = new(self.sink, self.schema)
        self.buffer: list[dict[str, Any]] = []
        self.tokens = 0

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        self.tokens += len(row["input_ids"])
        if len(self.buffer) >= BATCH or self.tokens >= BATCH_TOKENS:
            self.flush()

    def write_table(self, table: Any) -> None:
        self.flush()
        self.writer.write_table(table.select(self.schema.names).cast(self.schema))

    def flush(self) -> None:
        import pyarrow as pa

        if self.buffer:
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.buffer, schema=self.schema))
            self.buffer, self.tokens = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.sink.close()


@dataclass
class Tally:
    """What one source gave: rows read, kept per part, dropped by reason, training tokens."""

    read: int = 0
    examples: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    answer: int = 0
    lengths: Counter[int] = field(default_factory=Counter)  # a histogram: bounded by max_length, not the data
    truncated: int = 0  # reasoning examples kept with their trace cut to fit max_length

    def line(self) -> str:
        """What the log says of the source."""
        cut = f", {self.truncated} with the trace cut to data.max_length" if self.truncated else ""
        return f"{self.read} rows read, {sum(self.kept.values())} kept, {sum(self.dropped.values())} dropped{cut}"

    def as_dict(self, share: float) -> dict[str, Any]:
        return {"read": self.read, "kept": sum(self.kept.values()), "train": self.kept["train"],
                "validation": self.kept["validation"], "dropped": dict(sorted(self.dropped.items())),
                "dropped_total": sum(self.dropped.values()), "tokens": self.tokens, "share": round(share, 4)} | (
                    {"truncated": self.truncated} if self.truncated else {})  # only where a trace was cut


def _examples(src: Resolved, paths: list[Path], limit: int | None, tally: Tally | None,
              thinking: Reasoning = THINKING) -> Iterator[Any]:
    """(row number, example or document text) of every row that converts; the others counted in `tally`.
    `thinking`: how a reasoning source writes its traces."""
    for number, row in enumerate(read_source(src.source, paths, src.format, limit)):
        if tally is not None:
            tally.read += 1
        try:
            if isinstance(row, Dropped):
                raise row
            yield number, (document_text(row, src.fields.text) if src.format == "text"
                           else to_pair(row, src.fields) if src.format == "preference"
                           else to_labelled(row, src.fields) if src.format == "kto"
                           else to_example(row, src.format, src.fields, thinking))
        except Dropped as reason:
            if tally is not None:
                tally.dropped[str(reason)] += 1


def held_out(src: Resolved, paths: list[Path], limit: int | None, fraction: float, seed: int) -> bytearray:
    """A byte per example, 1 where it is held out for validation: `fraction` of them, chosen by `seed`
    (the same draw as a shuffle of the whole list, so a source splits as it always has). A first
    pass that converts without tokenizing, to count them."""
    n = sum(1 for _ in _examples(src, paths, limit, None))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = bytearray(n)
    for i in itertools.islice(order, round(n * fraction) if n > 1 else 0):
        held[i] = 1
    del order
    return held


def build_source(src: Resolved, paths: list[Path], spec: Spec, tok: Any, held: bytearray | None,
                 sinks: dict[str, ArrowRows], tally: Tally) -> None:
    """Read, convert, tokenize and write one source. `held`: which examples go to validation (None:
    all to `src.role`)."""
    limit = spec.data.max_rows if src.role == "train" else None
    for index, (number, example) in enumerate(_examples(src, paths, limit, tally, spec.data.reasoning)):
        tally.examples += 1
        part = "validation" if src.role == "validation" or (held is not None and held[index]) else "train"
        try:
            rows = _encode(example, tok, spec, tally if src.format == "reasoning" else None)
        except Dropped as reason:
            tally.dropped[str(reason)] += 1
            continue
        block = -1
        for block, row in enumerate(rows):
            sinks[part].add({**row, "source": src.name, "row": number, "block": block})
            tally.kept[part] += 1
            if part == "train":
                # A pair trains on both sequences: the longer sets the memory, both count as tokens.
                tally.lengths[max(len(row["input_ids"]), len(row.get("rejected_ids", ())))] += 1
                tally.tokens += len(row["input_ids"]) + len(row.get("rejected_ids", ()))
                tally.answer += sum(1 for x in [*row["labels"], *row.get("rejected_labels", ())] if x != -100)
        if block < 0:
            tally.dropped["text of one token"] += 1


def _encode(example: Example | Pair | Labelled | str, tok: Any, spec: Spec,
            reasoning: Tally | None = None) -> Iterable[dict[str, Any]]:
    """A document's blocks as they are made (none: a text of one token), or an example's one row.
    `reasoning`: the tally of a reasoning source, whose traces may be cut to fit (and counted there)."""
    d = spec.data
    if isinstance(example, str):
        return text_blocks(example, tok, d.max_length)
    if isinstance(example, (Pair, Labelled)):
        return [encode_pair(example, tok, d.template, d.system_prompt, d.max_length)]
    if reasoning is not None and d.reasoning.too_long == "truncate":
        ids, labels, cut = fit_trace(example, tok, d.template, d.system_prompt, d.reasoning, d.max_length)
        reasoning.truncated += cut
        return [{"input_ids": ids, "labels": labels}]
    ids, labels = encode(example, tok, d.template, d.system_prompt, d.reasoning if reasoning is not None else None)
    if len(ids) > d.max_length:
        raise Dropped(f"longer than data.max_length ({d.max_length} tokens)")
    return [{"input_ids": ids, "labels": labels}]


def token_summary(lengths: Counter[int], answer: int) -> dict[str, Any]:
    """Training-token figures from a length histogram (exact: the p50 and p95 of the sorted lengths)."""
    n = sum(lengths.values())
    total = sum(length * count for length, count in lengths.items())

    def nth(k: int) -> int:
        seen = 0
        for length in sorted(lengths):
            seen += lengths[length]
            if seen > k:
                return length
        return 0

    return {"total": total, "answer": answer, "min": min(lengths), "max": max(lengths),
            "mean": round(total / n, 1), "p50": nth(n // 2), "p95": nth(min(n - 1, int(n * 0.95)))}
