"""Validation loss as the train stage defines it, and early stopping on it.

One definition for every run, packed or not: the summed cross-entropy of every answer token of the
validation rows divided by their number (a per-token mean over the whole set, as the training loss
is per token over each optimizer step), computed on padded, unpacked micro-batches. So a packed and
a padded run report the same number for the same weights, and the per-source figures (rows carry a
`source` column when the data stage mixes several) weigh into the overall one by their tokens.

Early stopping is transformers' own EarlyStoppingCallback (its patience counter and the Trainer's
best metric are in every checkpoint, so a resumed run decides as an uninterrupted one); the best
adapter is kept by `KeepBest`, at each new best, in the work folder beside the checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

OVERALL = "eval_loss"


def validation_loss(model: Any, rows: Any, pad_id: int, micro: int) -> dict[str, float]:
    """{"eval_loss": overall, "eval_loss/<source>": per source (when rows have a `source` column)}."""
    import torch

    from runner.stages.train.batches import PadCollator

    collate = PadCollator(pad_id)
    sources = rows["source"] if "source" in rows.column_names else [None] * len(rows)
    summed: dict[str | None, float] = {}
    counted: dict[str | None, int] = {}
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(rows), micro):
                batch = collate([rows[i] for i in range(start, min(start + micro, len(rows)))])
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()  # (B, T, V)
                targets = batch["labels"][:, 1:].to(device)  # (B, T-1): position t predicts token t+1
                losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                                           ignore_index=-100, reduction="none")  # (B, T-1)
                for i, (loss, n) in enumerate(zip(losses.sum(1).tolist(), targets.ne(-100).sum(1).tolist())):
                    source = sources[start + i]
                    summed[source] = summed.get(source, 0.0) + loss
                    counted[source] = counted.get(source, 0) + n
    finally:
        model.train(was_training)
    total = sum(counted.values())
    out = {OVERALL: sum(summed.values()) / total if total else math.nan}
    named = sorted(k for k in summed if k is not None)
    if len(named) > 1:  # one source (the one-source form's `train`) would only repeat the overall figure
        out.update({f"{OVERALL}/{s}": summed[s] / counted[s] if counted[s] else math.nan for s in named})
    return out


class ValidatingTrainer(Trainer):  # type: ignore[misc]
    """The Trainer with its evaluation replaced by `validation_loss` (the one method it overrides):
    what it logs and hands to callbacks (EarlyStoppingCallback, the best metric) is that number, the
    same whether the run packs or pads, with per-source figures beside it."""

    pad_id: int = 0

    def measure(self) -> dict[str, float]:
        """The validation loss, nothing logged and no callback told (before and after training)."""
        return validation_loss(self.model, self.eval_dataset, self.pad_id, self.args.per_device_eval_batch_size)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        rows = self.eval_dataset if eval_dataset is None else eval_dataset
        metrics = validation_loss(self.model, rows, self.pad_id, self.args.per_device_eval_batch_size)
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class KeepBest(TrainerCallback):  # type: ignore[misc]
    """At each evaluation with a lower loss than any before it (the Trainer's own rule for its best
    metric, applied after this runs), the adapter's weights to `folder`/step-N.safetensors."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    model: Any = None, **kw: Any) -> None:
        loss = (metrics or {}).get(OVERALL)
        best = math.inf if state.best_metric is None else state.best_metric
        if loss is None or not loss < best or not state.is_world_process_zero:
            return
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        path = self.folder / f"step-{state.global_step}.safetensors"
        save_file(weights, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").replace(path)  # whole or absent: a kill mid-write leaves no half file


def restore_best(trainer: Any) -> dict[str, Any] | None:
    """After training with early stopping: the best adapter's weights back into the model (the one
    that trained), and what early stopping did. None without early stopping."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import EarlyStoppingCallback

    callbacks = trainer.callback_handler.callbacks
    keep = next((c for c in callbacks if isinstance(c, KeepBest)), None)
    stop = next((c for c in callbacks if isinstance(c, EarlyStoppingCallback)), None)
    if keep is None or stop is None:
        return None
    state = trainer.state
    trainer.accelerator.wait_for_everyone()  # of several processes, rank 0 wrote the file: let it finish
    if state.best_global_step:  # None when training ended before the first evaluation
        set_peft_model_state_dict(trainer.model, load_file(str(keep.folder / f"step-{state.best_global_step}.safetensors")))
    return stopping_summary(state, stop.early_stopping_patience, stop.early_stopping_threshold or 0.0)


def stopping_summary(state: Any, patience: int, min_delta: float) -> dict[str, Any]:
    """What early stopping did, for summary.json and the report: the evaluations, the best one, and
    whether (and why) training stopped before its last step."""
    evals = sum(1 for row in state.log_history if OVERALL in row)
    stopped = state.global_step < state.max_steps
    reason = (f"stopped at step {state.global_step}: the validation loss did not improve on the best by more than "
              f"{min_delta:g} for {patience} evaluation{'s' if patience > 1 else ''} in a row"
              if stopped else f"trained to the last step ({state.global_step}) without {patience} evaluations in a row "
              "that failed to improve")
    return {"stopped_early": stopped, "stopped_at_step": state.global_step, "best_step": state.best_global_step,
            "best_eval_loss": state.best_metric, "evaluations": evals, "reason": reason}
