"""The FastAPI application: auth, caps and clean errors around the routes of runner/serve/routes/.

Safe by default: every route checks the key when one is set (in constant time), bodies are capped
(413, with or without a Content-Length), and every error, an unknown route's and an unexpected one's
included, is answered in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`, which the
official client shows) without a traceback."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runner.serve.limits import MAX_BODY, MAX_UPLOAD
from runner.serve.routes.page import OPEN

log = logging.getLogger("runner.serve")


OPEN_API = frozenset({"/health"})  # open as the page's files are: it says only that the server is up
JSON_ROUTES_EXCEPT = frozenset({"/v1/files"})  # the upload is multipart; every other body is JSON


def error(status: int, message: str, kind: str = "invalid_request_error",
          headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


class _TooLarge(Exception):
    pass


LOOPBACK_NAMES = frozenset({"localhost", "::1"})


def host_name(header: str) -> str:
    """The name of a `Host:` header without its port: `[::1]:8000` -> `::1`, `Localhost:80` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """Pure ASGI: the `Host:` (without a key), the key, then the body cap (the header, and the bytes as
    they arrive); every error answer with the store's absolute path shown as `<store>`."""

    def __init__(self, app: Any, api_key: str | None, store: Path | None = None, host: str | None = None) -> None:
        self.app, self.key, self.store = app, (api_key.encode() if api_key else None), store
        self.hosts = {host_name(host)} if host else set()

    def _refusal(self, scope: Any) -> JSONResponse | None:
        """Why this request is refused before any route sees it: a name a keyless server does not answer
        to (a web page reaching loopback by DNS rebinding sends its own name), or a wrong key."""
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        if self.key is None:
            host = next((v for k, v in raw if k == "host"), None)
            if host is not None and not (is_loopback(host_name(host)) or host_name(host) in self.hosts):
                return error(403, f"a server without an API key answers only to loopback names (localhost, "
                                  f"127.0.0.1, [::1]), not {host[:100]!r}: start it with --api-key to serve "
                                  "other names", "permission_error")
            return None
        # The page's own files (runner/serve/routes/page.py) are open: the page asks for the key and sends it.
        if scope["path"] in OPEN | OPEN_API and scope["method"] in ("GET", "HEAD"):
            return None
        given = [v for k, v in raw if k == "authorization"]  # two headers: which one a proxy checked is unknown
        token = given[0][7:].encode() if len(given) == 1 and given[0].lower().startswith("bearer ") else b""
        if not hmac.compare_digest(token, self.key):
            return error(401, "missing or wrong API key: send one `Authorization: Bearer KEY` header",
                         "authentication_error")
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._refusal(scope)
        if refused is not None:
            return await refused(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        send = _Redacting(send, self.store) if self.store is not None else send
        cap = MAX_UPLOAD if scope["path"] == "/v1/files" else MAX_BODY
        too_large = error(413, f"request body over the {cap} byte limit")
        if int(headers.get("content-length") or 0) > cap:
            return await too_large(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted() -> Any:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            over = over or seen > cap
            if over:  # a chunked body (no Content-Length) learns of the cap here
                raise _TooLarge
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            if over:  # whatever the route made of the cut body (a parser's 400, say), the answer is 413
                if not started:
                    started = True
                    await too_large(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await too_large(scope, receive, send)


class _Redacting:
    """An ASGI `send` that shows the store's absolute path as `<store>` in error answers (4xx, 5xx: a few
    hundred bytes of JSON, held whole and sent once with their new length)."""

    def __init__(self, send: Any, store: Path) -> None:
        self.send, self.store = send, store
        self.start: Any = None
        self.body = b""

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            return await self.send(message)
        self.body += message.get("body", b"")
        if message.get("more_body"):
            return
        from runner.serve.confine import redact

        store = json.dumps(str(self.store))[1:-1]  # as it appears inside a JSON string
        body = redact(self.body.decode("utf-8", "replace").replace(store, str(self.store)), self.store).encode()
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.send(self.start | {"headers": [*headers, (b"content-length", str(len(body)).encode())]})
        self.start = None
        await self.send({"type": "http.response.body", "body": body})


def _install_errors(app: FastAPI) -> None:
    # Starlette's class, not FastAPI's subclass: an unknown route (404) and a wrong method (405) raise it.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path[:200]!r}; the API is under /v1 (GET /openapi.json lists it)"
        elif exc.status_code == 405:
            allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "none")
            message = f"{request.method} is not allowed on {request.url.path[:200]!r}; allowed: {allowed}"
        return error(exc.status_code, message, "server_error" if exc.status_code >= 500 else "invalid_request_error",
                     exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        wrong_type = _not_json(request)
        if wrong_type is not None and any(p.get("loc", ())[:1] == ("body",) for p in problems):
            return error(415, f"the body must be JSON sent with `Content-Type: application/json`, not {wrong_type}")
        if any(p.get("type") == "json_invalid" for p in problems):
            return error(400, "the body is not valid JSON")
        text = "; ".join(f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}"
                         for p in problems)
        return error(422, text or "invalid request")

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return error(400, "the request holds data nested too deep to read (JSON nested thousands of levels)")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log says more", "server_error")


def _not_json(request: Request) -> str | None:
    """The Content-Type a JSON route was sent (`none` when absent), or None when it is JSON or the
    route is not a JSON one."""
    given = request.headers.get("content-type")
    media = (given or "").split(";")[0].strip().lower()
    if request.url.path in JSON_ROUTES_EXCEPT or media == "application/json" or media.endswith("+json"):
        return None
    return f"`{given[:100]}`" if given else "none"


def create_app(store: Path, api_key: str | None = None, jobs: bool = True, host: str | None = None,
               data_dirs: tuple[Path, ...] = (), allow_push: bool = False) -> Any:
    from runner.serve.engine import Engine
    from runner.serve.registry import Registry

    app = FastAPI(title="runner serve", version="1")
    app.state.store = Path(store).resolve()
    app.state.registry = Registry(app.state.store)
    from runner.serve.confine import roots_of

    app.state.roots = roots_of(app.state.store, data_dirs)  # what a spec may read (runner/serve/confine.py)
    from runner.serve.registry import restore

    app.state.registry.scan()  # what /health reports until the first request looks again
    restore(app.state.store, app.state.registry)  # adapters loaded at run time before a restart
    app.state.engine = Engine()
    app.state.engine.start()
    from runner.serve.routes import adapters, completions, models, page, specs

    # In this order, the OpenAPI document's: the page's own files are left out of it.
    for routes in (models, completions, adapters, specs, page):
        app.include_router(routes.router)
    if jobs:
        from runner.serve.jobs.jobqueue import JobQueue
        from runner.serve.routes import files as file_routes
        from runner.serve.routes import jobs as job_routes

        app.state.jobs = JobQueue(app.state.store, allow_push)
        app.state.jobs.start()
        app.include_router(job_routes.router)
        app.include_router(file_routes.router)
    _install_errors(app)
    return Guard(app, api_key, app.state.store, host)


def serve(store: Path, host: str, port: int, api_key: str | None, engine: str = "runner",
          data_dirs: tuple[Path, ...] = (), allow_push: bool = False) -> int:
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
    app = create_app(store, api_key, host=host, data_dirs=data_dirs, allow_push=allow_push)
    # uvicorn's access log prints paths and statuses, never headers: the key is not in it.
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
