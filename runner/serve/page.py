"""The page for people at `/`: static HTML, CSS and JavaScript shipped with the package (no CDN, no
build step), a client of the same API as everyone else. These few files are the only routes open
without the API key: they hold nothing of the store, and the page asks for the key itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter()
FOLDER = Path(__file__).resolve().parent / "static"
TYPES = {"app.js": "text/javascript", "chat.js": "text/javascript", "train.js": "text/javascript",
         "jobs.js": "text/javascript", "style.css": "text/css"}
OPEN = frozenset({"/", *(f"/static/{name}" for name in TYPES)})  # the Guard lets these through without the key
FRESH = {"Cache-Control": "no-cache"}  # a server upgraded under an open tab serves its new page on reload


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD as the Guard lets it through
def index() -> FileResponse:
    return FileResponse(FOLDER / "index.html", media_type="text/html", headers=FRESH)


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in TYPES:
        raise HTTPException(404, f"the page has no file {name[:100]!r}")
    return FileResponse(FOLDER / name, media_type=TYPES[name], headers=FRESH)
