"""The registry of what can be served: every base model and exported adapter in the store's run
records, rescanned on demand so a run that finished a moment ago is there without a restart.

An adapter's id is its spec's `name`. Names are stable: every name a run record gave an export keeps
answering (two runs of the same inputs under two names serve one export under both), and a name
first claimed by one export stays with it; a later, different export under the same name is
`<name>-<short export key>`, which also answers for the first. A base's id is
`base-<short model key>`. Each entry keeps the resolved spec and profile of the record that made it:
the prompt is rendered and the base loaded the way that run did.

The served set (`<store>/serve/served.json`) keeps what changed at run time across a restart:
adapters loaded with /v1/load_lora_adapter, and adapters deleted with DELETE /v1/models/{id} (their
artifacts stay until `runner gc`; a later run of the same adapter under that name serves it again).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.core.files import NotRegularFile, TooLarge, read_regular
from runner.core.records import runs_dir
from runner.machine.profile import Profile
from runner.spec.typed import Spec, typed

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


RECORD_BYTES = 64 * 2**20  # as runner gc reads them


def _record(path: Path) -> Any:
    """A run record's data: a bounded read of a regular file (a FIFO in runs/ must not hold a request)."""
    return json.loads(read_regular(path, RECORD_BYTES).decode("utf-8"))


