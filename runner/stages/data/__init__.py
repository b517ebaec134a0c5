"""Stage `data`: read, validate, normalise, split and tokenize the training rows.

Broken rows are dropped and counted by reason in stats.json, never a crash. The loss covers the
answer (assistant) tokens only: everything else gets label -100 (a `text` source: every token).

Rows stream from each source into Arrow files a batch at a time (runner.stages.data.building), so
memory does not grow with the data. A mixture (`data.train` as a list) is written as every epoch's
rows in training order, each epoch drawn with its own seed (runner.rows.mixture), and `epochs.jsonl`
says which row of which source each one is; the train stage reads train.arrow once, in order.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runner.core.errors import DataError
from runner.core.stage import StageContext
from runner.rows.mixture import file_roles, is_mixture, local_paths, resolved
from runner.rows.reading import read_rows
from runner.rows.slices import bounds_slice, fields_key, mixture_slice, reasoning_slice, source_slice
from runner.spec.typed import Source, Spec

__all__ = ["read_rows"]  # tests read rows as the stage does

name = "data"
version = 1
upstream = ("model:tokenizer",)  # only the tokenizer shapes the tokens, not the weights
volatile: tuple[str, ...] = ()
uses_profile = False
gate = None  # nothing to check before it builds
side_effect = None  # it acts on nothing outside the store


def spec_slice(spec: Spec) -> dict[str, Any]:
    d = spec.data
    if is_mixture(spec):
        return mixture_slice(spec)
    # Field by field, so a new spec field enters the key only when someone writes it here.
    fields = fields_key(d.fields, d.format)
    assert isinstance(d.train, Source) and not isinstance(d.validation, tuple)
    data = {"validation_fraction": d.validation_fraction, "format": d.format, "template": d.template,
            "system_prompt": d.system_prompt, "max_length": d.max_length, "max_rows": d.max_rows,
            "fields": fields, "train": source_slice(d.train),
            "validation": source_slice(d.validation) if d.validation else None}
    return {"data": data | reasoning_slice(spec, [d.format]), "seed": spec.seed} | bounds_slice()


def local_files(spec: Spec) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for role in ("train", "validation"):
        for src in resolved(spec, role):
            found |= file_roles(spec, src, one_source=not is_mixture(spec))
    return found


def run(ctx: StageContext) -> None:
    from runner.models.loading import load_tokenizer, require_chat_template
    from runner.stages.data.building import ArrowRows, Tally, build_source, held_out, row_kind
    from runner.stages.data.epochs import finish

    spec = ctx.spec
    tok = load_tokenizer(ctx.upstream["model"])
    mixture = is_mixture(spec)
    train_sources = resolved(spec, "train")
    sources = train_sources + resolved(spec, "validation")
    if spec.data.template == "chat" and any(src.format != "text" for src in sources):
        require_chat_template(tok, "data")
    parts = ctx.out / ".parts"  # a mixture's tokenized sources, sampled into train.arrow, then removed
    parts.mkdir()
    kind = row_kind(spec)
    validation = ArrowRows(ctx.out / "validation.arrow", kind=kind)
    train_direct = None if mixture else ArrowRows(ctx.out / "train.arrow", kind=kind)
    tallies: dict[str, Tally] = {}
    for src in sources:
        paths = local_paths(spec, src)
        split = src.role == "train" and spec.data.validation is None
        held = held_out(src, paths, spec.data.max_rows, spec.data.validation_fraction, spec.seed) if split else None
        train = train_direct or ArrowRows(parts / f"{src.name}.arrow", extra=True, random_access=True, kind=kind)
        tally = tallies.setdefault(src.name if src.role == "train" else f"validation/{src.name}", Tally())
        build_source(src, paths, spec, tok, held, {"train": train, "validation": validation}, tally)
        if train is not train_direct:
            train.close()
        ctx.log(f"data: {src.role} source {src.name}: {tally.line()}")
    validation.close()
    if train_direct is not None:
        train_direct.close()
    unchanged(ctx)
    if not any(t.kept["train"] for t in tallies.values()):
        dropped = {n: dict(sorted(t.dropped.items())) for n, t in tallies.items() if t.dropped}
        raise DataError(f"data: no usable training rows (dropped: {dropped}); check data.format and data.fields")
    for src in train_sources if mixture else []:  # an empty source would vanish from the mixture unseen
        tally = tallies[src.name]
        if not tally.kept["train"]:
            raise DataError(f"data: training source {src.name} kept no rows of {tally.read} (dropped: "
                            f"{dict(sorted(tally.dropped.items()))}); check its format and fields, or remove it")
    stats = finish(ctx, train_sources, tallies, parts, tok)
    shutil.rmtree(parts)
    ctx.log(f"data: {stats['rows']['train']} train / {stats['rows']['validation']} validation rows, "
            f"{sum(stats['dropped'].values())} dropped {stats['dropped'] or ''}")


def unchanged(ctx: StageContext) -> None:
    """Every file read is still the one whose digest is in the key: a file appended, cut or swapped while
    the stage read it would otherwise be stored under its old content's key, and reused as that."""
    from runner.core.keys import file_digest

    for role, path in sorted(ctx.files.items()):
        want = ctx.digests.get(role)
        try:
            now = file_digest(path)
        except OSError:
            now = None
        if want is not None and now != want:
            raise DataError(f"data: {path} changed while the data stage read it; nothing was stored: run again "
                            "once the file is written (write it elsewhere and move it into place)")

