"""Uploads in OpenAI's shapes (/v1/files): training data (JSONL rows, or a raw `.md`/`.txt` document
that trains as `format: text`) and a job's result files, stored by content under `<store>/files/`;
the routes are runner/serve/routes/files.py.

Each file is `<sha256><suffix>` beside its card `<id>.json`; an id is `file-` and 24 hex digits,
matched exactly, and its path is rebuilt from the card's digest inside the folder, so a card can
never point a job outside the store's uploads."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import HTTPException

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
DOCUMENTS = (".md", ".txt")  # a raw document: trains as a `format: text` source
SUFFIXES = {"jsonl": ".jsonl", "text": ".md", "csv": ".csv"}
PURPOSES = ("fine-tune",)  # what may be uploaded; a job's own results are `fine-tune-results`
MEDIA = {".jsonl": "application/jsonl", ".md": "text/markdown", ".txt": "text/plain", ".csv": "text/csv"}


def rows_problem(text: str) -> str | None:
    """Why `text` is not JSONL rows (one JSON object a line, at least one), or None."""
    count = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return f"line {number} is not JSON (JSONL: one object a line)"
        if not isinstance(row, dict):
            return f"line {number} is a JSON {type(row).__name__}, not an object (JSONL: one object a line)"
        count += 1
    return None if count else "no rows: the file is empty (JSONL: one JSON object a line)"


class FileStore:
    def __init__(self, store: Path) -> None:
        self.folder = store / "files"

    def _card_path(self, file_id: str) -> Path | None:
        return self.folder / f"{file_id}.json" if FILE_ID.match(file_id) else None

    def card(self, file_id: str) -> dict[str, Any] | None:
        path = self._card_path(file_id)
        try:
            data: dict[str, Any] = json.loads(path.read_text("utf-8")) if path else {}
        except (OSError, ValueError):
            return None
        return data if data.get("id") == file_id else None

    def get(self, file_id: str) -> dict[str, Any]:
        card = self.card(file_id)
        if card is None:
            raise HTTPException(404, f"file {file_id!r} does not exist; GET /v1/files lists the uploads")
        return public(card)

    def path(self, file_id: str) -> Path | None:
        """The stored content of upload `file_id` (an exact id), or None."""
        card = self.card(file_id)
        digest, suffix = (card or {}).get("sha256", ""), (card or {}).get("suffix", "")
        if not re.fullmatch(r"[0-9a-f]{64}", str(digest)) or suffix not in MEDIA:
            return None
        found = self.folder / f"{digest}{suffix}"
        return found.resolve() if found.is_file() else None

    def kind(self, file_id: str) -> Literal["jsonl", "text", "csv"] | None:
        card = self.card(file_id)
        suffix = (card or {}).get("suffix")
        return "text" if suffix in DOCUMENTS else "csv" if suffix == ".csv" else "jsonl" if card else None

    def save(self, data: bytes, filename: str, purpose: str, suffix: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        # the same bytes as a document and as rows are two uploads: the id covers what they are
        file_id = "file-" + (digest if suffix == ".jsonl" else hashlib.sha256(f"{suffix}\0".encode() + data).hexdigest())[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        _write(self.folder / f"{digest}{suffix}", data)
        card = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
                "sha256": digest, "suffix": suffix}
        _write(self.folder / f"{file_id}.json", json.dumps(card, indent=1).encode())
        return public(card)

    def all(self, purpose: str | None = None) -> list[dict[str, Any]]:
        cards = []
        for path in self.folder.glob("file-*.json") if self.folder.is_dir() else []:
            card = self.card(path.stem)
            if card is not None and purpose in (None, card.get("purpose")):
                cards.append(public(card))
        return sorted(cards, key=lambda c: (c["created_at"], c["id"]), reverse=True)

    def delete(self, file_id: str) -> None:
        content, card = self.path(file_id), self._card_path(file_id)
        if card is None or self.card(file_id) is None:
            raise HTTPException(404, f"file {file_id!r} does not exist; GET /v1/files lists the uploads")
        card.unlink(missing_ok=True)
        if content is not None:
            content.unlink(missing_ok=True)


def public(card: dict[str, Any]) -> dict[str, Any]:
    """The card as OpenAI's file object (without the store's own fields)."""
    return {k: v for k, v in card.items() if k not in ("sha256", "suffix")}


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # then moved into place: never half a file
    tmp.write_bytes(data)
    os.replace(tmp, path)


def page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    """OpenAI's cursor page: the `limit` items after the one whose id is `after` (from the start when
    `after` is none; nothing when it names no item, so a vanished cursor ends the listing)."""
    start = 0
    if after is not None:
        start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), len(items))
    chosen = items[start:start + limit]
    return {"object": "list", "data": chosen, "has_more": start + limit < len(items),
            "first_id": chosen[0]["id"] if chosen else None, "last_id": chosen[-1]["id"] if chosen else None}
