"""Stage `train`: LoRA or QLoRA over the base model with the transformers Trainer.

Why Trainer and not TRL's SFTTrainer: the data stage already tokenized and masked the examples, and
SFTTrainer's defaults (entropy and token accuracy every step, bf16, checkpointing) ran 1.6-2.2x
slower per step on CPU and doubled memory there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.errors import ProfileError, StageError
from runner.profile import Profile
from runner.spec import Spec
from runner.stage import StageContext
from runner.stages.model import quantization_slice
from runner.stages.train.gate import check_before_training

name = "train"
version = 4
upstream = ("model", "data")
volatile = ("metrics.jsonl", "summary.json", "loss.png")
uses_profile = True
# Before training (never when cached): benchmark questions found in the training data are logged
# and recorded, or stop the run, as eval.contamination.action says.
gate = check_before_training


def spec_slice(spec: Spec) -> dict[str, Any]:
    lora, t = spec.lora, spec.train
    # How often we log or checkpoint (logging_steps, save_steps) does not change the weights: not here.
    train = {"epochs": t.epochs, "max_steps": t.max_steps, "learning_rate": t.learning_rate,
             "batch_size": t.batch_size, "micro_batch_size": t.micro_batch_size, "scheduler": t.scheduler,
             "warmup": t.warmup, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
             "optimizer": t.optimizer, "gradient_checkpointing": t.gradient_checkpointing}
    return {"lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.target_modules},
            "train": train, "seed": spec.seed, "model": quantization_slice(spec.model)}


def local_files(spec: Spec) -> dict[str, Path]:
    return {}


def run(ctx: StageContext) -> None:
    if ctx.profile.processes > 1:
        from runner.stages.train.launch import launch

        launch(ctx)  # every process runs train_here; rank 0 writes the artifact
    else:
        train_here(ctx)


def train_here(ctx: StageContext) -> None:
    """Train in this process (one of several when launched by accelerate), on exactly the profile's
    CPU threads: the count is in the key on CPU, so it must not be whatever the environment says."""
    with cpu_threads(ctx.profile.threads):
        _train(ctx)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` while the block runs, then put back for what follows."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(ctx: StageContext) -> None:
    from datasets import Dataset
    from transformers import set_seed

    from runner.stages.model.loading import load_base, load_tokenizer, weights_path
    from runner.stages.train.callbacks import keep_metrics_until, plot_curves, read_metrics

    spec = ctx.spec
    set_seed(spec.seed)  # before the model: LoRA's A matrices are drawn from this
    tok = load_tokenizer(ctx.upstream["model"])
    train_rows = Dataset.from_file(str(ctx.upstream["data"] / "train.arrow"))
    val_rows = Dataset.from_file(str(ctx.upstream["data"] / "validation.arrow"))
    # Fit memory before loading anything: if nothing fits, stop with the numbers, not an OOM later.
    config = json.loads((Path(weights_path(ctx.upstream["model"])) / "config.json").read_text("utf-8"))
    stats = json.loads((ctx.upstream["data"] / "stats.json").read_text("utf-8"))
    profile = fit_memory(ctx, config, stats["train_tokens"]["max"])
    sharded = profile.distributed == "fsdp"
    model = _lora_model(load_base(ctx.upstream["model"], spec, profile, sharded=sharded), spec,
                        profile.gradient_checkpointing, sharded=sharded)
    trainable, total = model.get_nb_trainable_parameters()
    ctx.log(f"train: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    # The log lives in the work folder, which outlives a killed attempt, and is copied out at the end.
    metrics = ctx.work / "metrics.jsonl"
    checkpoint = _last_checkpoint(ctx.work / "checkpoints")
    writer = int(os.environ.get("RANK", "0")) == 0  # of several processes, rank 0 alone writes the log
    if checkpoint is None and writer:
        metrics.unlink(missing_ok=True)
    elif checkpoint is not None:
        step = int(Path(checkpoint).name.split("-")[1])
        if writer:
            keep_metrics_until(metrics, step)
        ctx.log(f"train: resuming from {Path(checkpoint).name} of an earlier attempt (step {step})")

    made: list[Any] = []

    def make_trainer(micro: int, accumulation: int) -> Any:
        made.append(_trainer(model, spec, replace(profile, micro_batch_size=micro, gradient_accumulation=accumulation),
                             ctx.work, train_rows, val_rows, tok.pad_token_id, metrics))
        return made[-1]

    per_process = spec.train.batch_size // profile.processes
    result, before, after = train_with_retries(make_trainer, profile.micro_batch_size, per_process,
                                               ctx.work / "checkpoints", ctx.log, sharded=sharded)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ctx.log(f"train: trained in {dist.get_world_size()} processes ({dist.get_backend()})")
    if sharded:
        # Every process takes part: the adapter's full weights are gathered from the shards and the
        # Trainer has rank 0 write them.
        made[-1].save_model(str(ctx.out / "adapter"))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 writes the artifact; the weights are the same in every process
    if metrics.is_file():
        shutil.copyfile(metrics, ctx.out / "metrics.jsonl")
    if sharded:
        (ctx.out / "adapter" / "training_args.bin").unlink(missing_ok=True)  # the Trainer's, not the adapter's
        _normalise_adapter(ctx.out / "adapter", spec)
    else:
        _save_adapter(model, ctx.out / "adapter", spec)
    rows = read_metrics(ctx.out / "metrics.jsonl")
    if rows:
        plot_curves(rows, ctx.out / "loss.png", f"{spec.name}: training loss")
    summary = {"trainable_parameters": trainable, "total_parameters": total, "steps": result.global_step,
               "train_loss_first": rows[0]["loss"] if rows else None, "train_loss_last": rows[-1]["loss"] if rows else None,
               "eval_loss_before": before, "eval_loss_after": after,
               "seconds": round(result.metrics.get("train_runtime", math.nan), 2),
               "train_rows": len(train_rows), "validation_rows": len(val_rows)}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True), "utf-8")


def fit_memory(ctx: StageContext, config: dict[str, Any], seq_len: int) -> Profile:
    """The profile with micro-batch and checkpointing fitted to the device; logs what was changed."""
    from runner.memory import GIB, fit_profile

    profile = ctx.profile
    fitted = fit_profile(ctx.spec, profile, config, seq_len)
    budget = profile.memory_mib * 2**20 * 0.8 / GIB
    ctx.log(f"train: memory estimate {fitted.estimate.describe()}, budget {budget:.1f} GiB (80% of {profile.device})")
    for note in fitted.notes:
        ctx.log(f"train: to fit memory, {note}")
    if fitted.estimate.load / GIB > budget:
        raise ProfileError(f"train: FSDP shards the model only after each process has loaded all of it "
                           f"({fitted.estimate.load / GIB:.1f} GiB), more than {budget:.1f} GiB of one GPU: use GPUs "
                           "with more memory or a smaller model")
    if not fitted.fits:
        raise ProfileError(f"train: needs about {fitted.estimate.total / GIB:.1f} GiB even at micro-batch "
                           f"{fitted.micro_batch} with checkpointing {'on' if fitted.checkpointing else 'off'}, "
                           f"but {profile.device} has {budget:.1f} GiB to give: lower data.max_length, use "
                           "model.quantization nf4, a smaller model, or a bigger device")
    return replace(profile, micro_batch_size=fitted.micro_batch, gradient_accumulation=fitted.accumulation,
                   gradient_checkpointing=fitted.checkpointing)


def train_with_retries(make_trainer: Callable[[int, int], Any], micro: int, batch_size: int, checkpoints: Path,
                       log: Callable[[str], None], sharded: bool = False) -> tuple[Any, float | None, float | None]:
    """Train; on a CUDA out-of-memory error halve the micro-batch, double accumulation (the effective
    batch stays), and resume from the last checkpoint. Gives up once the micro-batch is 1.

    `sharded` (FSDP): the Trainer must wrap the model before anything runs it, so the loss before
    training comes from its own first evaluation (eval_on_start), and an out-of-memory error ends
    the run (the model's layers are wrapped in place; a second Trainer cannot wrap them again)."""
    import gc

    import torch

    from runner import signals
    from runner.memory import halve

    before = None
    while True:
        trainer = make_trainer(micro, batch_size // micro)
        if before is None and trainer.eval_dataset is not None and not sharded:
            before = trainer.evaluate()["eval_loss"]
        try:
            with signals.graceful():  # Ctrl-C / SIGTERM: checkpoint at the end of the step, then stop
                result = trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoints))
            after = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
            if sharded:
                before = next((h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h), None)
            return result, before, after
        except torch.OutOfMemoryError:
            if sharded:
                raise StageError("train: out of memory under FSDP: lower train.micro_batch_size or data.max_length, "
                                 "or turn on train.gradient_checkpointing") from None
            if micro == 1:
                raise StageError("train: out of memory even at micro-batch 1: lower data.max_length, turn on "
                                 "train.gradient_checkpointing, or use a bigger device") from None
            smaller = halve(micro, batch_size)
            resume = _last_checkpoint(checkpoints)
            log(f"train: out of memory at micro-batch {micro}: retrying with {smaller} x {batch_size // smaller} "
                f"accumulation from {Path(resume).name if resume else 'the start'}")
            micro = smaller
        finally:
            _close_progress(trainer)
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _trainer(model: Any, spec: Spec, profile: Profile, work: Path, train_rows: Any, val_rows: Any,
             pad_id: int, metrics: Path) -> Any:
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    from runner.stages.train.callbacks import MetricsLog, PadCollator, QuietProgress, StopOnSignal

    sharded_eval = profile.distributed == "fsdp" and len(val_rows) > 0  # see train_with_retries
    trainer = Trainer(model=model, args=training_args(spec, profile, work / "checkpoints", eval_on_start=sharded_eval),
                      train_dataset=train_rows, eval_dataset=val_rows if len(val_rows) else None,
                      data_collator=PadCollator(pad_id), callbacks=[MetricsLog(metrics, profile.device), StopOnSignal()])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer


