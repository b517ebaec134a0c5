"""The train stage's loop, in the order it happens: `setup` (seed, data, model, the metrics log a
resumed attempt continues), `train` (halving the micro-batch on out-of-memory, resuming from the
last checkpoint), `save` (adapter, metrics, loss picture, summary).

Every process `accelerate launch` starts runs all of it; rank 0 alone writes. torch, transformers,
peft and datasets are imported inside the functions: the stage registry imports this module, and
planning must never import torch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.outputs import TrainSummary
from runner.core.stage import StageContext
from runner.machine.world import SHARDED
from runner.models.loading import cpu_threads
from runner.stages.train.launch import check_world, is_main_process, sharding_of, world_of
from runner.stages.train.preference import PREFERENCE_METHODS, build_preference_trainer, preference_summary
from runner.stages.train.trainer import attach_lora, build_trainer, close_progress


@dataclass(frozen=True)
class Ready:
    """What `setup` built, for `train` and `save`."""

    model: Any  # the base model with its LoRA adapters
    pad_id: int
    train_rows: Any  # datasets.Dataset
    val_rows: Any
    metrics: Path  # the metrics log, in the work folder: it outlives a killed attempt
    trainable: int
    total: int
    sharded: bool  # FSDP or DeepSpeed ZeRO (runner.machine.world.SHARDED)


@dataclass(frozen=True)
class Trained:
    trainer: Any  # the last one, which trained to the end
    result: Any  # transformers.trainer_utils.TrainOutput
    eval_loss_before: float | None
    eval_loss_after: float | None
    eval_before: dict[str, float] | None = None  # "eval_loss" and "eval_loss/<source>" (validation.py)
    eval_after: dict[str, float] | None = None
    stopping: dict[str, Any] | None = None  # what early stopping did (validation.stopping_summary)
    # How the model was wrapped while it trained (launch.sharding_of), read before any evaluation after
    # training: TRL's held-out evaluation sets the Trainer's model_wrapped back to the bare model.
    sharding: str | None = None


def train_here(ctx: StageContext) -> None:
    """Train in this process (one of several when launched by accelerate), on exactly the profile's
    CPU threads: the count is in the key on CPU, so it must not be whatever the environment says."""
    from runner.core import signals

    # Graceful from the start, before torch is imported: a Ctrl-C during setup waits for a point where
    # stopping loses nothing (raised inside transformers' loading it could be swallowed, and the run
    # trained on; inside torch's import it aborted the process).
    with signals.graceful(), cpu_threads(ctx.profile.threads):
        signals.stop_if_requested()  # one that came before, and was swallowed where it was raised
        ready = setup(ctx)
        signals.stop_if_requested()  # nothing trained yet: nothing to save
        trained = train(ctx, ready)
        save(ctx, ready, trained)


def setup(ctx: StageContext) -> Ready:
    from transformers import set_seed

    # The seed first: LoRA's A matrices are drawn from it when the model gets its adapters. Then the
    # data, which is quick to read and draws no random numbers, so a broken file stops the stage
    # before the slow model load. The metrics log last: it follows the checkpoints, not either.
    set_seed(ctx.spec.seed)
    pad_id, train_rows, val_rows = _setup_data(ctx)
    model, trainable, total = _setup_model(ctx)
    metrics = _setup_metrics(ctx)
    return Ready(model=model, pad_id=pad_id, train_rows=train_rows, val_rows=val_rows, metrics=metrics,
                 trainable=trainable, total=total, sharded=ctx.profile.distributed in SHARDED)


def _setup_data(ctx: StageContext) -> tuple[int, Any, Any]:
    """(the pad id the collator pads with, training rows, validation rows), as the data stage wrote them."""
    from datasets import Dataset

    from runner.models.loading import load_tokenizer

    tok = load_tokenizer(ctx.upstream["model"])
    train_rows = Dataset.from_file(str(ctx.upstream["data"] / "train.arrow"))
    val_rows = Dataset.from_file(str(ctx.upstream["data"] / "validation.arrow"))
    return tok.pad_token_id, train_rows, val_rows


def _setup_model(ctx: StageContext) -> tuple[Any, int, int]:
    """(the base model with its adapters, trainable parameters, all parameters)."""
    from runner.models.loading import load_base

    sharded = ctx.profile.distributed in SHARDED
    base = load_base(ctx.upstream["model"], ctx.spec, ctx.profile, sharded=sharded)
    if ctx.spec.train.init_adapter is not None:  # chaining: the earlier run's adapter, trained on
        from runner.stages.train.chaining import attach_init_adapter

        model = attach_init_adapter(base, ctx, ctx.profile.gradient_checkpointing)
    else:
        model = attach_lora(base, ctx.spec, ctx.profile.gradient_checkpointing, sharded=sharded)
    trainable, total = model.get_nb_trainable_parameters()  # before FSDP flattens the parameters
    ctx.log(f"train: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return model, trainable, total


def _setup_metrics(ctx: StageContext) -> Path:
    """The metrics log: emptied for a fresh start; a resumed attempt keeps the rows up to its checkpoint."""
    from runner.stages.train.batches import keep_metrics_until

    metrics = ctx.work / "metrics.jsonl"
    checkpoint = last_checkpoint(ctx.work / "checkpoints")
    if checkpoint is None:
        if is_main_process():  # of several processes, rank 0 alone writes the log
            metrics.unlink(missing_ok=True)
        return metrics
    step = int(Path(checkpoint).name.split("-")[1])
    if is_main_process():
        keep_metrics_until(metrics, step)
    ctx.log(f"train: resuming from {Path(checkpoint).name} of an earlier attempt (step {step})")
    return metrics


def train(ctx: StageContext, ready: Ready) -> Trained:
    def make_trainer(micro: int, accumulation: int) -> Any:
        profile = replace(ctx.profile, micro_batch_size=micro, gradient_accumulation=accumulation)
        method = ctx.spec.train.method  # the one dispatch on train.method
        if method == "grpo":
            from runner.models.loading import load_tokenizer
            from runner.stages.train.grpo import build_grpo_trainer

            return build_grpo_trainer(ready.model, ctx.spec, profile, ctx.work, ready.train_rows,
                                      load_tokenizer(ctx.upstream["model"]), ready.metrics)
        if method in PREFERENCE_METHODS:  # dpo, orpo, kto: TRL's trainers (preference.py)
            return build_preference_trainer(ctx, ready, profile)
        return build_trainer(ready.model, ctx.spec, profile, ctx.work, ready.train_rows, ready.val_rows,
                             ready.pad_id, ready.metrics)

    if ready.sharded and ctx.spec.train.early_stopping is not None:
        raise StageError("train.early_stopping: not supported under FSDP or ZeRO yet; remove it or train in one process "
                         "(hardware.processes: 1)")
    per_process = ctx.spec.train.batch_size // ctx.profile.processes
    trained = train_with_retries(make_trainer, ctx.profile.micro_batch_size, per_process, ctx.work / "checkpoints",
                                 ctx.log, sharded=ready.sharded, metrics=ready.metrics)
    world = world_of(trained.trainer, trained.sharding)
    check_world(world, ctx.profile)
    if world["world_size"] > 1:
        ctx.log(f"train: trained in {world['world_size']} processes ({world['backend']})"
                + (f" on {world['nodes']} nodes" if world["nodes"] > 1 else ""))
    return trained


def train_with_retries(make_trainer: Callable[[int, int], Any], micro: int, batch_size: int, checkpoints: Path,
                       log: Callable[[str], None], sharded: bool = False, metrics: Path | None = None) -> Trained:
    """Train; on a CUDA out-of-memory error halve the micro-batch, double accumulation (the effective
    batch stays), and resume from the last checkpoint (the `metrics` log loses the failed attempt's rows
    after it, as a resumed run's does, so no step appears twice). Gives up once the micro-batch is 1.

    `sharded` (FSDP): the Trainer must wrap the model before anything runs it, so the loss before
    training comes from its own first evaluation (eval_on_start), and an out-of-memory error ends
    the run (the model's layers are wrapped in place; a second Trainer cannot wrap them again)."""
    import torch

    before, start = None, None
    while True:
        trainer = make_trainer(micro, batch_size // micro)
        if start is None and not sharded:
            start = _trainable(trainer.model)
        elif start is not None and last_checkpoint(checkpoints) is None:
            _restore(trainer.model, start)  # "from the start" means it: not from the failed attempt's weights
        if before is None and trainer.eval_dataset is not None and not sharded:
            before = _measure(trainer)
            _unprepare(trainer)
        try:
            return _train_once(trainer, checkpoints, before, sharded)
        except torch.OutOfMemoryError:
            micro = _smaller_after_oom(micro, batch_size, checkpoints, log, sharded)
            if metrics is not None and is_main_process():
                from runner.stages.train.batches import keep_metrics_until

                resume = last_checkpoint(checkpoints)
                keep_metrics_until(metrics, int(Path(resume).name.split("-")[1]) if resume else 0)
        finally:
            close_progress(trainer)
        del trainer
        _free_memory()


def _unprepare(trainer: Any) -> None:
    """Undo what an evaluation before training did to the model. The Trainer's evaluate() (TRL's
    trainers measure held-out pairs with it) prepares the model for evaluation only, without DDP, and
    Accelerate marks it prepared; training then refuses to wrap it again, so each process trained
    alone, its gradients never averaged (the world check after training caught it: "ran at world size
    2 with none"). Our own validation (SFT) never goes through it."""
    model = trainer.model
    if not getattr(model, "_is_accelerate_prepared", False) or trainer.model_wrapped is not model:
        return
    model._is_accelerate_prepared = False
    if "_original_forward" in vars(model):  # mixed precision wrapped forward in autocast: once is enough
        model.forward = model._original_forward
        del model._original_forward
    trainer.accelerator._models[:] = [m for m in trainer.accelerator._models if m is not model]


def _trainable(model: Any) -> dict[str, Any]:
    """A copy of the trainable weights (the adapter's), in CPU memory: where a retry with no checkpoint starts."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _restore(model: Any, weights: dict[str, Any]) -> None:
    for name, p in model.named_parameters():
        if name in weights:
            p.data.copy_(weights[name])


def _train_once(trainer: Any, checkpoints: Path, before: dict[str, float] | None, sharded: bool) -> Trained:
    from runner.core import signals
    from runner.stages.train.validation import restore_best

    with signals.graceful():  # Ctrl-C / SIGTERM: checkpoint at the end of the step, then stop
        result = trainer.train(resume_from_checkpoint=last_checkpoint(checkpoints))
        signals.stop_if_requested(" (progress saved in a checkpoint)")
    sharding = sharding_of(trainer)
    stopping = restore_best(trainer)  # early stopping: the adapter written (and evaluated next) is the best
    after = _measure(trainer) if trainer.eval_dataset is not None else None
    if sharded:
        before = next(({"eval_loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h), None)
    return Trained(trainer=trainer, result=result, eval_loss_before=before["eval_loss"] if before else None,
                   eval_loss_after=after["eval_loss"] if after else None, eval_before=before, eval_after=after,
                   stopping=stopping, sharding=sharding)


def _measure(trainer: Any) -> dict[str, float]:
    """The validation loss overall and per source (validation.py); the Trainer's own under FSDP."""
    from runner.report.trackers import TrackerLog

    if hasattr(trainer, "measure"):
        measured: dict[str, float] = trainer.measure()  # outside the Trainer's logging: the trackers are told here
        for tracker in (c for c in trainer.callback_handler.callbacks if isinstance(c, TrackerLog)):
            if trainer.state.is_world_process_zero:
                tracker.validation(measured, trainer.state.global_step)
        return measured
    return {"eval_loss": trainer.evaluate()["eval_loss"]}


def _smaller_after_oom(micro: int, batch_size: int, checkpoints: Path, log: Callable[[str], None],
                       sharded: bool) -> int:
    """The micro-batch to retry with after an out-of-memory error, or a StageError saying what to do."""
    from runner.machine.memory import halve

    if sharded:
        raise StageError("train: out of memory under FSDP or ZeRO: lower train.micro_batch_size or data.max_length, "
                         "or turn on train.gradient_checkpointing") from None
    if micro == 1:
        raise StageError("train: out of memory even at micro-batch 1: lower data.max_length, turn on "
                         "train.gradient_checkpointing, or use a bigger device") from None
    smaller = halve(micro, batch_size)
    resume = last_checkpoint(checkpoints)
    log(f"train: out of memory at micro-batch {micro}: retrying with {smaller} x {batch_size // smaller} "
        f"accumulation from {Path(resume).name if resume else 'the start'}")
    return smaller


def _free_memory() -> None:
    """What the failed Trainer held (optimizer states, activations), given back before the next one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save(ctx: StageContext, ready: Ready, trained: Trained) -> None:
    """The artifact: adapter, metrics log, loss picture and summary, written by rank 0 (the weights
    are the same in every process)."""
    from runner.stages.train.batches import plot_curves, read_metrics

    if ready.sharded:
        # Every process takes part: the adapter's full weights are gathered from the shards and the
        # Trainer has rank 0 write them.
        trained.trainer.save_model(str(ctx.out / "adapter"))
    if not is_main_process():
        return
    if ready.metrics.is_file():
        shutil.copyfile(ready.metrics, ctx.out / "metrics.jsonl")
    _save_adapter(ctx, ready)
    rows = read_metrics(ctx.out / "metrics.jsonl")
    if rows:
        plot_curves(rows, ctx.out / "loss.png", f"{ctx.spec.name}: training loss")
    _write_summary(ctx, ready, trained, rows)


def _save_adapter(ctx: StageContext, ready: Ready) -> None:
    """Save the adapter with bytes that depend on the training only, so equal training gives equal
    digests: peft writes this machine's path to the base and a set of module names in hash order."""
    folder = ctx.out / "adapter"
    if ready.sharded:  # the Trainer saved it (see save)
        (folder / "training_args.bin").unlink(missing_ok=True)  # the Trainer's, not the adapter's
    else:
        from runner.stages.train.grpo import drop_reference

        drop_reference(ready.model)  # GRPO's KL reference copy of a starting adapter is not the result
        ready.model.save_pretrained(str(folder), safe_serialization=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    config["base_model_name_or_path"] = ctx.spec.model.id if ctx.spec.model.source == "hub" else None
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    (folder / "README.md").unlink(missing_ok=True)  # the export stage writes the model card


def _write_summary(ctx: StageContext, ready: Ready, trained: Trained, rows: list[dict[str, Any]]) -> None:
    from runner.stages.train.batches import training_rows

    rows = training_rows(rows)
    summary = {"trainable_parameters": ready.trainable, "total_parameters": ready.total,
               "steps": trained.result.global_step,
               "train_loss_first": rows[0]["loss"] if rows else None, "train_loss_last": rows[-1]["loss"] if rows else None,
               "eval_loss_before": trained.eval_loss_before, "eval_loss_after": trained.eval_loss_after,
               "eval_loss_by_source": _by_source(trained.eval_before, trained.eval_after),
               "packing": ctx.spec.train.packing, "early_stopping": trained.stopping,
               "seconds": round(trained.result.metrics.get("train_runtime", math.nan), 2),
               "train_rows": len(ready.train_rows), "validation_rows": len(ready.val_rows),
               "world": world_of(trained.trainer, trained.sharding)}  # what trained it, as the Trainer saw it
    if ctx.spec.train.method == "grpo":
        from runner.core.outputs.train import TrainRow, reward_quarters

        summary |= {"method": "grpo", "rewards": reward_quarters(TrainRow.read(ctx.out / "metrics.jsonl"))}
    summary |= preference_summary(ctx.spec.train.method, trained.eval_before, trained.eval_after)  # {} unless dpo/orpo/kto
    TrainSummary.of(summary).write(ctx.out / "summary.json")


def _by_source(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, dict[str, float | None]]:
    """{source: {"before": loss, "after": loss}} when the validation rows name their sources."""
    names = sorted({k.split("/", 1)[1] for k in {**(before or {}), **(after or {})} if "/" in k})
    return {n: {"before": (before or {}).get(f"eval_loss/{n}"), "after": (after or {}).get(f"eval_loss/{n}")}
            for n in names}


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint of an earlier, interrupted attempt at this same key."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if _whole_json(p / "trainer_state.json")]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def _whole_json(path: Path) -> bool:
    """The Trainer writes trainer_state.json last in a checkpoint, and in place: a kill while it is being
    written leaves a torn file, and a checkpoint that is not complete (the early-stopping test caught it)."""
    try:
        json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return True
