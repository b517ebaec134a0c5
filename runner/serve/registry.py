"""The registry of what the store serves: every base model and exported adapter in the store's run
records, rescanned on demand so a run that finished a moment ago is there without a restart; the
checks an adapter passes to join it at run time (/v1/load_lora_adapter); and each adapter's card for
the page, with its eval figures.

An adapter's id is its spec's `name`. Names are stable: every name a run record gave an export keeps
answering (two runs of the same inputs under two names serve one export under both), and a name
first claimed by one export stays with it; a later, different export under the same name is
`<name>-<short export key>`, which also answers for the first. A base's id is
`base-<short model key>`. Each entry keeps the resolved spec and profile of the record that made it:
the prompt is rendered and the base loaded the way that run did.

The served set (`<store>/serve/served.json`) keeps what changed at run time across a restart:
adapters loaded with /v1/load_lora_adapter, and adapters deleted with DELETE /v1/models/{id} (their
artifacts stay until `runner gc`; a later run of the same adapter under that name serves it again).

Loading an adapter checks that the folder is inside the store, exists, holds an adapter, and that the
adapter was trained on the base it is to sit on. Never a 200 for a path that does not exist or a base
that does not match (vLLM #18372 answered 200 for a missing path). A loaded adapter is prompted as it
was trained: the spec of the run record that made the folder (an export, or a train stage's
checkpoint), as the store's own copy is; the base's spec only when no record names the folder.

A card shows an adapter's eval figures (from the eval stage's metrics.json: accuracy base -> tuned
with the 95% interval and the calibration error, per benchmark; ROUGE-L and BLEU of free-text
benchmarks; the held-out perplexity); the page's routes (runner/serve/routes/page.py) serve it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from runner.core.files import NotRegularFile, TooLarge, read_regular
from runner.core.records import runs_dir
from runner.machine.profile import Profile
from runner.serve.schemas import AdapterCard, Figure, LoadAdapter, Perplexity, TextFigure
from runner.spec.typed import Spec, typed

log = logging.getLogger("runner.serve")
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


# What /v1/load_lora_adapter may add: an adapter of the store, on the base it was trained on.


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record_of(store: Path, folder: Path) -> dict[str, Any] | None:
    """The run record that made `folder`: <store>/export/KEY/..., <store>/train/KEY/... or a checkpoint
    in <store>/train/.work/KEY/..., else the train key its metadata.json names."""
    parts = folder.relative_to(store).parts
    if len(parts) >= 2 and parts[0] == "export":
        return record_with(store, "export", parts[1])
    if len(parts) >= 3 and parts[:2] == ("train", ".work"):
        return record_with(store, "train", parts[2])
    if len(parts) >= 2 and parts[0] == "train":
        return record_with(store, "train", parts[1])
    key = ((_read(folder / "metadata.json") or {}).get("stage_keys") or {}).get("train")
    return record_with(store, "train", str(key)) if key else None


def _model_key(record: dict[str, Any] | None) -> str | None:
    stages = record.get("stages") if record else None
    key = next((s.get("key") for s in stages or [] if isinstance(s, dict) and s.get("stage") == "model"), None)
    return str(key) if key else None


def _trained_on(store: Path, folder: Path, record: dict[str, Any] | None) -> str | None:
    """What identifies the base the adapter was trained on: its model stage key (from metadata.json,
    the record that made it, or a base_model_name_or_path inside <store>/model/KEY, as a checkpoint
    names the weights it was trained from), else the hub id PEFT's config names."""
    meta = _read(folder / "metadata.json") or {}
    key = (meta.get("stage_keys") or {}).get("model") or _model_key(record)
    if key:
        return str(key)
    named = (_read(folder / "adapter_config.json") or {}).get("base_model_name_or_path")
    if not named:
        return None
    path = Path(str(named))
    if path.is_absolute() and "\x00" not in str(named):
        inside = path.resolve()
        if inside.is_relative_to(store / "model") and len(inside.relative_to(store / "model").parts) >= 1:
            return inside.relative_to(store / "model").parts[0]
    return str(named)


def _base(registry: Registry, name: str | None, trained: str) -> Entry:
    bases = [e for e in registry.scan().values() if e.kind == "base"]
    if name is not None:
        found = next((e for e in bases if e.id == name), None)
        if found is None:
            raise HTTPException(404, f"base model {name!r} does not exist; GET /v1/models lists the bases")
        return found
    if len(bases) == 1:
        return bases[0]
    fits = [e for e in bases if trained in (e.model_key, _hub_id(e))]
    if len(fits) != 1:
        raise HTTPException(400, f"the store has {len(bases)} base models: name one in `base_model_name`")
    return fits[0]


def _hub_id(base: Entry) -> Any:
    return (_read(base.model_dir / "model.json") or {}).get("id")


