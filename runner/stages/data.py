"""Stage `data`: read, validate, normalise, split and tokenize the training rows.

Broken rows are dropped and counted by reason in stats.json, never a crash. The loss covers the
answer (assistant) tokens only: everything else gets label -100.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.errors import DataError
from runner.formats import Dropped, Example, convert_rows, count_reasons, read_local, to_example
from runner.spec import Benchmark, Fields, Source, Spec
from runner.stage import TRAIN_ROLE, VALIDATION_ROLE, StageContext

name = "data"
version = 1
upstream = ("model:tokenizer",)  # only the tokenizer shapes the tokens, not the weights
volatile: tuple[str, ...] = ()
uses_profile = False
gate = None  # nothing to check before it builds
side_effect = None  # it acts on nothing outside the store


def spec_slice(spec: Spec) -> dict[str, Any]:
    d = spec.data
    # Field by field, so a new spec field enters the key only when someone writes it here.
    data = {"validation_fraction": d.validation_fraction, "format": d.format, "template": d.template,
            "system_prompt": d.system_prompt, "max_length": d.max_length, "max_rows": d.max_rows,
            "fields": fields_slice(d.fields), "train": _source_slice(d.train),
            "validation": _source_slice(d.validation) if d.validation else None}
    return {"data": data, "seed": spec.seed}


def _source_slice(src: Source) -> dict[str, Any]:
    # Local paths enter the key through their file digests, so moving a file reruns nothing.
    return hub_slice(src) | {"local": src.path is not None}


def hub_slice(src: Source | Benchmark) -> dict[str, Any]:
    """Where a source's rows come from when it is not a local file: for every key that reads rows."""
    return {"hub": src.hub, "config": src.config, "split": src.split, "revision": src.revision}


def fields_slice(fields: Fields) -> dict[str, Any]:
    """The column mapping, for every key that reads rows through it."""
    return {"question": fields.question, "options": fields.options, "answer_key": fields.answer_key,
            "answer_key_type": fields.answer_key_type, "context": fields.context, "answer": fields.answer,
            "instruction": fields.instruction, "input": fields.input, "output": fields.output,
            "messages": fields.messages}


def local_files(spec: Spec) -> dict[str, Path]:
    found = {}
    for role, src in ((TRAIN_ROLE, spec.data.train), (VALIDATION_ROLE, spec.data.validation)):
        if src is not None and src.path is not None:
            found[role] = spec.resolve(src.path)
    return found


def run(ctx: StageContext) -> None:
    from runner.stages.model.loading import load_tokenizer

    spec = ctx.spec
    tok = load_tokenizer(ctx.upstream["model"])
    dropped: list[str] = []
    train = _examples(read_rows(spec.data.train, ctx.files.get(TRAIN_ROLE), spec.data.max_rows), spec, dropped)
    if spec.data.validation is not None:
        validation = _examples(read_rows(spec.data.validation, ctx.files.get(VALIDATION_ROLE), None), spec, dropped)
    else:
        train, validation = split(train, spec.data.validation_fraction, spec.seed)
    encoded = {}
    for part, examples in (("train", train), ("validation", validation)):
        encoded[part] = [e for e in (_encode_or_drop(ex, tok, spec, dropped) for ex in examples) if e is not None]
    if not encoded["train"]:
        raise DataError(f"data: no usable training rows (dropped: {count_reasons(dropped)}); check data.format and data.fields")
    for part, rows in encoded.items():
        write_arrow(rows, ctx.out / f"{part}.arrow")
    stats = _stats(encoded, dropped, len(train) + len(validation))
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True), "utf-8")
    (ctx.out / "samples.txt").write_text(_samples(encoded["train"][:2], tok), "utf-8")
    ctx.log(f"data: {stats['rows']['train']} train / {stats['rows']['validation']} validation rows, "
            f"{sum(stats['dropped'].values())} dropped {stats['dropped'] or ''}")


