"""The trackers `logging.report_to` names: TensorBoard event files, a local MLflow file store, wandb.

A side effect, in no stage key: the train stage sends each metrics.jsonl row (loss, learning rate,
grad norm, memory) and the validation loss; the eval stage sends its results to the same run (one
run per train key: a later eval of the same training adds to it). Only the main process writes.
Nothing leaves the machine unless wandb is named and WANDB_MODE lets it.

Our own small callbacks, not transformers' TensorBoardCallback and MLflowCallback through
TrainingArguments.report_to: those log no memory, never see the rows metrics.jsonl holds (so the two
could disagree), and MLflowCallback is configured through process-wide environment variables and
MLflow's global active run, where these name their folder and run explicitly.

Where: `logging.dir` (relative to the spec), or `logs/` in the artifact store:
  <dir>/tensorboard/<spec name>-<train key[:12]>/   tensorboard --logdir <dir>/tensorboard
  <dir>/mlruns/                                      experiment = spec name, run tagged runner.train_key
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from runner.core.errors import ProfileError
from runner.core.outputs import TrainSummary
from runner.spec.typed import Spec

KEY_TAG = "runner.train_key"
SCALARS = ("loss", "learning_rate", "grad_norm", "memory_mib")  # of each metrics.jsonl row


def tracker_folder(spec: Spec, store_root: Path) -> Path:
    return spec.resolve(spec.logging.dir) if spec.logging.dir is not None else store_root / "logs"


def run_name(spec: Spec, train_key: str) -> str:
    return f"{spec.name}-{train_key[:12]}"


def require_trackers(spec: Spec) -> None:
    """Stop before the work, not after it, when a named tracker's package is missing."""
    if "wandb" in spec.logging.report_to and importlib.util.find_spec("wandb") is None:
        raise ProfileError("logging.report_to: wandb is not installed; `pip install wandb` (WANDB_MODE=offline "
                           "keeps it local) or remove wandb from logging.report_to")


class Trackers:
    """The spec's trackers for one training run (a train key), opened on first use."""

    def __init__(self, spec: Spec, train_key: str, folder: Path) -> None:
        require_trackers(spec)
        self.spec, self.key, self.folder = spec, train_key, folder
        self.opened: list[Any] | None = None

    def log(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.opened is None:
            self.opened = [OPENERS[name](self.spec, self.key, self.folder) for name in self.spec.logging.report_to]
        for tracker in self.opened:
            tracker.log(values, step)

    def close(self) -> None:
        for tracker in self.opened or []:
            tracker.close()
        self.opened = None


def hyperparameters(spec: Spec) -> dict[str, Any]:
    """What a tracker shows beside the curves, so runs of a sweep can be told apart there."""
    lora, t, m = spec.lora, spec.train, spec.model
    return {"model": m.id if m.source == "hub" else m.source, "quantization": m.quantization, "lora.r": lora.r,
            "lora.alpha": lora.alpha, "lora.dropout": lora.dropout, "train.learning_rate": t.learning_rate,
            "train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.max_steps": t.max_steps,
            "train.scheduler": t.scheduler, "data.max_length": spec.data.max_length, "seed": spec.seed}


class TensorBoard:
    def __init__(self, spec: Spec, key: str, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard" / run_name(spec, key)))

    def log(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a reader (or a crash) sees every step logged so far

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def file_store_allowed() -> Iterator[None]:
    """MLflow 3.18 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: set it for our own calls only."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


class MLflow:
    def __init__(self, spec: Spec, key: str, folder: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with file_store_allowed():
            self.client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
            found = self.client.get_experiment_by_name(spec.name)
            experiment = found.experiment_id if found else self.client.create_experiment(spec.name)
            runs = self.client.search_runs([experiment], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
            if runs:
                self.run_id = runs[0].info.run_id
            else:
                self.run_id = self.client.create_run(experiment, run_name=run_name(spec, key), tags={KEY_TAG: key}).info.run_id
                self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in hyperparameters(spec).items()])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        with file_store_allowed():
            stamp = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def close(self) -> None:
        with file_store_allowed():
            self.client.set_terminated(self.run_id)


class Wandb:
    def __init__(self, spec: Spec, key: str, folder: Path) -> None:
        import wandb  # honours WANDB_MODE (offline, disabled) and WANDB_API_KEY itself

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=spec.name, name=run_name(spec, key), id=key[:32], resume="allow", dir=str(folder),
                              reinit="create_new", config=hyperparameters(spec))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


OPENERS: dict[str, Any] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


class TrackerLog(TrainerCallback):  # type: ignore[misc]
    """Sends each metrics.jsonl row (given by MetricsLog) and each validation loss to the trackers."""

    def __init__(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def row(self, row: dict[str, Any]) -> None:
        self.trackers.log({f"train/{name}": row.get(name) for name in SCALARS}, row["step"])

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and "eval_loss" in logs and state.is_world_process_zero:
            self.validation(logs, state.global_step)

    def validation(self, metrics: dict[str, Any], step: int) -> None:
        """The validation loss (eval/loss) and a mixture's per source (eval/loss/<source>): logged by the
        Trainer during training, measured by the loop before and after it."""
        self.trackers.log({"eval/loss" + name[len("eval_loss"):]: value for name, value in metrics.items()
                           if name.startswith("eval_loss")}, step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trackers.close()  # the run is done; the validation loss after it reopens them for one more row


def tracker_log(spec: Spec, work: Path) -> TrackerLog | None:
    """The callback for a train stage building in `work` (<store>/train/.work/<key>), if any tracker is named."""
    if not spec.logging.report_to:
        return None
    return TrackerLog(Trackers(spec, work.name, tracker_folder(spec, work.parents[2])))


def log_eval(ctx: Any, metrics: dict[str, Any]) -> None:
    """The eval stage's results, to the run of the training they evaluate, at its last step."""
    spec = ctx.spec
    if not spec.logging.report_to or "train" not in ctx.upstream:
        return
    train = ctx.upstream["train"]
    summary = train / "summary.json"
    step = (TrainSummary.read(summary).steps or 0) if summary.is_file() else 0
    trackers = Trackers(spec, train.name, tracker_folder(spec, ctx.work.parents[2]))
    trackers.log(eval_scalars(metrics), step)
    trackers.close()


def eval_scalars(metrics: dict[str, Any]) -> dict[str, float | None]:
    """metrics.json flattened to tracker names: eval/<benchmark>/<model>/<figure>."""
    out: dict[str, float | None] = {}
    for name, r in metrics.get("benchmarks", {}).items():
        for label in ("base", "tuned"):
            if label in r:
                out[f"eval/{name}/{label}/acc"] = r[label]["acc"]
                cal = r.get("calibration", {}).get(label, {})
                out |= {f"eval/{name}/{label}/{k}": cal.get(k) for k in ("ece", "brier")}
    for name, r in metrics.get("free_text", {}).items():
        for label in ("base", "tuned"):
            out |= {f"eval/{name}/{label}/{k}": r[label][k] for k in ("rougeL", "bleu") if label in r}
    ppl = metrics.get("perplexity")
    if ppl:
        out |= {f"eval/perplexity/{label}": ppl[label]["ppl"] for label in ("base", "tuned") if label in ppl}
    return out
