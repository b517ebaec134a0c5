"""`train.init_adapter`: training starts from an earlier run's LoRA adapter (another spec's train
artifact, or a PEFT folder) instead of fresh adapters. The adapter's files are the stage's local
files (`init_adapter/...`), so their digests are in the key; runner.core.chain finds a spec's adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.core.stage import StageContext

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def init_adapter_files(folder: Path) -> dict[str, Path]:
    """The key's roles for an adapter folder's files."""
    return {f"init_adapter/{name}": folder / name for name in ADAPTER_FILES}


def attach_init_adapter(model: Any, ctx: StageContext, checkpointing: bool) -> Any:
    """The base model with the starting adapter loaded trainable (its own r, alpha and targets)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    folder = ctx.files["init_adapter/adapter_config.json"].parent
    ctx.log(f"train: starting from the adapter in {folder}")
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
