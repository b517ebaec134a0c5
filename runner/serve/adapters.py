"""Checks for /v1/load_lora_adapter: the folder is inside the store, exists, holds an adapter, and the
adapter was trained on the base it is to sit on. Never a 200 for a path that does not exist or a base
that does not match (vLLM #18372 answered 200 for a missing path).

A loaded adapter is prompted as it was trained: the spec of the run record that made the folder (an
export, or a train stage's checkpoint), as the store's own copy is; the base's spec only when no
record names the folder."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from runner.serve.models import Entry, Registry, _typed, record_with
from runner.serve.schemas import LoadAdapter

log = logging.getLogger("runner.serve")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record(store: Path, folder: Path) -> dict[str, Any] | None:
    """The run record that made `folder`: <store>/export/KEY/..., <store>/train/KEY/... or a checkpoint
    in <store>/train/.work/KEY/..., else the train key its metadata.json names."""
    parts = folder.relative_to(store).parts
    if len(parts) >= 2 and parts[0] == "export":
        return record_with(store, "export", parts[1])
    if len(parts) >= 3 and parts[:2] == ("train", ".work"):
        return record_with(store, "train", parts[2])
    if len(parts) >= 2 and parts[0] == "train":
        return record_with(store, "train", parts[1])
    key = ((_read(folder / "metadata.json") or {}).get("stage_keys") or {}).get("train")
    return record_with(store, "train", str(key)) if key else None


def _model_key(record: dict[str, Any] | None) -> str | None:
    stages = record.get("stages") if record else None
    key = next((s.get("key") for s in stages or [] if isinstance(s, dict) and s.get("stage") == "model"), None)
    return str(key) if key else None


def _trained_on(store: Path, folder: Path, record: dict[str, Any] | None) -> str | None:
    """What identifies the base the adapter was trained on: its model stage key (from metadata.json,
    the record that made it, or a base_model_name_or_path inside <store>/model/KEY, as a checkpoint
    names the weights it was trained from), else the hub id PEFT's config names."""
    meta = _read(folder / "metadata.json") or {}
    key = (meta.get("stage_keys") or {}).get("model") or _model_key(record)
    if key:
        return str(key)
    named = (_read(folder / "adapter_config.json") or {}).get("base_model_name_or_path")
    if not named:
        return None
    path = Path(str(named))
    if path.is_absolute() and "\x00" not in str(named):
        inside = path.resolve()
        if inside.is_relative_to(store / "model") and len(inside.relative_to(store / "model").parts) >= 1:
            return inside.relative_to(store / "model").parts[0]
    return str(named)


def _base(registry: Registry, name: str | None, trained: str) -> Entry:
    bases = [e for e in registry.scan().values() if e.kind == "base"]
    if name is not None:
        found = next((e for e in bases if e.id == name), None)
        if found is None:
            raise HTTPException(404, f"base model {name!r} does not exist; GET /v1/models lists the bases")
        return found
    if len(bases) == 1:
        return bases[0]
    fits = [e for e in bases if trained in (e.model_key, _hub_id(e))]
    if len(fits) != 1:
        raise HTTPException(400, f"the store has {len(bases)} base models: name one in `base_model_name`")
    return fits[0]


def _hub_id(base: Entry) -> Any:
    return (_read(base.model_dir / "model.json") or {}).get("id")


def check_adapter(store: Path, registry: Registry, body: LoadAdapter) -> Entry:
    if "\x00" in body.lora_path:  # no file system path holds one (and Path.resolve raises on it)
        raise HTTPException(400, "lora_path holds a NUL character")
    raw = Path(body.lora_path)
    try:
        folder = (raw if raw.is_absolute() else store / raw).resolve()
        inside, exists = folder.is_relative_to(store), folder.is_dir()
    except (OSError, RuntimeError) as exc:  # a name too long for the file system, a loop of links
        raise HTTPException(400, f"lora_path {body.lora_path[:100]!r} is no usable path: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    if not inside:
        raise HTTPException(400, f"lora_path {body.lora_path[:100]!r} is outside the store <store>: only adapters "
                                 "in the store are served")
    if not exists:
        raise HTTPException(404, f"lora_path {body.lora_path[:100]!r} does not exist")
    config = _read(folder / "adapter_config.json")
    if config is None or config.get("peft_type") != "LORA":
        raise HTTPException(400, f"{body.lora_path!r} holds no LoRA adapter_config.json")
    record = _record(store, folder)
    trained = _trained_on(store, folder, record)
    if trained is None:
        raise HTTPException(400, f"{body.lora_path!r} does not say which base it was trained on "
                                 "(no metadata.json model key, no run record, no base_model_name_or_path)")
    base = _base(registry, body.base_model_name, trained)
    if trained not in (base.model_key, _hub_id(base)):
        raise HTTPException(400, f"{body.lora_path!r} was trained on {trained[:40]!r}, not on {base.id} "
                                 f"(model key {base.model_key[:12]})")
    entry = replace(base, id=body.lora_name, kind="adapter", adapter_dir=folder, parent=base.id, export_key=None)
    try:
        spec, profile = _typed(record) if record else (base.spec, base.profile)
    except (KeyError, TypeError, ValueError):
        spec, profile = base.spec, base.profile  # a record of another version of the runner
    return replace(entry, spec=spec, profile=profile)


def restore(store: Path, registry: Registry) -> None:
    """Load again the adapters the served set kept; one that no longer passes the checks (collected by
    `runner gc`, say) is skipped with a log line, not fatal to the server."""
    for body in registry.saved_loads():
        try:
            request = LoadAdapter(**body)
            if registry.get(request.lora_name) is None:
                registry.add(check_adapter(store, registry, request))
        except (HTTPException, ValueError, TypeError) as exc:
            log.warning("adapter %r from %s not loaded again: %s", body.get("lora_name"), "served.json",
                        getattr(exc, "detail", exc))
