"""The FastAPI application: auth, caps and clean errors around the routes of routes.py and jobs.py.

Safe by default: every route checks the key when one is set (in constant time), bodies are capped
(413), and anything unexpected is answered as a JSON error without a traceback."""

from __future__ import annotations

import hmac
import logging
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runner.serve.page import OPEN

log = logging.getLogger("runner.serve")
MAX_BODY = 1 << 20  # a chat request is kilobytes; a megabyte is already abuse
MAX_UPLOAD = 64 << 20  # /v1/files: training data


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _TooLarge(Exception):
    pass


class Guard:
    """Pure ASGI: the key, then the body cap (the header, and the bytes as they arrive)."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app, self.key = app, (api_key.encode() if api_key else None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # The page's own files (runner/serve/page.py) are open: the page asks for the key and sends it.
        if self.key is not None and not (scope["path"] in OPEN and scope["method"] in ("GET", "HEAD")):
            given = headers.get("authorization", "")
            token = given[7:].encode() if given.lower().startswith("bearer ") else b""
            if not hmac.compare_digest(token, self.key):
                return await error(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                                   "authentication_error")(scope, receive, send)
        cap = MAX_UPLOAD if scope["path"] == "/v1/files" else MAX_BODY
        if int(headers.get("content-length") or 0) > cap:
            return await error(413, f"request body over the {cap} byte limit")(scope, receive, send)
        seen, started = 0, False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                raise _TooLarge
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await error(413, f"request body over the {cap} byte limit")(scope, receive, send)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "server_error" if exc.status_code >= 500 else
                     "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error(400, "the body is not valid JSON")
        text = "; ".join(f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}"
                         for p in problems)
        return error(422, text or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log says more", "server_error")


def create_app(store: Path, api_key: str | None = None, jobs: bool = True) -> Any:
    from runner.serve.engine import Engine
    from runner.serve.models import Registry
    from runner.serve.routes import router

    app = FastAPI(title="runner serve", version="1")
    app.state.store = Path(store).resolve()
    app.state.registry = Registry(app.state.store)
    app.state.engine = Engine()
    app.state.engine.start()
    app.include_router(router)
    from runner.serve import catalog, page, specs

    for extra in (page.router, specs.router, catalog.router):
        app.include_router(extra)
    if jobs:
        from runner.serve.jobs import JobQueue
        from runner.serve.jobs import router as job_router

        app.state.jobs = JobQueue(app.state.store)
        app.state.jobs.start()
        app.include_router(job_router)
        from runner.serve.progress import router as progress_router

        app.include_router(progress_router)
        from runner.serve.files import router as files_router

        app.include_router(files_router)
    _install_errors(app)
    return Guard(app, api_key)


def serve(store: Path, host: str, port: int, api_key: str | None, engine: str = "runner") -> int:
    """Serve until stopped; the exit code. `engine="vllm"` hands generation to `vllm serve` (vllm.py)."""
    if engine == "vllm":
        from runner.serve.vllm import VllmError, serve_vllm

        try:
            return serve_vllm(store, host, port, api_key)
        except VllmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    app = create_app(store, api_key)
    # uvicorn's access log prints paths and statuses, never headers: the key is not in it.
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
