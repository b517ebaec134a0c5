"""What the store holds, for people: every served adapter with its eval figures (accuracy base ->
tuned with the 95% interval, per benchmark, from the eval stage's metrics.json), its report files served
read-only, and the safety flags of a text under a model's spec, as the report shows them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError

from runner.safety import flags, rules_of
from runner.serve.models import Entry, _records
from runner.serve.schemas import AdapterCard, AdapterList, Figure, FlagRequest

router = APIRouter()
KEY = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


def _eval_keys(store: Path) -> dict[str, str]:
    """export key -> the eval key of the newest completed run that made it."""
    return {d["_keys"]["export"]: d["_keys"]["eval"] for d in _records(store) if d["_keys"].get("eval")}


def _figures(metrics: dict[str, Any]) -> list[Figure]:
    out = []
    for name, r in sorted((metrics.get("benchmarks") or {}).items()):
        if not isinstance(r, dict):
            continue
        tuned, base, paired = r.get("tuned") or {}, r.get("base") or {}, r.get("paired") or {}
        try:
            out.append(Figure(name=name, n=tuned.get("n"), tuned=tuned.get("acc"), tuned_ci95=tuned.get("ci95"),
                              base=base.get("acc"), base_ci95=base.get("ci95"), delta=paired.get("delta"),
                              delta_ci95=paired.get("ci95"), mcnemar_p=paired.get("mcnemar_p")))
        except ValidationError:
            continue  # metrics of another version of the eval stage: that benchmark is not shown
    return out


def _card(store: Path, entry: Entry, eval_key: str | None, loaded: bool) -> AdapterCard:
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
                       flags=metrics["flags"] if isinstance(metrics.get("flags"), int) else None,
                       report=f"/v1/reports/{eval_key}/report.html" if report else None,
                       queries=list(entry.spec.eval.queries),
                       generation={"max_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                                   "seed": entry.spec.seed})


@router.get("/v1/adapters")
def list_adapters(request: Request) -> AdapterList:
    """Every adapter served, newest first; `loaded` marks those added with /v1/load_lora_adapter (which
    /v1/unload_lora_adapter can remove); bases are listed with their spec's queries for the chat."""
    store: Path = request.app.state.store
    registry = request.app.state.registry
    entries = registry.scan()
    evals = _eval_keys(store)
    extra = registry.loaded()
    cards = [_card(store, e, evals.get(e.export_key or ""), e.id in extra)
             for e in sorted(entries.values(), key=lambda e: -e.created) if e.kind == "adapter"]
    bases = [_card(store, e, None, False) for e in entries.values() if e.kind == "base"]
    return AdapterList(data=cards, bases=bases)


@router.get("/v1/reports/{eval_key}/{name}", response_model=None)
def report_file(eval_key: str, name: str, request: Request) -> FileResponse:
    """A file of an eval artifact (report.html, report.md, its PNGs, metrics.json), read-only."""
    store: Path = request.app.state.store
    folder = store / "eval" / eval_key
    if not KEY.match(eval_key) or not (folder / "manifest.json").is_file():
        raise HTTPException(404, f"no eval artifact {eval_key[:70]!r} in the store")
    path = folder / name
    if not NAME.match(name) or not path.is_file():
        raise HTTPException(404, f"the eval artifact has no file {name[:100]!r}")
    return FileResponse(path)


@router.post("/v1/safety/flags")
def safety_flags(body: FlagRequest, request: Request) -> dict[str, Any]:
    """The flags `text` raises under the rules of `model`'s spec (`eval.safety`), as the eval report lists them."""
    entry: Entry | None = request.app.state.registry.get(body.model)
    if entry is None:
        raise HTTPException(404, f"model {body.model!r} does not exist; GET /v1/models lists what is served")
    return {"object": "list", "data": flags(body.text, rules_of(entry.spec.eval.safety))}
