"""Stage `export`: the adapter as a package (safetensors, metadata, model card), and on request the
merged model. A 4-bit base is merged into its *dequantized* 4-bit weights (load 4-bit -> dequantize
-> merge), so the merged model computes what the adapter computed in training; merging into the
original full-precision weights would not.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from runner.spec import Spec
from runner.stage import StageContext
from runner.stages.model import quantization_slice

name = "export"
version = 1
upstream = ("model", "train:adapter")
volatile: tuple[str, ...] = ()
uses_profile = True
gate = None  # nothing to check before it builds


def spec_slice(spec: Spec) -> dict[str, Any]:
    return {"export": {"merged": spec.export.merged, "merged_dtype": spec.export.merged_dtype},
            "model": quantization_slice(spec.model)}


def local_files(spec: Spec) -> dict[str, Path]:
    return {}


def run(ctx: StageContext) -> None:
    from runner.stages.model.loading import cpu_threads

    with cpu_threads(ctx.profile.threads):  # in the key on CPU: the merge's float sums follow it
        _export(ctx)


def _export(ctx: StageContext) -> None:
    spec = ctx.spec
    shutil.copytree(ctx.upstream["train"] / "adapter", ctx.out / "adapter")
    summary = json.loads((ctx.upstream["train"] / "summary.json").read_text("utf-8"))
    model_info = json.loads((ctx.upstream["model"] / "model.json").read_text("utf-8"))
    metadata = {
        "base_model": model_info, "spec": {"lora": vars(spec.lora), "train": dataclasses.asdict(spec.train)},
        "stage_keys": {"model": ctx.upstream["model"].name, "train": ctx.upstream["train"].name},
        "metrics": {k: summary[k] for k in ("train_loss_first", "train_loss_last", "eval_loss_before",
                                            "eval_loss_after", "steps", "trainable_parameters")},
        "profile": ctx.profile.key_fields(),
    }
    (ctx.out / "adapter" / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True), "utf-8")
    (ctx.out / "adapter" / "README.md").write_text(model_card(spec, metadata), "utf-8")
    if spec.export.merged:
        merge(ctx)


def merge(ctx: StageContext) -> None:
    from peft import PeftModel

    from runner.stages.model.loading import load_base, load_tokenizer, torch_dtype

    spec, profile = ctx.spec, ctx.profile
    dtype_name = profile.dtype if spec.export.merged_dtype == "auto" else spec.export.merged_dtype
    model = load_base(ctx.upstream["model"], spec, profile)
    if profile.quantization != "none":
        model = dequantize(model, torch_dtype(dtype_name))
        ctx.log(f"export: dequantized the 4-bit base to {dtype_name} before merging")
    model = PeftModel.from_pretrained(model, str(ctx.out / "adapter")).merge_and_unload()
    model = model.to(torch_dtype(dtype_name))
    model.save_pretrained(str(ctx.out / "merged"), safe_serialization=True)
    load_tokenizer(ctx.upstream["model"]).save_pretrained(str(ctx.out / "merged"))


def dequantize(model: Any, dtype: Any) -> Any:
    """Replace every bitsandbytes Linear4bit with a plain Linear holding its dequantized weights."""
    import bitsandbytes as bnb
    import torch

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)  # type: ignore[attr-defined]  # a Params4bit
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                         device=weight.device, dtype=dtype)
                linear.weight.data.copy_(weight.to(dtype))
                if child.bias is not None:
                    linear.bias.data.copy_(child.bias.data.to(dtype))
                setattr(parent, child_name, linear)
    model.is_loaded_in_4bit = False
    model.quantization_method = None  # transformers refuses .to(dtype) on a model it thinks is bnb
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    return model


def model_card(spec: Spec, metadata: dict[str, Any]) -> str:
    base = metadata["base_model"]
    base_name = base.get("id") or ("a random-initialised demo model" if base.get("random_init") else base.get("path"))
    m = metadata["metrics"]
    lines = [
        "---", "library_name: peft", "tags: [lora, qlora, medical, qlora-runner]", "---", "",
        f"# LoRA adapter: {spec.name}", "", spec.description or "", "",
        f"- Base model: {base_name}" + (f" at commit `{base['commit']}`" if base.get("commit") else ""),
        f"- Method: {'QLoRA (' + metadata['profile']['quantization'] + ' 4-bit base)' if metadata['profile']['quantization'] != 'none' else 'LoRA'}"
        f", r={spec.lora.r}, alpha={spec.lora.alpha}, dropout={spec.lora.dropout}, targets {spec.lora.target_modules}",
        f"- Training: {m['steps']} steps, learning rate {spec.train.learning_rate}, batch {spec.train.batch_size}, "
        f"{spec.train.scheduler} schedule, seed {spec.seed}",
        f"- Loss: train {m['train_loss_first']} -> {m['train_loss_last']}; validation {m['eval_loss_before']} -> {m['eval_loss_after']}",
        f"- Trainable parameters: {m['trainable_parameters']:,}", "",
        "Made with qlora-runner; `metadata.json` holds the spec slice, stage keys and metrics.", "",
        "Not for clinical use: outputs of a fine-tuned language model can be wrong.", "",
    ]
    return "\n".join(lines)
