"""The page for people at `/`: static HTML, CSS and JavaScript shipped with the package (no CDN, no
build step), a client of the same API as everyone else. These few files are the only routes open
without the API key: they hold nothing of the store, and the page asks for the key itself.

And the page's data: every served adapter's card (runner.serve.registry), its report files served
read-only (sandboxed: a report's HTML runs no script with the page's origin), and the safety flags of a
text under a model's spec, as the report shows them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from runner.scoring.safety import flags, rules_of
from runner.serve.registry import Entry, adapter_card, eval_keys
from runner.serve.schemas import AdapterList, Flag, FlagList, FlagRequest

router = APIRouter()
FOLDER = Path(__file__).resolve().parent.parent / "static"
TYPES = {"app.js": "text/javascript", "chat.js": "text/javascript", "train.js": "text/javascript",
         "jobs.js": "text/javascript", "style.css": "text/css"}
OPEN = frozenset({"/", *(f"/static/{name}" for name in TYPES)})  # the Guard lets these through without the key
FRESH = {"Cache-Control": "no-cache"}  # a server upgraded under an open tab serves its new page on reload
KEY = re.compile(r"[0-9a-f]{64}")  # both matched whole (fullmatch): "$" would let a trailing newline through
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
# A report is the store's HTML: shown in a sandbox (an opaque origin, no script), never sniffed as another type.
SANDBOXED = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD as the Guard lets it through
def index() -> FileResponse:
    return FileResponse(FOLDER / "index.html", media_type="text/html", headers=FRESH)


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in TYPES:
        raise HTTPException(404, f"the page has no file {name[:100]!r}")
    return FileResponse(FOLDER / name, media_type=TYPES[name], headers=FRESH)


@router.get("/v1/adapters")
def list_adapters(request: Request) -> AdapterList:
    """Every adapter served, newest first; `loaded` marks those added with /v1/load_lora_adapter (which
    /v1/unload_lora_adapter can remove); bases are listed with their spec's queries for the chat."""
    store: Path = request.app.state.store
    registry = request.app.state.registry
    entries = registry.scan()
    evals = eval_keys(store)
    extra = registry.loaded()
    cards = [adapter_card(store, e, evals.get(e.export_key or ""), e.id in extra)
             for e in sorted(entries.values(), key=lambda e: -e.created) if e.kind == "adapter"]
    bases = [adapter_card(store, e, None, False) for e in entries.values() if e.kind == "base"]
    return AdapterList(data=cards, bases=bases)


@router.get("/v1/reports/{eval_key}/{name}", response_model=None)
def report_file(eval_key: str, name: str, request: Request) -> FileResponse:
    """A file of an eval artifact (report.html, report.md, its PNGs, metrics.json), read-only."""
    store: Path = request.app.state.store
    folder = Path(os.path.realpath(store)) / "eval" / eval_key
    if (not KEY.fullmatch(eval_key) or os.path.realpath(folder) != str(folder)
            or not (folder / "manifest.json").is_file()):
        raise HTTPException(404, f"no eval artifact {eval_key[:70]!r} in the store")
    # Links followed, the file must be the store's own: a link planted in the store (the file, or the
    # eval key folder itself) to a file outside it is no file of the artifact.
    real = Path(os.path.realpath(folder / name)) if NAME.fullmatch(name) else None
    if real is None or not real.is_relative_to(folder) or not real.is_file():
        raise HTTPException(404, f"the eval artifact has no file {name[:100]!r}")
    return FileResponse(real, headers=SANDBOXED)


@router.post("/v1/safety/flags")
def safety_flags(body: FlagRequest, request: Request) -> FlagList:
    """The flags `text` raises under the rules of `model`'s spec (`eval.safety`), as the eval report lists them."""
    entry: Entry | None = request.app.state.registry.get(body.model)
    if entry is None:
        raise HTTPException(404, f"model {body.model!r} does not exist; GET /v1/models lists what is served")
    return FlagList(data=[Flag(**f) for f in flags(body.text, rules_of(entry.spec.eval.safety))])
