"""The generation routes, OpenAI's shapes: /v1/chat/completions and /v1/completions, whole or streamed
(server-sent events), each request handed to the engine's worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

from runner.serve.logprobs import openai_logprobs
from runner.serve.prompts import render_chat
from runner.serve.registry import Entry
from runner.serve.routes.models import served_entry
from runner.serve.rows import Ask
from runner.serve.schemas import ChatRequest, CompletionRequest, Sampling

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request) -> Any:
    entry = served_entry(request, body.model)
    messages = [m.model_dump() for m in body.messages]
    return await _answer(request, body, entry, lambda tok: render_chat(messages, tok, entry.spec), chat=True)


@router.post("/v1/completions", response_model=None)
async def complete(body: CompletionRequest, request: Request) -> Any:
    entry = served_entry(request, body.model)
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
