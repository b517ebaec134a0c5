"""A job's checkpoints in OpenAI's shape (`fine_tuning.job.checkpoint`): the train stage's
`checkpoint-N` folders in the store's work area for the job's train key. The key comes from the job's
run records (written when the train stage ends, cancelled or failed included), or while it trains from
the job log's `train: running KEY` line; a stage that finished
cleanly removed its work area, so a succeeded job lists none, as the work area no longer holds any."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from runner.core.outputs import OutputError, RunRecord
from runner.core.records import runs_dir


def train_keys(store: Path, spec_path: Path) -> list[str]:
    """The train keys of every run record of this spec file, newest first."""
    folder = runs_dir(store)
    wanted = str(spec_path.resolve())
    found: list[tuple[float, str]] = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            record = RunRecord.read(path)
        except OutputError:
            continue  # a record being written: the next call sees it
        key = dict(record.stages).get("train")
        if record.spec_path == wanted and key:
            found.append((record.started, key))
    return [key for _, key in sorted(found, reverse=True)]


def _metrics(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "trainer_state.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    logged = [h for h in state.get("log_history", []) if "loss" in h]
    last = logged[-1] if logged else {}
    metrics: dict[str, Any] = {"step": state.get("global_step")}
    if "loss" in last:
        metrics["train_loss"] = last["loss"]
    return metrics


def running_key(store: Path, log: Path) -> str | None:
    """While the train stage runs its record has no key yet; the job log's `train: running KEY` line
    names the start of it, and the work area the whole."""
    try:
        lines = log.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found_in = (re.search(r"\btrain: running ([0-9a-f]{12}) ", line) for line in reversed(lines))  # "[runner] ..."
    match = next((m for m in found_in if m), None)
    if match is None:
        return None
    short = match.group(1)
    found = sorted((store / "train" / ".work").glob(f"{short}*"))
    return found[0].name if len(found) == 1 else None


def _card(path: Path, step: int, key: str, job_id: str, store: Path) -> dict[str, Any] | None:
    try:
        created = int(path.stat().st_mtime)
    except OSError:
        return None  # rotated away by the trainer (save_total_limit) since the folder was listed
    return {"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{key[:12]}-{step}", "created_at": created,
            "fine_tuning_job_id": job_id, "fine_tuned_model_checkpoint": str(path.relative_to(store)),
            "step_number": step, "metrics": _metrics(path)}


def checkpoints(store: Path, job_id: str, spec_path: Path, log: Path) -> list[dict[str, Any]]:
    """Newest first, as OpenAI lists them."""
    key = next(iter(train_keys(store, spec_path)), None) or running_key(store, log)
    if key is None:
        return []
    folder = store / "train" / ".work" / key / "checkpoints"
    steps = sorted(((int(p.name[11:]), p) for p in folder.glob("checkpoint-*") if p.name[11:].isdigit()), reverse=True)
    cards = [_card(path, step, key, job_id, store) for step, path in steps]
    return [card for card in cards if card is not None]