def _records(store: Path) -> list[dict[str, Any]]:
    """Completed records with an export stage, oldest first."""
    found = []
    folder = runs_dir(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = _record(path)
        except (OSError, ValueError, NotRegularFile, TooLarge):
            continue  # a record being written, or damaged: nothing to serve from it
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            continue
        keys = {s.get("stage"): s.get("key") for s in data["stages"] if isinstance(s, dict)}
        if data.get("status") == "completed" and keys.get("export") and keys.get("model"):
            data["_keys"] = keys
            found.append(data)
    return sorted(found, key=lambda d: d.get("started", 0))


def record_with(store: Path, stage: str, key: str) -> dict[str, Any] | None:
    """The newest run record, whatever its status, whose `stage` has `key` (a cancelled run's record
    names its train key too)."""
    newest: dict[str, Any] | None = None
    folder = runs_dir(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = _record(path)
        except (OSError, ValueError, NotRegularFile, TooLarge):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            continue
        found = any(isinstance(s, dict) and s.get("stage") == stage and s.get("key") == key for s in data["stages"])
        if found and (newest is None or (data.get("started") or 0) >= (newest.get("started") or 0)):
            newest = data
    return newest


def spec_of(data: dict[str, Any]) -> Spec:
    """A run record's resolved spec, its relative paths relative to the spec file it was run from."""
    return typed(Spec, {**data["spec"], "base_dir": str(Path(data["spec_path"]).parent)})


def _typed(data: dict[str, Any]) -> tuple[Spec, Profile]:
    return spec_of(data), typed(Profile, data["profile"])


def served_path(store: Path) -> Path:
    return store / "serve" / "served.json"


def _read_served(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(served_path(store).read_text("utf-8"))
    except (OSError, ValueError):
        return {"loaded": [], "deleted": []}  # none yet (or damaged: serving the store as it is beats failing)
    ok = isinstance(data, dict) and isinstance(data.get("loaded"), list) and isinstance(data.get("deleted"), list)
    return data if ok else {"loaded": [], "deleted": []}


class Registry:
    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}  # `<name>-<short export key>` -> the id it answers as
        self._latest: dict[str, float] = {}  # id -> when its newest record started
        self._extra: dict[str, Entry] = {}  # adapters loaded at run time (/v1/load_lora_adapter)
        served = _read_served(self.store)
        self._loads: dict[str, dict[str, Any]] = {b["lora_name"]: b for b in served["loaded"]
                                                  if isinstance(b, dict) and isinstance(b.get("lora_name"), str)}
        self._deleted: dict[tuple[str, str], float] = {(str(d.get("export_key")), str(d.get("name"))): float(d["at"])
                                                       for d in served["deleted"]
                                                       if isinstance(d, dict) and isinstance(d.get("at"), (int, float))}

    def scan(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        pairs: dict[tuple[str, str], tuple[Entry, float]] = {}  # (export key, name) -> newest record's entry
        for data in _records(self.store):  # oldest first: the order names were claimed in
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
            pairs[(keys["export"], spec.name)] = (Entry(spec.name, "adapter", keys["model"], model_dir, spec, profile,
                                                        created, export_dir, bid, keys["export"]),
                                                  float(data.get("started") or 0))
        aliases, latest = self._name(pairs, entries)
        with self._lock:
            entries |= {k: v for k, v in self._extra.items() if k not in entries}
            self._entries, self._aliases, self._latest = entries, aliases, latest
            return dict(entries)

    def _name(self, pairs: dict[tuple[str, str], tuple[Entry, float]],
              entries: dict[str, Entry]) -> tuple[dict[str, str], dict[str, float]]:
        """Each (export, name) its id in `entries`, first claim first; deleted ones claim their name unseen."""
        holders: dict[str, str] = {}  # name -> the export key that holds it plain
        aliases: dict[str, str] = {}
        latest: dict[str, float] = {}
        for (export, name), (entry, started) in pairs.items():
            short = f"{name}-{export[:SHORT]}"
            aid = name if holders.setdefault(name, export) == export else short
            if started <= self._deleted.get((export, name), -1.0) or aid in entries:
                continue
            entries[aid] = replace(entry, id=aid)
            aliases[short], latest[aid] = aid, started
        return aliases, latest

    def get(self, model_id: str) -> Entry | None:
        for attempt in range(2):  # what the last scan knew, then a fresh scan: a run may have just finished
            with self._lock:
                found = self._entries.get(model_id) or self._entries.get(self._aliases.get(model_id, ""))
            if found is not None or attempt:
                return found
            self.scan()
        return None

    def known(self) -> list[Entry]:
        """What the last scan found (and what was loaded since), without reading the store."""
        with self._lock:
            return list(self._entries.values())

    def adapter_for_export(self, export_key: str) -> str | None:
        """The id of the newest run that made this export (a job's own name)."""
        found = [e.id for e in self.scan().values() if e.export_key == export_key]
        return max(found, key=lambda i: self._latest.get(i, 0.0), default=None)

    def add(self, entry: Entry, body: dict[str, Any] | None = None) -> None:
        """Serve an adapter loaded at run time; `body` (the load request) is kept to load it again at start."""
        with self._lock:
            self._extra[entry.id] = entry
            self._entries[entry.id] = entry
            if body is not None:
                self._loads[entry.id] = body
                self._save()

    def loaded(self) -> set[str]:
        """The ids of adapters loaded at run time: those /v1/unload_lora_adapter can remove."""
        with self._lock:
            return set(self._extra)

    def saved_loads(self) -> list[dict[str, Any]]:
        """The load requests of the served set, to load again at start."""
        with self._lock:
            return list(self._loads.values())

    def remove(self, model_id: str) -> bool:
        with self._lock:
            self._entries.pop(model_id, None)
            gone = self._extra.pop(model_id, None) is not None
            if self._loads.pop(model_id, None) is not None or gone:
                self._save()
            return gone

    def delete(self, entry: Entry) -> None:
        """No longer served: a run-time adapter is unloaded, a store adapter hidden (its artifacts stay)."""
        if self.remove(entry.id) or entry.export_key is None:
            return
        with self._lock:
            self._deleted[(entry.export_key, entry.spec.name)] = time.time()
            self._save()

    def _save(self) -> None:
        """Written whole to a temporary name, then moved into place: a crash leaves the old file or the new."""
        data = {"loaded": list(self._loads.values()),
                "deleted": [{"export_key": e, "name": n, "at": at} for (e, n), at in self._deleted.items()]}
        path = served_path(self.store)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), "utf-8")
        os.replace(tmp, path)
