"""The model routes, OpenAI's shapes: /v1/models (list, retrieve, delete), /v1/chat/completions,
/v1/completions, vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, and /health."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

from runner.serve.adapters import check_adapter
from runner.serve.logprobs import openai_logprobs
from runner.serve.models import Entry
from runner.serve.prompts import render_chat
from runner.serve.rows import Ask
from runner.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    Health,
    LoadAdapter,
    ModelCard,
    ModelDeleted,
    Sampling,
    UnloadAdapter,
)

router = APIRouter()


def _entry(request: Request, model: str) -> Entry:
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
    return _card(_entry(request, model_id))


@router.delete("/v1/models/{model_id:path}")
def delete_model(model_id: str, request: Request) -> ModelDeleted:
    """An adapter leaves the served list, across restarts too; its artifacts stay in the store until
    `runner gc` (a later run of it serves it again). A base is not deleted: it serves its adapters."""
    entry = _entry(request, model_id)
    if entry.kind == "base":
        raise HTTPException(400, f"{model_id!r} is a base model: it is served while the store holds a run of it; "
                                 "delete its adapters, or remove its runs' records and run `runner gc`")
    request.app.state.registry.delete(entry)
    _forget(request, entry)
    return ModelDeleted(id=entry.id)


def _forget(request: Request, entry: Entry) -> None:
    """Drop the adapter's weights from the worker, unless another id still serves the same folder."""
    if all(e.adapter_dir != entry.adapter_dir for e in request.app.state.registry.scan().values()):
        request.app.state.engine.forget(entry)


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request) -> Any:
    entry = _entry(request, body.model)
    messages = [m.model_dump() for m in body.messages]
    return await _answer(request, body, entry, lambda tok: render_chat(messages, tok, entry.spec), chat=True)


@router.post("/v1/completions", response_model=None)
async def complete(body: CompletionRequest, request: Request) -> Any:
    entry = _entry(request, body.model)
    return await _answer(request, body, entry, lambda tok: body.prompt, chat=False)


async def _answer(request: Request, body: Sampling, entry: Entry, render: Callable[[Any], str], chat: bool) -> Any:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def emit(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    too_long = await run_in_threadpool(request.app.state.engine.too_long, entry, render)
    if too_long is not None:
        raise HTTPException(400, too_long)
    wanted = body.logprob_count()
    ask = Ask(entry, render, body.token_limit(), body.temperature, body.top_p, body.stops(), body.seed, emit, wanted)
    request.app.state.engine.submit(ask)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": entry.id}
    kind, value = await events.get()  # "start" once the worker has the prompt, before any status is sent
    if kind == "invalid":
        raise HTTPException(400, value)
    if kind == "error":
        raise HTTPException(500, value)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_chunks(events, head, chat, usage), ping=3600)
    while True:
        kind, value = await events.get()
        if kind in ("error", "invalid"):
            raise HTTPException(500 if kind == "error" else 400, value)
        if kind == "done":
            reason, counts, text = value
            choice: dict[str, Any] = ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            choice["logprobs"] = openai_logprobs(ask.picked, chat) if wanted is not None else None
            return head | {"object": "chat.completion" if chat else "text_completion", "usage": counts,
                           "choices": [{"index": 0, "finish_reason": reason} | choice]}


async def _chunks(events: asyncio.Queue[tuple[str, Any]], head: dict[str, Any], chat: bool,
                  usage: bool) -> AsyncIterator[dict[str, str]]:
    obj = head | {"object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(text: str | None, reason: str | None = None) -> dict[str, str]:
        if chat:
            delta = {} if text is None else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        return {"data": json.dumps(obj | {"choices": [choice]})}

    if chat:
        first = chunk("")
        first["data"] = first["data"].replace('"delta": {"content": ""}', '"delta": {"role": "assistant", "content": ""}')
        yield first
    while True:
        kind, value = await events.get()
        if kind == "delta":
            yield chunk(value)
        elif kind in ("error", "invalid"):
            yield {"data": json.dumps({"error": {"message": value, "type": "server_error", "code": 500}})}
            break
        else:
            reason, counts, _ = value
            yield chunk(None, reason)
            if usage:
                yield {"data": json.dumps(obj | {"choices": [], "usage": counts})}
            break
    yield {"data": "[DONE]"}


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
    _forget(request, entry)
    return {"status": "ok", "message": f"adapter {body.lora_name!r} unloaded"}
