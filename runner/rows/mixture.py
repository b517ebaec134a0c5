"""Mixtures: the training sources of a spec, each resolved (name, format, fields), and the rows of
each source that make up each epoch.

Light (no torch): the data stage samples with it, `plan` and the summary describe it, the
contamination check walks its sources. Sampling is pure and seeded: one seed per epoch, derived
from the spec's `seed`, so the same spec always trains on the same rows in the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.core.errors import DataError
from runner.core.globwalk import has_glob
from runner.core.outputs import DataStats
from runner.spec.rules import document_files, source_name
from runner.spec.typed import Fields, Source, Spec


@dataclass(frozen=True)
class Resolved:
    """One source with the `data` defaults applied: what the data stage and the checks read."""

    role: str  # "train" or "validation"
    name: str
    source: Source
    format: str
    fields: Fields
    weight: float | None
    rows: int | None


def is_mixture(spec: Spec) -> bool:
    """`data.train` written as a list: the data stage samples each epoch (and writes epochs.jsonl)."""
    return isinstance(spec.data.train, tuple)


def resolved(spec: Spec, role: str) -> list[Resolved]:
    """The sources of `role` (train or validation) in spec order; the one-source form is named after its role."""
    d = spec.data
    value = d.train if role == "train" else d.validation
    if value is None:
        return []
    if isinstance(value, Source):
        return [Resolved(role, role, value, d.format, d.fields, None, None)]
    return [Resolved(role, s.name or source_name(s.path, s.hub), s, s.format or d.format, s.fields or d.fields,
                     s.weight, s.rows) for s in value]


def local_paths(spec: Spec, src: Resolved) -> list[Path]:
    """The local files a source reads, sorted: one file, or a text source's folder or glob."""
    if src.source.path is None:
        return []
    path = spec.resolve(src.source.path)
    if src.format == "text" and (has_glob(src.source.path) or path.is_dir()):
        return document_files(Path(spec.base_dir), src.source.path)
    return [path]


def file_roles(spec: Spec, src: Resolved, one_source: bool) -> dict[str, Path]:
    """The files of a source under the roles their digests enter the key by. The one-source form keeps
    its role name (`train`) for a single file, so its keys are what they were."""
    paths = local_paths(spec, src)
    prefix = src.role if one_source else f"{src.role}/{src.name}"
    if len(paths) == 1 and src.source.path is not None and spec.resolve(src.source.path) == paths[0]:
        return {prefix: paths[0]}
    base = _common_folder(paths)
    return {f"{prefix}/{p.relative_to(base)}": p for p in paths}


def _common_folder(paths: list[Path]) -> Path:
    if not paths:
        return Path("/")
    parts = [p.parent.parts for p in paths]
    common = parts[0]
    for other in parts[1:]:
        n = 0
        while n < min(len(common), len(other)) and common[n] == other[n]:
            n += 1
        common = common[:n]
    return Path(*common)


def quotas(sources: list[Resolved], kept: dict[str, int]) -> dict[str, int]:
    """Rows of each source in one epoch: `rows` as given; weighted sources share the rows they hold
    together in proportion to their weights; a source with neither gives every row once."""
    weighted = [s for s in sources if s.weight is not None]
    pool = sum(kept[s.name] for s in weighted)
    total_weight = sum(s.weight for s in weighted if s.weight is not None)
    out = {}
    for s in sources:
        if s.rows is not None:
            out[s.name] = s.rows
        elif s.weight is not None:
            out[s.name] = round(pool * s.weight / total_weight)
        else:
            out[s.name] = kept[s.name]
    for s in weighted:  # a weight so small beside the others that it rounds to nothing would vanish unseen
        if kept[s.name] and not out[s.name]:
            raise DataError(f"data.train: source {s.name}'s weight {s.weight:g} gives it 0 of its {kept[s.name]} rows "
                            f"an epoch (the weights add up to {total_weight:g}); raise its weight or remove it")
    return {name: (q if kept[name] else 0) for name, q in out.items()}  # an empty source gives nothing


def epoch_seed(seed: int, epoch: int) -> int:
    """Epoch `epoch`'s sampling seed, derived from the spec's seed (stable across Python versions)."""
    return random.Random(f"mixture/{seed}/{epoch}").getrandbits(63)


def epoch_rows(kept: dict[str, int], quota: dict[str, int], replacement: bool, seed: int,
               epoch: int) -> list[tuple[str, int]]:
    """(source, row) pairs of one epoch, in training order. Without replacement a source's rows come
    as shuffled passes (no row twice before every row once); with it, drawn independently."""
    rng = random.Random(epoch_seed(seed, epoch))
    chosen: list[tuple[str, int]] = []
    for name in sorted(quota):
        n, want = kept[name], quota[name]
        if replacement:
            chosen += [(name, rng.randrange(n)) for _ in range(want)]
            continue
        while want > 0:
            order = list(range(n))
            rng.shuffle(order)
            chosen += [(name, row) for row in order[:want]]
            want -= n
    rng.shuffle(chosen)  # sources interleaved, so every micro-batch mixes them
    return chosen


def schedule(kept: dict[str, int], quota: dict[str, int], replacement: bool, seed: int,
             epochs: float) -> Iterator[list[tuple[str, int]]]:
    """Every epoch's rows, drawn one epoch at a time (memory: an epoch, not the run); a fractional last
    epoch (`train.epochs: 2.5`) takes the first part of its draw."""
    for epoch in range(math.ceil(epochs)):
        rows = epoch_rows(kept, quota, replacement, seed, epoch)
        share = min(1.0, epochs - epoch)
        yield rows[: round(len(rows) * share)]


def describe(spec: Spec, stats: DataStats | None) -> list[str]:
    """One line per training source for `plan` and the summary; with the data stage's counts once it ran."""
    lines = []
    for src in resolved(spec, "train"):
        where = src.source.path or f"{src.source.hub} ({src.source.config or 'default'}, {src.source.split})"
        share = (f"weight {src.weight:g}" if src.weight is not None
                 else f"{src.rows} rows an epoch" if src.rows is not None else "every row")
        line = f"  {src.name}: {src.format}, {share}, {where}"
        got = stats.sources.get(src.name) if stats is not None else None
        if got is not None:
            line += (f"; {got.read} read -> {got.kept} kept, {got.dropped_total} dropped, "
                     f"{got.tokens} tokens, {100 * (got.share or 0):.1f}% of an epoch")
        lines.append(line)
    return lines
