"""The registry of what can be served: every base model and exported adapter in the store's run
records, rescanned on demand so a run that finished a moment ago is there without a restart.

An adapter's id is its spec's `name`, with a short export key added when two different adapters
share a name; a base's id is `base-<short model key>`. Each entry keeps the resolved spec and profile
of the record that made it: the prompt is rendered and the base loaded the way that run did.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.profile import Profile
from runner.records import runs_dir
from runner.spec import Spec, typed

SHORT = 8


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # "base" | "adapter"
    model_key: str  # the model stage artifact: which base this is, or sits on
    model_dir: Path
    spec: Spec
    profile: Profile
    created: int
    adapter_dir: Path | None = None
    parent: str | None = None
    export_key: str | None = None


def base_id(model_key: str) -> str:
    return f"base-{model_key[:SHORT]}"


def _records(store: Path) -> list[dict[str, Any]]:
    """Completed records with an export stage, oldest first."""
    found = []
    folder = runs_dir(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue  # a record being written, or damaged: nothing to serve from it
        keys = {s.get("stage"): s.get("key") for s in data.get("stages", [])}
        if data.get("status") == "completed" and keys.get("export") and keys.get("model"):
            data["_keys"] = keys
            found.append(data)
    return sorted(found, key=lambda d: d.get("started", 0))


def spec_of(data: dict[str, Any]) -> Spec:
    """A run record's resolved spec, its relative paths relative to the spec file it was run from."""
    return typed(Spec, {**data["spec"], "base_dir": str(Path(data["spec_path"]).parent)})


def _typed(data: dict[str, Any]) -> tuple[Spec, Profile]:
    return spec_of(data), typed(Profile, data["profile"])


class Registry:
    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._extra: dict[str, Entry] = {}  # adapters loaded at run time (/v1/load_lora_adapter)

    def scan(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        adapters: dict[str, Entry] = {}  # export key -> entry: the newest record of each adapter
        for data in _records(self.store):
            try:
                spec, profile = _typed(data)
            except (KeyError, TypeError, ValueError):
                continue  # a record of another version of the runner: skipped, not fatal
            keys = data["_keys"]
            model_dir = self.store / "model" / keys["model"]
            export_dir = self.store / "export" / keys["export"] / "adapter"
            if not (model_dir / "manifest.json").is_file() or not export_dir.is_dir():
                continue  # collected by `runner gc` since
            created = int(data.get("finished") or data.get("started") or time.time())
            bid = base_id(keys["model"])
            # The base is prompted as its first run trained (oldest record): stable as more adapters come.
            entries.setdefault(bid, Entry(bid, "base", keys["model"], model_dir, spec, profile, created))
            adapters[keys["export"]] = Entry(spec.name, "adapter", keys["model"], model_dir, spec, profile, created,
                                             export_dir, bid, keys["export"])
        names: dict[str, int] = {}
        for entry in adapters.values():
            names[entry.id] = names.get(entry.id, 0) + 1
        for entry in adapters.values():
            aid = entry.id if names[entry.id] == 1 else f"{entry.id}-{entry.export_key[:SHORT]}"  # type: ignore[index]
            entries[aid] = Entry(**{**entry.__dict__, "id": aid})
        with self._lock:
            entries |= {k: v for k, v in self._extra.items() if k not in entries}
            self._entries = entries
            return dict(entries)

    def get(self, model_id: str) -> Entry | None:
        with self._lock:
            found = self._entries.get(model_id)
        return found if found is not None else self.scan().get(model_id)

    def adapter_for_export(self, export_key: str) -> str | None:
        return next((e.id for e in self.scan().values() if e.export_key == export_key), None)

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._extra[entry.id] = entry
            self._entries[entry.id] = entry

    def loaded(self) -> set[str]:
        """The ids of adapters loaded at run time: those /v1/unload_lora_adapter can remove."""
        with self._lock:
            return set(self._extra)

    def remove(self, model_id: str) -> bool:
        with self._lock:
            self._entries.pop(model_id, None)
            return self._extra.pop(model_id, None) is not None
