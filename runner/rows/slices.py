"""Slices of the spec that say which rows a stage reads, for the keys of the stages that read them: a
source, a mixture as resolved, and the row and document bounds. The data stage keys its output by them;
eval's contamination check reads the same training rows, so its key takes the same mixture slice.
"""

from __future__ import annotations

from typing import Any

from runner.rows.mixture import Resolved, resolved
from runner.spec.slices import fields_slice, hub_slice
from runner.spec.typed import Fields, Source, Spec


def bounds_slice() -> dict[str, Any]:
    """The row and document bounds, only where the environment moved them: what is dropped depends on
    them, and keys taken with the defaults stay what they were."""
    from runner.rows.reading import DOCUMENT_BYTES, document_bytes
    from runner.rows.rowfiles import ROW_BYTES, row_bytes

    bounds = {"row_bytes": row_bytes(), "document_bytes": document_bytes()}
    return {"bounds": bounds} if bounds != {"row_bytes": ROW_BYTES, "document_bytes": DOCUMENT_BYTES} else {}


def mixture_slice(spec: Spec) -> dict[str, Any]:
    """A mixture: each source as resolved (its format and fields, the `data` ones where it gives none),
    the sampling, and the epochs, since the stage writes every epoch's rows."""
    d = spec.data

    def one(src: Resolved) -> dict[str, Any]:
        fields = fields_key(src.fields, src.format)
        return (source_slice(src.source) | {"name": src.name, "format": src.format, "fields": fields,
                                            "weight": src.weight, "rows": src.rows})

    data = {"validation_fraction": d.validation_fraction, "template": d.template, "system_prompt": d.system_prompt,
            "max_length": d.max_length, "max_rows": d.max_rows, "replacement": d.replacement,
            "train": [one(s) for s in resolved(spec, "train")],
            "validation": [one(s) for s in resolved(spec, "validation")]}
    formats = [s.format for role in ("train", "validation") for s in resolved(spec, role)]
    return {"data": data | reasoning_slice(spec, formats), "seed": spec.seed, "epochs": spec.train.epochs} | bounds_slice()


def reasoning_slice(spec: Spec, formats: list[str]) -> dict[str, Any]:
    """How traces are written and cut, only where a source is in the reasoning format (other keys stay)."""
    r = spec.data.reasoning
    if "reasoning" not in formats:
        return {}
    out: dict[str, Any] = {"think_start": r.think_start, "think_end": r.think_end, "too_long": r.too_long}
    if spec.data.template == "chat":
        # Through the tokenizer's template the trace goes as `reasoning_content` where the template takes
        # it, and a template that drops it (DeepSeek-R1's) drops the row: data built before that rule differ.
        out["chat_trace"] = "reasoning_content"
    return {"reasoning": out}


def fields_key(fields: Fields, fmt: str) -> dict[str, Any]:
    """The fields that shape the rows; `text` only for a text source, so other keys stay as they were. A chat
    source also names its reader: ShareGPT rows and role names, once dropped, are read since it changed."""
    extra = {"text": fields.text} if fmt == "text" else {"chat_rows": "openai+sharegpt"} if fmt == "chat" else {}
    if fmt == "preference":  # train.method dpo, orpo (runner.rows.pairs)
        extra = {"prompt": fields.prompt, "chosen": fields.chosen, "rejected": fields.rejected}
    elif fmt == "kto":
        extra = {"prompt": fields.prompt, "completion": fields.completion, "label": fields.label}
    elif fmt == "reasoning":
        extra = {"trace": fields.trace}
    return fields_slice(fields) | extra


def source_slice(src: Source) -> dict[str, Any]:
    # Local paths enter the key through their file digests, so moving a file reruns nothing.
    return hub_slice(src) | {"local": src.path is not None}