def _close_progress(trainer: Any) -> None:
    """Close the bar, else it redraws after (and below) an error message."""
    from runner.stages.train.callbacks import QuietProgress

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, QuietProgress) and callback.training_bar is not None:
            callback.training_bar.close()


def _lora_model(model: Any, spec: Spec, checkpointing: bool, sharded: bool = False) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # FSDP flattens each wrapped layer's parameters into one tensor of one dtype: the norms stay in
    # the compute dtype (prepare_model_for_kbit_training would make them fp32).
    if getattr(model, "is_loaded_in_4bit", False) and not sharded:
        # Casts norms to fp32 and makes inputs require grad, so checkpointing works over frozen 4-bit weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False  # training never reads the keys and values a cache would keep
    targets = spec.lora.target_modules
    config = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def training_args(spec: Spec, profile: Profile, output_dir: Path, eval_on_start: bool = False) -> Any:
    from transformers import TrainingArguments

    t = spec.train
    return TrainingArguments(
        output_dir=str(output_dir), seed=spec.seed, data_seed=spec.seed,
        per_device_train_batch_size=profile.micro_batch_size, per_device_eval_batch_size=profile.micro_batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation,
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1, learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim=profile.optimizer,
        bf16=profile.dtype == "bf16" and profile.device == "cuda",
        fp16=profile.dtype == "fp16" and profile.device == "cuda",
        use_cpu=profile.device == "cpu", activation_checkpointing=False,  # enabled on the model above (5.23 renamed gradient_)
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=2, save_only_model=False,
        # Not train_sampling_strategy="group_by_length": its order is not seeded per epoch, so a run
        # resumed mid-epoch would see other batches than an uninterrupted one (the crash tests caught it).
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
        eval_on_start=eval_on_start,
        # every adapter takes part in every forward: DDP need not walk the graph for unused ones
        ddp_find_unused_parameters=False,
    )


def _last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint of an earlier, interrupted attempt at this same key."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def _save_adapter(model: Any, folder: Path, spec: Spec) -> None:
    """Save the adapter with bytes that depend on the training only, so equal training gives equal
    digests: peft writes this machine's path to the base and a set of module names in hash order."""
    model.save_pretrained(str(folder), safe_serialization=True)
    _normalise_adapter(folder, spec)


def _normalise_adapter(folder: Path, spec: Spec) -> None:
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    config["base_model_name_or_path"] = spec.model.id if spec.model.source == "hub" else None
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    (folder / "README.md").unlink(missing_ok=True)  # the export stage writes the model card
