"""Checks for /v1/load_lora_adapter: the folder is inside the store, exists, holds an adapter, and the
adapter was trained on the base it is to sit on. Never a 200 for a path that does not exist or a base
that does not match (vLLM #18372 answered 200 for a missing path)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from runner.serve.models import Entry, Registry
from runner.serve.schemas import LoadAdapter


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _base(registry: Registry, name: str | None) -> Entry:
    bases = [e for e in registry.scan().values() if e.kind == "base"]
    if name is not None:
        found = next((e for e in bases if e.id == name), None)
        if found is None:
            raise HTTPException(404, f"base model {name!r} does not exist; GET /v1/models lists the bases")
        return found
    if len(bases) != 1:
        raise HTTPException(400, f"the store has {len(bases)} base models: name one in `base_model_name`")
    return bases[0]


def _trained_on(folder: Path) -> str | None:
    """The model stage key (ours) or hub id (PEFT's) the adapter says it was trained on."""
    meta = _read(folder / "metadata.json") or {}
    key = (meta.get("stage_keys") or {}).get("model")
    if key:
        return str(key)
    config = _read(folder / "adapter_config.json") or {}
    named = config.get("base_model_name_or_path")
    return str(named) if named else None


def check_adapter(store: Path, registry: Registry, body: LoadAdapter) -> Entry:
    if "\x00" in body.lora_path:  # no file system path holds one (and Path.resolve raises on it)
        raise HTTPException(400, "lora_path holds a NUL character")
    raw = Path(body.lora_path)
    folder = (raw if raw.is_absolute() else store / raw).resolve()
    if not folder.is_relative_to(store):
        raise HTTPException(400, f"lora_path {body.lora_path!r} is outside the store {store}: only adapters in "
                                 "the store are served")
    if not folder.is_dir():
        raise HTTPException(404, f"lora_path {body.lora_path!r} does not exist")
    config = _read(folder / "adapter_config.json")
    if config is None or config.get("peft_type") != "LORA":
        raise HTTPException(400, f"{body.lora_path!r} holds no LoRA adapter_config.json")
    base = _base(registry, body.base_model_name)
    hub_id = (_read(base.model_dir / "model.json") or {}).get("id")
    trained = _trained_on(folder)
    if trained is None:
        raise HTTPException(400, f"{body.lora_path!r} does not say which base it was trained on "
                                 "(no metadata.json model key, no base_model_name_or_path)")
    if trained not in (base.model_key, hub_id):
        raise HTTPException(400, f"{body.lora_path!r} was trained on {trained[:40]!r}, not on {base.id}")
    return replace(base, id=body.lora_name, kind="adapter", adapter_dir=folder, parent=base.id, export_key=None)
