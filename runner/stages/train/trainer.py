"""The model and the transformers Trainer as the train stage sets them up: LoRA adapters on the base
model, TrainingArguments from the spec and the fitted profile, our collator and callbacks.

torch, transformers and peft are imported inside the functions (see runner.stages.train.loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.profile import Profile
from runner.spec import Spec


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
    config = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,  # type: ignore[arg-type]
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_trainer(model: Any, spec: Spec, profile: Profile, work: Path, train_rows: Any, val_rows: Any,
                  pad_id: int, metrics: Path) -> Any:
    """A Trainer that checkpoints into work/checkpoints and logs each step to `metrics`."""
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    from runner.stages.train.callbacks import MetricsLog, PadCollator, QuietProgress, StopOnSignal
    from runner.stages.train.trackers import tracker_log

    sharded_eval = profile.distributed == "fsdp" and len(val_rows) > 0  # see loop.train_with_retries
    tracked = tracker_log(spec, work)  # logging.report_to: a side effect, in no key
    logged = MetricsLog(metrics, profile.device, tracked.row if tracked else None)
    trainer = Trainer(model=model, args=training_args(spec, profile, work / "checkpoints", eval_on_start=sharded_eval),
                      train_dataset=train_rows, eval_dataset=val_rows if len(val_rows) else None, data_collator=PadCollator(pad_id),
                      callbacks=[logged, StopOnSignal()] + ([tracked] if tracked else []))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer


def close_progress(trainer: Any) -> None:
    """Close the bar, else it redraws after (and below) an error message."""
    from runner.stages.train.callbacks import QuietProgress

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, QuietProgress) and callback.training_bar is not None:
            callback.training_bar.close()


def training_args(spec: Spec, profile: Profile, output_dir: Path, eval_on_start: bool = False) -> Any:
    from transformers import TrainingArguments

    t = spec.train
    # A mixture's data stage wrote every epoch's rows, each epoch drawn with its own seed, in training
    # order (see runner.stages.data): one pass over them, in that order, is the spec's epochs.
    mixture = isinstance(spec.data.train, tuple)
    return TrainingArguments(
        output_dir=str(output_dir), seed=spec.seed, data_seed=spec.seed,
        per_device_train_batch_size=profile.micro_batch_size, per_device_eval_batch_size=profile.micro_batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation,
        num_train_epochs=1 if mixture else t.epochs, train_sampling_strategy="sequential" if mixture else "random",
        max_steps=t.max_steps or -1, learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim=profile.optimizer,
        bf16=profile.dtype == "bf16" and profile.device == "cuda",
        fp16=profile.dtype == "fp16" and profile.device == "cuda",
        use_cpu=profile.device == "cpu", activation_checkpointing=False,  # enabled on the model (attach_lora; 5.23 renamed gradient_)
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=2, save_only_model=False,
        # Not train_sampling_strategy="group_by_length": its order is not seeded per epoch, so a run
        # resumed mid-epoch would see other batches than an uninterrupted one (the crash tests caught it).
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
        eval_on_start=eval_on_start,
        # every adapter takes part in every forward: DDP need not walk the graph for unused ones
        ddp_find_unused_parameters=False,
    )
