"""The model routes, OpenAI's shapes: /v1/models (list, retrieve, delete), and /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from runner.serve.registry import Entry
from runner.serve.schemas import Health, ModelCard, ModelDeleted

router = APIRouter()


def served_entry(request: Request, model: str) -> Entry:
    found: Entry | None = request.app.state.registry.get(model)
    if found is None:
        raise HTTPException(404, f"model {model!r} does not exist; GET /v1/models lists what is served")
    return found


def _card(entry: Entry) -> ModelCard:
    return ModelCard(id=entry.id, created=entry.created, parent=entry.parent,
                     root=str(entry.adapter_dir if entry.adapter_dir is not None else entry.model_dir))


@router.get("/health")
def health(request: Request) -> Health:
    """Open without the key (app.py): that the server is up and what it serves, from the last scan
    (no store read, so a load balancer may ask often)."""
    entries = request.app.state.registry.known()
    return Health(status="ok", bases=sum(e.kind == "base" for e in entries),
                  adapters=sum(e.kind == "adapter" for e in entries), jobs=hasattr(request.app.state, "jobs"))


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    entries = request.app.state.registry.scan().values()
    cards = [_card(e).model_dump() for e in sorted(entries, key=lambda e: (e.kind != "base", e.id))]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}")
def retrieve_model(model_id: str, request: Request) -> ModelCard:
    return _card(served_entry(request, model_id))


@router.delete("/v1/models/{model_id:path}")
def delete_model(model_id: str, request: Request) -> ModelDeleted:
    """An adapter leaves the served list, across restarts too; its artifacts stay in the store until
    `runner gc` (a later run of it serves it again). A base is not deleted: it serves its adapters."""
    entry = served_entry(request, model_id)
    if entry.kind == "base":
        raise HTTPException(400, f"{model_id!r} is a base model: it is served while the store holds a run of it; "
                                 "delete its adapters, or remove its runs' records and run `runner gc`")
    request.app.state.registry.delete(entry)
    forget(request, entry)
    return ModelDeleted(id=entry.id)


def forget(request: Request, entry: Entry) -> None:
    """Drop the adapter's weights from the worker, unless another id still serves the same folder."""
    if all(e.adapter_dir != entry.adapter_dir for e in request.app.state.registry.scan().values()):
        request.app.state.engine.forget(entry)
