"""What the store holds, for people: every served adapter with its eval figures (from the eval stage's
metrics.json: accuracy base -> tuned with the 95% interval and the calibration error, per benchmark;
ROUGE-L and BLEU of free-text benchmarks; the held-out perplexity), its report files served read-only
(sandboxed: a report's HTML runs no script with the page's origin), and the safety flags of a text
under a model's spec, as the report shows them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError

from runner.scoring.safety import flags, rules_of
from runner.serve.models import Entry, _records
from runner.serve.schemas import AdapterCard, AdapterList, Figure, Flag, FlagList, FlagRequest, Perplexity, TextFigure

router = APIRouter()
KEY = re.compile(r"[0-9a-f]{64}")  # both matched whole (fullmatch): "$" would let a trailing newline through
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
# A report is the store's HTML: shown in a sandbox (an opaque origin, no script), never sniffed as another type.
SANDBOXED = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


def _two(block: Any, field: str) -> tuple[Any, Any]:
    """(base, tuned) of `block[label][field]`, None where absent."""
    sides = [block.get(label) if isinstance(block, dict) else None for label in ("base", "tuned")]
    base, tuned = (side.get(field) if isinstance(side, dict) else None for side in sides)
    return base, tuned


def _eval_keys(store: Path) -> dict[str, str]:
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
                       free_text=_text_figures(metrics), perplexity=_perplexity(metrics),
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
