"""Slices of the spec that several stages' keys share: how the base model is loaded, where rows come
from when they are not a local file, the column mapping, a benchmark.

Pure functions of the spec's dataclasses, below the stages so that no stage imports another for its
key. Field by field on purpose: a new spec field enters a key only when someone writes it here.
"""

from __future__ import annotations

from typing import Any

from runner.spec.typed import Benchmark, Fields, Model, Source


def quantization_slice(m: Model) -> dict[str, Any]:
    """How the base is loaded (4-bit or not, double quantization): in the key of every stage that
    loads it (train, export, eval), though the model stage's own output does not depend on it."""
    return {"quantization": m.quantization, "double_quant": m.double_quant}


def hub_slice(src: Source | Benchmark) -> dict[str, Any]:
    """Where a source's rows come from when it is not a local file: for every key that reads rows."""
    return {"hub": src.hub, "config": src.config, "split": src.split, "revision": src.revision}


def fields_slice(fields: Fields) -> dict[str, Any]:
    """The column mapping, for every key that reads rows through it."""
    return {"question": fields.question, "options": fields.options, "answer_key": fields.answer_key,
            "answer_key_type": fields.answer_key_type, "context": fields.context, "answer": fields.answer,
            "instruction": fields.instruction, "input": fields.input, "output": fields.output,
            "messages": fields.messages}


def benchmark_slice(b: Benchmark) -> dict[str, Any]:
    """A benchmark as eval scores it and export's parity gate reads it."""
    # Local files (a benchmark's rows, its ids) enter the key through their digests, not their paths.
    return ({"name": b.name, "format": b.format} | hub_slice(b) | {"fields": fields_slice(b.fields), "limit": b.limit}
            | ({"ids": "local"} if b.ids is not None else {}))
