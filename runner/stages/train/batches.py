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


class PackCollator:
    """Packs the examples of a micro-batch into rows of at most `capacity` tokens (data.max_length):
    as few rows as hold them, each as short as first-fit decreasing can make it, so the rows end
    nearly level and little padding is left (padding each example to the longest wastes a third to
    a half of a mixed-length batch).

    No attention crosses examples: position ids restart at 0 with each example and no attention mask
    is passed, which transformers reads as packed sequences (masking_utils.find_packed_sequence_indices)
    and turns into a block-diagonal causal mask for SDPA (the profile's attention) and eager. (Flash
    attention's varlen path reads packing only from a single flattened row, so it is not used here.)
    The first label of every example becomes -100: unpacked it is never a target (position t predicts
    t+1 within its row), and packed the last token of the example before must not predict it. So the
    target tokens, and with them the loss and its gradients, are exactly those of `PadCollator`.
    """

    def __init__(self, pad_id: int, capacity: int) -> None:
        self.pad_id = pad_id
        self.capacity = capacity

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        bins = pack_rows([len(r["input_ids"]) for r in rows], self.capacity)
        width = max(sum(len(rows[i]["input_ids"]) for i in b) for b in bins)
        ids = torch.full((len(bins), width), self.pad_id, dtype=torch.long)  # (R, T)
        labels = torch.full((len(bins), width), -100, dtype=torch.long)  # (R, T)
        positions = torch.zeros((len(bins), width), dtype=torch.long)  # (R, T)
        for i, b in enumerate(bins):
            at = 0
            for r in (rows[j] for j in b):
                n = len(r["input_ids"])
                ids[i, at:at + n] = torch.tensor(r["input_ids"])
                labels[i, at + 1:at + n] = torch.tensor(r["labels"][1:])
                positions[i, at:at + n] = torch.arange(n)
                at += n
            positions[i, at:] = torch.arange(width - at)  # the padding tail: a block of its own, no targets
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in rows of at most `capacity` tokens (or the longest length): of the
    fewest rows and a few more, the count whose narrowest first-fit-decreasing width computes the
    fewest positions (rows x width; a tie goes to the narrower rows, whose attention is cheaper)."""
    longest, total = max(lengths), sum(lengths)
    capacity = max(capacity, longest)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    fewest = -(-total // capacity)
    best: list[list[int]] | None = None
    # The last count (a row per example, rows of the longest) keeps the positions computed within
    # those of padding, which the memory estimate (micro-batch x longest example) counts on.
    for count in [*range(fewest, min(len(lengths), fewest + 4) + 1), len(lengths)]:
        found = _narrowest(lengths, order, count, max(longest, -(-total // count)), capacity)
        if found is not None and (best is None or _cost(found, lengths) <= _cost(best, lengths)):
            best = found
    assert best is not None  # one row per example always fits
    return best


def _narrowest(lengths: list[int], order: list[int], count: int, width: int, capacity: int) -> list[list[int]] | None:
    """First-fit decreasing into rows of `width`, widened ~1.5% at a time until `count` rows hold all."""
    while width <= capacity:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            k = next((k for k, free in enumerate(room) if free >= lengths[i]), None)
            if k is None:
                bins.append([i])
                room.append(width - lengths[i])
            else:
                bins[k].append(i)
                room[k] -= lengths[i]
        if len(bins) <= count:
            return bins
        width += max(1, width // 64)
    return None


def _cost(bins: list[list[int]], lengths: list[int]) -> int:
    return len(bins) * max(sum(lengths[i] for i in b) for b in bins)


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
        self.on_row = on_row  # the trackers (runner.report.trackers) get the very rows written

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        if "eval_loss" in logs:  # a validation during training (early stopping): overall and per source
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                   **{k: v for k, v in logs.items() if k.startswith("eval_loss")}, **_signals(logs, "eval_")}
            self._append(row)
        if "loss" not in logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
               "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
               "memory_mib": memory_mib(self.device), "seconds": round(time.time() - self.started, 2),
               **_signals(logs)}
        self._append(row)
        if self.on_row is not None:
            self.on_row(row)

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def _signals(logs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A preference method's figures (TRL's rewards/margins, rewards/accuracies, chosen and rejected
    rewards and log-probabilities, ORPO's log odds, KTO's kl): the report draws them per step."""
    named = {prefix + n for n in ("kl", "log_odds_ratio", "nll_loss")}
    return {k: v for k, v in logs.items() if k in named or k.startswith((prefix + "rewards/", prefix + "logps/"))}


class QuietProgress(ProgressCallback):  # type: ignore[misc]
    """The Trainer's bar (steps, rate, time left) with the latest loss beside it, instead of a dict
    printed on a new line at every step."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)


class StopOnSignal(TrainerCallback):  # type: ignore[misc]
    """On Ctrl-C or SIGTERM (see runner.core.signals.graceful), finish the step, checkpoint, and stop.
    With several processes every one stops at the same step: the signal reaches them at different
    moments (the launcher passes it on one by one), and a process that saved while another went on to
    the next step would wait for it forever in the next collective."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        from runner.core import signals

        signum = _agreed(signals.requested() or 0, args)
        if signum:
            signals.adopt(signum)  # a process the signal has not reached yet stops as the others do
            control.should_save = True
            control.should_training_stop = True


def _agreed(signum: int, args: Any) -> int:
    """The highest signal number any process holds (0: none), one small all-reduce a step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")  # gloo takes CPU tensors
    flag = torch.tensor([signum], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def keep_metrics_until(path: Path, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their rows so none appear twice."""
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-step rows of metrics.jsonl (validations during training are rows too)."""
    return [r for r in rows if "loss" in r]


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and learning rate per step, as a PNG for people who would rather look than read.
    Drawn on a bare Figure: importing pyplot costs about half a second in every run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = [r for r in rows if "eval_loss" in r]
    rows = training_rows(rows)
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(steps, [r["loss"] for r in rows], color="#1f77b4", label="training")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", color="#ff7f0e", label="validation")
        ax_loss.legend()
    ax_loss.set(xlabel="step", ylabel="loss" if evals else "training loss", title=title)
    ax_lr.plot(steps, [r["learning_rate"] or math.nan for r in rows], color="#d62728")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