def read_rows(src: Source | Benchmark, path: Path | None, limit: int | None) -> Iterable[dict[str, Any] | Dropped]:
    """The rows of a training source or a benchmark (both name a local file or a Hub dataset the same
    way): from `path`, the file whose digest is in the key, else from the Hub at the source's revision.
    `limit`: the first rows only, dropped ones counted. Read as they are consumed."""
    if path is not None:
        return itertools.islice(read_local(path), limit)
    import datasets

    assert src.hub is not None  # the spec gives a source exactly one of path and hub
    ds = datasets.load_dataset(src.hub, src.config, split=src.split, revision=src.revision)
    rows: Iterable[dict[str, Any]] = ds.select(range(min(limit, len(ds)))) if limit else ds
    return rows


def _examples(rows: Iterable[dict[str, Any] | Dropped], spec: Spec, dropped: list[str]) -> list[Example]:
    examples, reasons = convert_rows(rows, lambda row: to_example(row, spec.data.format, spec.data.fields))
    dropped += reasons
    return examples


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out `fraction` of the examples, chosen by `seed` (same seed, same split)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * fraction) if len(examples) > 1 else 0
    held = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def _encode_or_drop(example: Example, tok: Any, spec: Spec, dropped: list[str]) -> dict[str, list[int]] | None:
    try:
        ids, labels = encode(example, tok, spec.data.template, spec.data.system_prompt)
    except Dropped as reason:
        dropped.append(str(reason))
        return None
    if len(ids) > spec.data.max_length:
        dropped.append(f"longer than data.max_length ({spec.data.max_length} tokens)")
        return None
    return {"input_ids": ids, "labels": labels}


def encode(example: Example, tok: Any, template: str, system_prompt: str | None) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are -100 except on the assistant's tokens."""
    if template == "plain":
        if len(example.messages) != 2:
            raise Dropped("data.template plain takes single-turn examples; use template chat")
        prompt, answer = example.messages[0][1], example.messages[1][1]
        context = tok(prompt).input_ids
        full = tok(f"{prompt} {answer}").input_ids + [tok.eos_token_id]
        start = _common_prefix(context, full)
        return full, [-100] * start + full[start:]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": role, "content": content} for role, content in example.messages]
    full = _chat_ids(tok, messages, False)
    labels = [-100] * len(full)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            # Token-level common prefixes, so a template that is not prefix-stable still masks safely.
            start = _common_prefix(_chat_ids(tok, messages[:i], True), full)
            end = _common_prefix(_chat_ids(tok, messages[: i + 1], False), full)
            labels[start:end] = full[start:end]
    if all(label == -100 for label in labels):
        raise Dropped("no answer tokens after applying the chat template")
    return full, labels


def _chat_ids(tok: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids: list[int] = tok(text, add_special_tokens=False).input_ids
    return ids


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def write_arrow(rows: list[dict[str, list[int]]], path: Path) -> None:
    """An Arrow stream file (what `datasets.Dataset.from_file` maps); byte-identical for equal rows."""
    import pyarrow as pa

    table = pa.table({"input_ids": pa.array([r["input_ids"] for r in rows], type=pa.list_(pa.int32())),
                      "labels": pa.array([r["labels"] for r in rows], type=pa.list_(pa.int32()))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _stats(encoded: dict[str, list[dict[str, list[int]]]], dropped: list[str], examples: int) -> dict[str, Any]:
    lengths = sorted(len(r["input_ids"]) for r in encoded["train"])
    answer = sum(sum(1 for x in r["labels"] if x != -100) for r in encoded["train"])
    return {
        "rows": {part: len(rows) for part, rows in encoded.items()},
        "dropped": count_reasons(dropped),
        "examples_before_tokenizing": examples,
        "train_tokens": {"total": sum(lengths), "answer": answer, "min": lengths[0], "max": lengths[-1],
                         "mean": round(sum(lengths) / len(lengths), 1), "p50": lengths[len(lengths) // 2],
                         "p95": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]},
    }


def _samples(rows: list[dict[str, list[int]]], tok: Any) -> str:
    """The first examples as the model sees them, the trained part in [[...]], to check the template."""
    out = []
    for r in rows:
        text, inside = "", False
        for token, label in zip(r["input_ids"], r["labels"]):
            if (label != -100) != inside:
                text += "]]" if inside else "[["
                inside = not inside
            text += tok.decode([token])
        out.append(text + ("]]" if inside else ""))
    return "\n\n-----\n\n".join(out) + "\n"