def check_adapter(store: Path, registry: Registry, body: LoadAdapter) -> Entry:
    if "\x00" in body.lora_path:  # no file system path holds one (and Path.resolve raises on it)
        raise HTTPException(400, "lora_path holds a NUL character")
    raw = Path(body.lora_path)
    try:
        folder = (raw if raw.is_absolute() else store / raw).resolve()
        inside, exists = folder.is_relative_to(store), folder.is_dir()
    except (OSError, RuntimeError) as exc:  # a name too long for the file system, a loop of links
        raise HTTPException(400, f"lora_path {body.lora_path[:100]!r} is no usable path: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    if not inside:
        raise HTTPException(400, f"lora_path {body.lora_path[:100]!r} is outside the store <store>: only adapters "
                                 "in the store are served")
    if not exists:
        raise HTTPException(404, f"lora_path {body.lora_path[:100]!r} does not exist")
    config = _read(folder / "adapter_config.json")
    if config is None or config.get("peft_type") != "LORA":
        raise HTTPException(400, f"{body.lora_path!r} holds no LoRA adapter_config.json")
    record = _record_of(store, folder)
    trained = _trained_on(store, folder, record)
    if trained is None:
        raise HTTPException(400, f"{body.lora_path!r} does not say which base it was trained on "
                                 "(no metadata.json model key, no run record, no base_model_name_or_path)")
    base = _base(registry, body.base_model_name, trained)
    if trained not in (base.model_key, _hub_id(base)):
        raise HTTPException(400, f"{body.lora_path!r} was trained on {trained[:40]!r}, not on {base.id} "
                                 f"(model key {base.model_key[:12]})")
    entry = replace(base, id=body.lora_name, kind="adapter", adapter_dir=folder, parent=base.id, export_key=None)
    try:
        spec, profile = _typed(record) if record else (base.spec, base.profile)
    except (KeyError, TypeError, ValueError):
        spec, profile = base.spec, base.profile  # a record of another version of the runner
    return replace(entry, spec=spec, profile=profile)


def restore(store: Path, registry: Registry) -> None:
    """Load again the adapters the served set kept; one that no longer passes the checks (collected by
    `runner gc`, say) is skipped with a log line, not fatal to the server."""
    for body in registry.saved_loads():
        try:
            request = LoadAdapter(**body)
            if registry.get(request.lora_name) is None:
                registry.add(check_adapter(store, registry, request))
        except (HTTPException, ValueError, TypeError) as exc:
            log.warning("adapter %r from %s not loaded again: %s", body.get("lora_name"), "served.json",
                        getattr(exc, "detail", exc))


# The page's view of an adapter: its card, with the eval figures of the newest run that made it.


def _two(block: Any, field: str) -> tuple[Any, Any]:
    """(base, tuned) of `block[label][field]`, None where absent."""
    sides = [block.get(label) if isinstance(block, dict) else None for label in ("base", "tuned")]
    base, tuned = (side.get(field) if isinstance(side, dict) else None for side in sides)
    return base, tuned


def eval_keys(store: Path) -> dict[str, str]:
    """export key -> the eval key of the newest completed run that made it."""
    return {d["_keys"]["export"]: d["_keys"]["eval"] for d in _records(store) if d["_keys"].get("eval")}


def _figures(metrics: dict[str, Any]) -> list[Figure]:
    out = []
    for name, r in sorted((metrics.get("benchmarks") or {}).items()):
        if not isinstance(r, dict):
            continue
        tuned, base, paired = r.get("tuned") or {}, r.get("base") or {}, r.get("paired") or {}
        base_ece, tuned_ece = _two(r.get("calibration"), "ece")
        try:
            out.append(Figure(name=name, n=tuned.get("n"), tuned=tuned.get("acc"), tuned_ci95=tuned.get("ci95"),
                              base=base.get("acc"), base_ci95=base.get("ci95"), delta=paired.get("delta"),
                              delta_ci95=paired.get("ci95"), mcnemar_p=paired.get("mcnemar_p"),
                              base_ece=base_ece, tuned_ece=tuned_ece))
        except ValidationError:
            continue  # metrics of another version of the eval stage: that benchmark is not shown
    return out


def _text_figures(metrics: dict[str, Any]) -> list[TextFigure]:
    out = []
    found = metrics.get("free_text")
    for name, r in sorted(found.items() if isinstance(found, dict) else ()):
        if not isinstance(r, dict):
            continue
        (base_rouge, tuned_rouge), (base_bleu, tuned_bleu) = _two(r, "rougeL"), _two(r, "bleu")
        try:
            out.append(TextFigure(name=name, n=r.get("n"), base_rougeL=base_rouge, tuned_rougeL=tuned_rouge,
                                  base_bleu=base_bleu, tuned_bleu=tuned_bleu))
        except ValidationError:
            continue
    return out


def _perplexity(metrics: dict[str, Any]) -> Perplexity | None:
    found = metrics.get("perplexity")
    if not isinstance(found, dict):
        return None
    try:
        base, tuned = _two(found, "ppl")
        return Perplexity(base=base, tuned=tuned, tokens=_two(found, "tokens")[1])
    except ValidationError:
        return None


def adapter_card(store: Path, entry: Entry, eval_key: str | None, loaded: bool) -> AdapterCard:
    metrics: dict[str, Any] = {}
    folder = store / "eval" / eval_key if eval_key else None
    if folder is not None and (folder / "manifest.json").is_file():
        try:
            metrics = json.loads((folder / "metrics.json").read_text("utf-8"))
        except (OSError, ValueError):
            metrics = {}
    report = folder is not None and (folder / "report.html").is_file()
    g = entry.spec.eval.generation
    return AdapterCard(id=entry.id, name=entry.spec.name, base=entry.parent, model_key=entry.model_key,
                       export_key=entry.export_key, eval_key=eval_key if metrics else None, created=entry.created,
                       loaded=loaded, benchmarks=_figures(metrics),
                       free_text=_text_figures(metrics), perplexity=_perplexity(metrics),
                       flags=metrics["flags"] if isinstance(metrics.get("flags"), int) else None,
                       report=f"/v1/reports/{eval_key}/report.html" if report else None,
                       queries=list(entry.spec.eval.queries),
                       generation={"max_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                                   "seed": entry.spec.seed})
