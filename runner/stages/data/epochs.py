"""The end of the data stage: a mixture's epochs drawn and written (train.arrow in training order,
epochs.jsonl saying which row of which source each one is), then stats.json and samples.txt.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from runner.core.outputs import DataStats
from runner.core.stage import StageContext
from runner.rows.mixture import Resolved, epoch_seed, is_mixture, quotas, schedule
from runner.stages.data.building import ArrowRows, Tally, row_kind, token_summary
from runner.stages.data.encoding import samples

CHUNK = 4096  # rows gathered from the sources' files at a time


def finish(ctx: StageContext, train: list[Resolved], tallies: dict[str, Tally], parts: Path, tok: Any) -> dict[str, Any]:
    """Write what is left (a mixture's epochs; stats.json; samples.txt) and return the stats."""
    names = [s.name for s in train]
    kept = {n: tallies[n].kept["train"] for n in names}
    mixture = is_mixture(ctx.spec)
    quota = quotas(train, kept) if mixture else kept
    for name in (n for n in quota if quota[n] > kept.get(n, 0) > 0):  # said, since a weight can hide it
        ctx.log(f"data: source {name} gives {quota[name]} rows an epoch from {kept[name]} kept: each row about "
                f"{quota[name] / kept[name]:.1f} times an epoch")
    epochs = _write_epochs(ctx, kept, quota, parts) if mixture else []
    stats = _stats(names, tallies, quota, epochs)
    write_stats(ctx.out, stats)
    (ctx.out / "samples.txt").write_text(samples(_first_rows(ctx.out / "train.arrow", 2), tok), "utf-8")
    return stats


def _stats(names: list[str], tallies: dict[str, Tally], quota: dict[str, int],
           epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """stats.json: rows kept and dropped by reason, token lengths, each source's share (and a mixture's epochs)."""
    total = sum(quota.values()) or 1
    lengths: Counter[int] = sum((tallies[n].lengths for n in names), Counter())
    every = list(tallies.values())
    stats = {
        "rows": {"train": sum(e["rows"] for e in epochs) if epochs else tallies[names[0]].kept["train"],
                 "validation": sum(t.kept["validation"] for t in every)},
        "dropped": dict(sorted(sum((t.dropped for t in every), Counter()).items())),
        "examples_before_tokenizing": sum(t.examples for t in every),
        "train_tokens": token_summary(lengths, sum(tallies[n].answer for n in names)),
        "sources": {n: tallies[n].as_dict(quota[n] / total) for n in names},
        "validation_sources": {n.removeprefix("validation/"): t.as_dict(0.0) for n, t in tallies.items()
                               if n.startswith("validation/")},
    }
    if any(t.truncated for t in every):  # reasoning examples kept with their trace cut: said, not silent
        stats["truncated"] = {n: t.truncated for n, t in tallies.items() if t.truncated}
    if epochs:
        stats["epochs"] = [{k: e[k] for k in ("epoch", "seed", "rows", "by_source")} for e in epochs]
    return stats


def _write_epochs(ctx: StageContext, kept: dict[str, int], quota: dict[str, int], parts: Path) -> list[dict[str, Any]]:
    """train.arrow: every epoch's rows in order, gathered from the sources' files (memory-mapped, a
    chunk at a time); epochs.jsonl: one line per epoch with its seed and its (source, row, block) list,
    `row` counting the source's rows as read (the numbering of its dropped rows), `block` a text
    document's block."""
    import pyarrow as pa

    spec = ctx.spec
    tables = {n: pa.ipc.open_file(pa.memory_map(str(parts / f"{n}.arrow"))).read_all() for n in kept if kept[n]}
    plan = schedule(kept, quota, spec.data.replacement, spec.seed, spec.train.epochs)
    out = ArrowRows(ctx.out / "train.arrow", kind=row_kind(spec))
    written = []
    with open(ctx.out / "epochs.jsonl", "w", encoding="utf-8") as log:
        for epoch, order in enumerate(plan):
            origins: list[list[Any]] = []
            for start in range(0, len(order), CHUNK):
                table = _gather(tables, order[start : start + CHUNK])
                origins += [[s, r, b] for s, r, b in zip(*(table.column(c).to_pylist() for c in ("source", "row", "block")))]
                out.write_table(table)
            by_source = dict(sorted(Counter(s for s, _ in order).items()))
            line = {"epoch": epoch, "seed": epoch_seed(spec.seed, epoch), "rows": len(order), "by_source": by_source,
                    "order": origins}
            log.write(json.dumps(line, separators=(",", ":")) + "\n")
            written.append({k: v for k, v in line.items() if k != "order"})  # the order is on disk, not held
            ctx.log(f"data: epoch {epoch}: {len(order)} rows " + ", ".join(f"{k} {v}" for k, v in by_source.items()))
            del origins, order, line  # before the next epoch is drawn: the peak is one epoch, not two
    out.close()
    return written


def _gather(tables: dict[str, Any], chunk: list[tuple[str, int]]) -> Any:
    """The rows of `chunk` ((source, index) pairs) as one table, in the chunk's order."""
    import pyarrow as pa

    pieces, offsets, at = [], {}, 0
    for name in sorted({s for s, _ in chunk}):
        wanted = [i for s, i in chunk if s == name]
        pieces.append(tables[name].take(pa.array(wanted, pa.int64())))
        offsets[name] = at
        at += len(wanted)
    seen: Counter[str] = Counter()
    position = []
    for name, _ in chunk:
        position.append(offsets[name] + seen[name])
        seen[name] += 1
    return pa.concat_tables(pieces).take(pa.array(position, pa.int64())).combine_chunks()


def _first_rows(path: Path, n: int) -> list[dict[str, list[int]]]:
    import pyarrow as pa

    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in batch.slice(0, n).to_pylist()]
    return []


def write_stats(out: Path, stats: dict[str, Any]) -> None:
    """stats.json through its type (checked as its readers check it), its keys sorted: the same stats are the
    same bytes (the file is in the artifact's digest)."""
    DataStats.of(stats).write(out / "stats.json")
