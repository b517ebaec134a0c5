"""A job's progress as data, for live curves: each stage's state from the job log's `[runner] STAGE:`
lines, the train stage's metrics.jsonl rows (loss, learning rate, step, seconds) from its work area
while it trains and from its artifact once done, and step / total steps / time left from the
trainer's progress bar in the log (the bar that carries `loss=`)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from runner.core.stage import STAGE_NAMES

MAX_POINTS = 2000  # a long run's curve is thinned to this many points, evenly
STAGE_LINE = re.compile(r"\[runner\] (\w+): (running|cached|done in|built meanwhile by another run, reusing) ?([0-9a-f]{12})?")
# tqdm: " 39%|███▉      | 13/33 [00:04<00:06, 3.1it/s, loss=6.5587]"
BAR = re.compile(r"(\d+)/(\d+) \[([\d:]+)<([\d:?]+),[^\]]*loss=")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def stages(text: str, status: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each stage's state (pending, running, done, cached; failed or cancelled where the job ended in
    it), and the short key the log names for each stage it reached."""
    state = dict.fromkeys(STAGE_NAMES, "pending")
    short: dict[str, str] = {}
    for match in STAGE_LINE.finditer(text):
        stage, verb, key = match.groups()
        if stage not in state:
            continue  # "[runner] profile: ..." and other lines that are not a stage's
        state[stage] = {"running": "running", "cached": "cached", "done in": "done"}.get(verb, "cached")
        if key:
            short[stage] = key
    if status in ("failed", "cancelled"):
        state = {s: status if v == "running" else v for s, v in state.items()}
    return [{"stage": s, "status": v, "key": short.get(s)} for s, v in state.items()], short


def _artifact(store: Path, stage: str, short: str | None) -> Path | None:
    """The finished artifact, else the work area, of the stage whose key starts with `short`."""
    if not short:
        return None
    for folder in (store / stage, store / stage / ".work"):
        found = sorted(folder.glob(f"{short}*")) if folder.is_dir() else []
        if len(found) == 1 and (folder.name == ".work" or (found[0] / "manifest.json").is_file()):
            return found[0]
    return None


def _finite(value: Any) -> float | int | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def points(folder: Path | None) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (folder / "metrics.jsonl").read_text("utf-8").splitlines() if folder else []
    except OSError:
        lines = []  # not written yet, or the work area was just renamed into the artifact
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the last line, while it is being written
        if isinstance(row, dict):  # a diverged run logs NaN: JSON has no NaN, the chart leaves a gap
            rows.append({k: _finite(row.get(k)) for k in ("step", "epoch", "loss", "learning_rate", "seconds")})
    thinned = rows[:: max(1, -(-len(rows) // MAX_POINTS))]
    return thinned + rows[-1:] if rows and thinned[-1] is not rows[-1] else thinned


def progress(store: Path, job: dict[str, Any], log: Path) -> dict[str, Any]:
    try:
        text = log.read_text("utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        text = ""  # queued: no log yet
    listed, short = stages(text, job["status"])
    train = _artifact(store, "train", short.get("train"))
    step = total = left = None
    training = text.find("train: running")
    bars = BAR.findall(text[training:]) if training >= 0 else []
    if bars:
        step, total, _, left_clock = bars[-1]
        step, total, left = int(step), int(total), _seconds(left_clock)
    evaluated = _artifact(store, "eval", short.get("eval"))
    report = (evaluated is not None and evaluated.parent.name == "eval" and (evaluated / "report.html").is_file())
    return {"object": "fine_tuning.job.progress", "id": job["id"], "status": job["status"], "stages": listed,
            "points": points(train), "step": step, "total_steps": total,
            "time_left_s": 0.0 if job["status"] == "succeeded" else left,
            "fine_tuned_model": job.get("fine_tuned_model"), "error": job.get("error"),
            "report": f"/v1/reports/{evaluated.name}/report.html" if report and evaluated else None}
