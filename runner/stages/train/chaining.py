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


def set_reference_aside(model: Any) -> dict[str, Any] | None:
    """The weights of TRL's reference copy of the starting adapter ("ref"), taken off the model, or None
    when it has none. TRL's trainers add the copy when they are built over an adapter they did not make
    (a chained start, train.init_adapter); the out-of-memory retry builds a second trainer over the same
    model, whose add_adapter("ref") then failed ("Adapter with name 'ref' already exists"). Taken off
    before the build, the copy is made again, but of the adapter as the failed attempt left it:
    `put_reference_back` restores the start. The tensors are kept, not copied (no second copy in memory)."""
    if "ref" not in getattr(model, "peft_config", {}):
        return None
    saved = {name: param.data for name, param in model.named_parameters() if ".ref." in name}
    model.delete_adapter("ref")
    return saved


def put_reference_back(model: Any, saved: dict[str, Any] | None) -> None:
    """The reference the rebuilt trainer copied is the start again (see set_reference_aside)."""
    for name, tensor in (saved or {}).items():
        model.get_parameter(name).data = tensor
