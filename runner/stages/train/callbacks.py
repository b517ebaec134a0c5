"""Pieces of the train stage: the batch collator, the per-step metrics log, the loss picture."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


class PadCollator:
    """Pads each micro-batch to its own longest row (not to max_length): less wasted compute."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def memory_mib(device: str) -> float:
    """Peak CUDA memory on a GPU, else this process's resident memory."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class MetricsLog(TrainerCallback):  # type: ignore[misc]
    """Appends loss, learning rate, grad norm and memory to metrics.jsonl at every logging step."""

    def __init__(self, path: Path, device: str, on_row: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.device = device
        self.started = time.time()
        self.on_row = on_row  # the trackers (runner.stages.train.trackers) get the very rows written

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
               "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
               "memory_mib": memory_mib(self.device), "seconds": round(time.time() - self.started, 2)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.on_row is not None:
            self.on_row(row)


class QuietProgress(ProgressCallback):  # type: ignore[misc]
    """The Trainer's bar (steps, rate, time left) with the latest loss beside it, instead of a dict
    printed on a new line at every step."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)


class StopOnSignal(TrainerCallback):  # type: ignore[misc]
    """On Ctrl-C or SIGTERM (see runner.signals.graceful), finish the step, checkpoint, and stop."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        from runner import signals

        if signals.requested() is not None:
            control.should_save = True
            control.should_training_stop = True


def keep_metrics_until(path: Path, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their rows so none appear twice."""
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and learning rate per step, as a PNG for people who would rather look than read.
    Drawn on a bare Figure: importing pyplot costs about half a second in every run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(steps, [r["loss"] for r in rows], color="#1f77b4")
    ax_loss.set(xlabel="step", ylabel="training loss", title=title)
    ax_lr.plot(steps, [r["learning_rate"] or math.nan for r in rows], color="#d62728")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
