"""The file routes, OpenAI's shapes: /v1/files (upload, list, retrieve, content, delete) over the
store's uploads (runner/serve/uploads.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from runner.serve.limits import MAX_UPLOAD
from runner.serve.schemas import FileDeleted, FileList, FileObject
from runner.serve.uploads import DOCUMENTS, MEDIA, PURPOSES, FileStore, page, rows_problem

router = APIRouter()


def files(request: Request) -> FileStore:
    return FileStore(request.app.state.store)


def _checked(data: bytes, filename: str) -> str:
    """The upload's suffix once its text is checked: 400 naming what is wrong with its rows."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, f"{filename}: not UTF-8 text (JSONL rows, or a .md/.txt document)") from None
    suffix = Path(filename).suffix.lower()
    if suffix in DOCUMENTS:
        if not text.strip():
            raise HTTPException(400, f"{filename}: empty: a document to train on needs some text")
        return suffix
    problem = rows_problem(text)
    if problem:
        raise HTTPException(400, f"{filename}: {problem}")
    return ".jsonl"


@router.post("/v1/files")
async def upload(request: Request, file: UploadFile, purpose: str = Form("fine-tune")) -> FileObject:
    if purpose not in PURPOSES:
        raise HTTPException(400, f"purpose: {purpose!r} is not supported; this server takes {PURPOSES[0]!r} uploads")
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"upload over the {MAX_UPLOAD} byte limit")
    filename = file.filename or "upload.jsonl"
    # parsing every line and hashing up to 64 MiB: off the event loop, which streams everyone's answers
    kind = await run_in_threadpool(_checked, data, filename)
    return FileObject(**await run_in_threadpool(files(request).save, data, filename, purpose, kind))


@router.get("/v1/files")
def list_files(request: Request, limit: int = Query(10000, ge=1, le=10000), after: str | None = None,
               purpose: str | None = None, order: Literal["asc", "desc"] = "desc") -> FileList:
    cards = files(request).all(purpose)
    return FileList(**page(cards if order == "desc" else cards[::-1], limit, after))


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, request: Request) -> FileObject:
    return FileObject(**files(request).get(file_id))


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, request: Request) -> Response:
    store = files(request)
    store.get(file_id)  # 404 for a file that does not exist
    path = store.path(file_id)
    if path is None:
        raise HTTPException(404, f"file {file_id!r} has no content left in the store")
    return Response(path.read_bytes(), media_type=MEDIA[path.suffix])


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, request: Request) -> FileDeleted:
    files(request).delete(file_id)
    return FileDeleted(id=file_id, deleted=True)
