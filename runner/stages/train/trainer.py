"""The model and the transformers Trainer as the train stage sets them up: LoRA adapters on the base
model, TrainingArguments from the spec and the fitted profile, our collator and callbacks.

torch, transformers and peft are imported inside the functions (see runner.stages.train.loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.machine.profile import Profile
from runner.machine.world import SHARDED, ZERO_STAGES, fsdp_version
from runner.rows.mixture import is_mixture
from runner.spec.typed import Spec


def attach_lora(model: Any, spec: Spec, checkpointing: bool, sharded: bool = False) -> Any:
    """The base model wrapped by peft with the spec's adapters, ready to train."""
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
    # peft types lora_alpha as int but scales by alpha / r in float: a fractional alpha is honoured.
    lora = spec.lora
    # init "default" is PEFT's True (A random, B zero); pissa and olora are refused by the spec's rules.
    init: Any = True if lora.init == "default" else lora.init
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,  # type: ignore[arg-type]
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        bias="none", task_type="CAUSAL_LM", use_dora=lora.use_dora, use_rslora=lora.use_rslora,
                        modules_to_save=list(lora.modules_to_save) or None, init_lora_weights=init)
    return get_peft_model(model, config)


def build_trainer(model: Any, spec: Spec, profile: Profile, work: Path, train_rows: Any, val_rows: Any,
                  pad_id: int, metrics: Path) -> Any:
    """A Trainer that checkpoints into work/checkpoints and logs each step to `metrics`; packs when the
    spec says so; evaluates with the stage's own validation loss (see validation.py) unless sharded."""
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import ProgressCallback

    from runner.stages.train.batches import PackCollator, PadCollator, QuietProgress
    from runner.stages.train.validation import KeepBest, ValidatingTrainer

    sharded = profile.distributed in SHARDED
    sharded_eval = sharded and len(val_rows) > 0  # see loop.train_with_retries
    collate = PackCollator(pad_id, spec.data.max_length) if spec.train.packing else PadCollator(pad_id)
    callbacks = callbacks_for(spec, profile, work, metrics)
    stopping = spec.train.early_stopping
    if stopping is not None:
        # KeepBest first: it compares with the best metric before the Trainer updates it.
        callbacks += [KeepBest(work / "best"), EarlyStoppingCallback(stopping.patience, stopping.min_delta)]
    # FSDP1 wraps the model in a new module, which our validation would bypass (FSDP2 shards it in
    # place, DeepSpeed hooks into it): there, the Trainer's own evaluation.
    cls = Trainer if profile.distributed == "fsdp" and fsdp_version() == 1 else ValidatingTrainer
    trainer = cls(model=model, args=training_args(spec, profile, work / "checkpoints", eval_on_start=sharded_eval),
                  train_dataset=train_rows, eval_dataset=val_rows if len(val_rows) else None,
                  data_collator=collate, callbacks=callbacks)
    if isinstance(trainer, ValidatingTrainer):
        trainer.pad_id = pad_id
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer


def callbacks_for(spec: Spec, profile: Profile, work: Path, metrics: Path) -> list[Any]:
    """Every method's callbacks: the metrics log, stopping on a signal, the trackers (a side effect, in no key)."""
    from runner.report.trackers import tracker_log
    from runner.stages.train.batches import MetricsLog, StopOnSignal

    tracked = tracker_log(spec, work)
    callbacks = [MetricsLog(metrics, profile.device, tracked.row if tracked else None), StopOnSignal()]
    return callbacks + ([tracked] if tracked else [])


def close_progress(trainer: Any) -> None:
    """Close the bar, else it redraws after (and below) an error message."""
    from runner.stages.train.batches import QuietProgress

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, QuietProgress) and callback.training_bar is not None:
            callback.training_bar.close()


def training_args(spec: Spec, profile: Profile, output_dir: Path, eval_on_start: bool = False) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(spec, profile, output_dir, eval_on_start))


def training_kwargs(spec: Spec, profile: Profile, output_dir: Path, eval_on_start: bool = False) -> dict[str, Any]:
    """TrainingArguments' arguments, for our Trainer and (with their own added) TRL's configs."""
    t = spec.train
    # A mixture's data stage wrote every epoch's rows, each epoch drawn with its own seed, in training
    # order (see runner.stages.data): one pass over them, in that order, is the spec's epochs.
    mixture = is_mixture(spec)
    return dict(  # noqa: C408 (keywords: the arguments read as TrainingArguments' own)
        output_dir=str(output_dir), seed=spec.seed, data_seed=spec.seed,
        per_device_train_batch_size=profile.micro_batch_size, per_device_eval_batch_size=profile.micro_batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation,
        num_train_epochs=1 if mixture else t.epochs, train_sampling_strategy="sequential" if mixture else "random",
        max_steps=t.max_steps or -1, learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim=profile.optimizer,
        bf16=profile.dtype == "bf16" and profile.device == "cuda",
        fp16=profile.dtype == "fp16" and profile.device == "cuda",
        # ZeRO on CPU: Accelerate picks DeepSpeed only when not told to use the CPU (DeepSpeed's CPU
        # accelerator, DS_ACCELERATOR=cpu, places everything there), and counts its processes only
        # when named a backend (else it finds no GPU backend and says world size 1).
        use_cpu=profile.device == "cpu" and profile.distributed not in ZERO_STAGES, activation_checkpointing=False,
        ddp_backend="gloo" if profile.device == "cpu" and profile.distributed in ZERO_STAGES else None,  # enabled on the model (attach_lora; 5.23 renamed gradient_)
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=2, save_only_model=False,
        # Not train_sampling_strategy="group_by_length": its order is not seeded per epoch, so a run
        # resumed mid-epoch would see other batches than an uninterrupted one (the crash tests caught it).
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
        eval_on_start=eval_on_start,
        # Early stopping: evaluate every eval_steps; the Trainer keeps the lowest loss as its best metric
        # (in every checkpoint); we keep the best adapter ourselves (validation.KeepBest), so checkpoints
        # stay on save_steps.
        eval_strategy="steps" if t.early_stopping is not None else "no", eval_steps=t.eval_steps,
        metric_for_best_model="eval_loss" if t.early_stopping is not None else None, greater_is_better=False,
        # The patience counter is in the checkpoint, but a resumed Trainer ignores it unless told (the
        # early-stopping resume test caught a resumed run stopping two steps later).
        restore_callback_states_from_checkpoint=t.early_stopping is not None,
        # every adapter takes part in every forward: DDP need not walk the graph for unused ones
        ddp_find_unused_parameters=False,
        # FSDP on CPU: the worker set Accelerate's state up (launch.fsdp_on_cpu); the Trainer keeps it.
        accelerator_config={"use_configured_state": profile.distributed == "fsdp" and profile.device == "cpu"},
    )
