"""vLLM's adapter routes: /v1/load_lora_adapter (after the registry's checks) and
/v1/unload_lora_adapter (only what was loaded at run time)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request

from runner.serve.registry import check_adapter
from runner.serve.routes.models import forget
from runner.serve.schemas import LoadAdapter, UnloadAdapter

router = APIRouter()


@router.post("/v1/load_lora_adapter")
def load_adapter(body: LoadAdapter, request: Request) -> dict[str, str]:
    registry = request.app.state.registry
    if registry.get(body.lora_name) is not None:
        raise HTTPException(400, f"a model named {body.lora_name!r} is already served")
    entry = check_adapter(request.app.state.store, registry, body)
    # Kept in the served set, to load again at start; its path relative to the store, which a moved store still holds.
    folder = Path(entry.adapter_dir or body.lora_path)
    registry.add(entry, body.model_dump() | {"lora_path": str(folder.relative_to(request.app.state.store))})
    return {"status": "ok", "message": f"adapter {body.lora_name!r} loaded on {entry.parent}"}


@router.post("/v1/unload_lora_adapter")
def unload_adapter(body: UnloadAdapter, request: Request) -> dict[str, str]:
    registry = request.app.state.registry
    entry = registry.get(body.lora_name)
    if entry is None or entry.kind != "adapter":
        raise HTTPException(404, f"no adapter named {body.lora_name!r} is served")
    if not registry.remove(body.lora_name):
        raise HTTPException(400, f"{body.lora_name!r} comes from a run record in the store; only adapters loaded "
                                 "with /v1/load_lora_adapter can be unloaded")
    forget(request, entry)
    return {"status": "ok", "message": f"adapter {body.lora_name!r} unloaded"}
