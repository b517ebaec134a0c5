"""What a job leaves besides its record: its events (the `runner run` log's lines, each stamped when
the server read it, progress bars left out) and, once it succeeded, its result file (the train
stage's metrics as OpenAI's step_metrics.csv) and the tokens it trained on."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from runner.core.outputs import DataStats, OutputError

# tqdm's bars: " 39%|███▉      | 13/33 [00:04<00:06, 3.1it/s, loss=6.5]", "Map: 100%|...", "13it [00:04, 3.1it/s]"
BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+ \[|^\s*\d+it \[")


def message(line: str) -> str | None:
    """What a log line shows once its `\\r` redraws are done: its last piece, or None for a progress bar
    (redrawn many times a second: the job's progress route carries its step and time left)."""
    shown = next((part.rstrip() for part in reversed(line.split("\r")) if part.strip()), None)
    return None if shown is None or BAR.search(shown) else shown


def level(text: str) -> str:
    lowered = text.lower()
    return "error" if lowered.startswith("error") else "warn" if lowered.startswith("warning") else "info"


class Events:
    """A job's events file (`<job>.events.jsonl`): one JSON line per event, appended as it happens."""

    def __init__(self, folder: Path, job_id: str) -> None:
        self.path, self.log, self.job_id = folder / f"{job_id}.events.jsonl", folder / f"{job_id}.log", job_id
        self._lock = threading.Lock()
        self._offset, self._partial = 0, b""

    def add(self, text: str, at: float | None = None) -> None:
        row = {"created_at": int(at if at is not None else time.time()), "level": level(text), "message": text}
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    def pump(self, final: bool = False) -> None:
        """Turn the log's new complete lines into events stamped now (called every half second while the
        job runs, so a line's time is within that of its writing); `final` flushes a last unended line."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = b"" if final else lines.pop()
        now = time.time()
        for raw in lines:
            shown = message(raw.decode("utf-8", errors="replace"))
            if shown is not None:
                self.add(shown, now)

    def listed(self, created_at: int) -> list[dict[str, Any]]:
        """Every event, oldest first, in OpenAI's shape (a job from before events files: its log's lines)."""
        try:
            rows = [json.loads(line) for line in self.path.read_text("utf-8").splitlines() if line.strip()]
        except (OSError, ValueError):
            rows = self._from_log(created_at)
        short = self.job_id.removeprefix("ftjob-")
        return [{"id": f"ftevent-{short}-{i}", "object": "fine_tuning.job.event", "created_at": row["created_at"],
                 "level": row["level"], "message": row["message"], "type": "message", "data": None}
                for i, row in enumerate(rows)]

    def _from_log(self, created_at: int) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text("utf-8", errors="replace").splitlines()
        except OSError:
            return []
        shown = (message(line) for line in lines)
        return [{"created_at": created_at, "level": level(text), "message": text} for text in shown if text]


def _stage_folder(store: Path, record: Any, stage: str) -> Path | None:
    found = record.stage(stage) if record else None
    key = found.get("key") if found else None
    return store / stage / str(key) if key else None


def metric_rows(store: Path, record: Any) -> list[dict[str, Any]]:
    folder = _stage_folder(store, record, "train")
    try:
        lines = (folder / "metrics.jsonl").read_text("utf-8").splitlines() if folder else []
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def step_metrics(rows: list[dict[str, Any]]) -> bytes:
    """OpenAI's result file: a CSV of step, train_loss, valid_loss (a validation's row), learning rate,
    epoch and seconds, one line per metrics.jsonl row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "epoch", "train_loss", "valid_loss", "learning_rate", "seconds"])
    for row in rows:
        writer.writerow([row.get(k, "") for k in ("step", "epoch", "loss", "eval_loss", "learning_rate", "seconds")])
    return out.getvalue().encode()


def trained_tokens(store: Path, record: Any, rows: list[dict[str, Any]]) -> int | None:
    """The training set's tokens (the data stage's stats.json) times the epochs trained (the last
    metrics row's epoch, so a run stopped by max_steps or early stopping counts what it did)."""
    folder = _stage_folder(store, record, "data")
    try:
        total = DataStats.read(folder / "stats.json").train_tokens.total if folder else None
    except OutputError:
        return None
    if total is None:
        return None
    epochs = max((float(r["epoch"]) for r in rows if isinstance(r.get("epoch"), (int, float))), default=None)
    return round(total * epochs) if epochs is not None else None
