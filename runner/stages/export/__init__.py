"""Stage `export`: the adapter as a package (safetensors, metadata, model card), and on request the
merged model. A 4-bit base is merged into its *dequantized* 4-bit weights (load 4-bit -> dequantize
-> merge), so the merged model computes what the adapter computed in training; merging into the
original full-precision weights would not.

With `export.gguf`: GGUF files made by llama.cpp's own converter (gguf.py), then the parity gate
(parity.py) scores every form written against the adapter. `export.push` is no part of the output: a
side effect the executor runs after the whole run (push.py).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from runner.core.outputs import ExportMetadata, TrainSummary
from runner.core.stage import StageContext, benchmark_ids_role, benchmark_role
from runner.spec.slices import benchmark_slice, quantization_slice
from runner.spec.typed import Spec
from runner.stages.export import push
from runner.stages.export.card import model_card

name = "export"
version = 2  # 2: metadata.json records every train field (packing, eval_steps, early_stopping). GGUF and parity enter
# the slice only when asked.
upstream = ("model", "train:adapter")
volatile: tuple[str, ...] = ()
uses_profile = True
gate = None  # nothing to check before it builds
side_effect = push.PUSH  # export.push: after the run, in no key, on record


def spec_slice(spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {"export": {"merged": spec.export.merged, "merged_dtype": spec.export.merged_dtype},
                           "model": quantization_slice(spec.model)}
    if spec.export.gguf is not None:  # the GGUF files, and parity.json over the benchmarks' first questions
        p = spec.export.parity
        out["export"]["gguf"] = {"types": list(spec.export.gguf.types)}
        out["export"]["parity"] = {"samples": p.samples, "on_fail": p.on_fail,
                                   **{tier: vars(getattr(p, tier)) for tier in ("unquantized", "q8", "q4")}}
        out["eval"] = {"benchmarks": [benchmark_slice(b) for b in spec.eval.benchmarks],
                       "chat_template": spec.eval.chat_template}
    return out


def local_files(spec: Spec) -> dict[str, Path]:
    if spec.export.gguf is None:
        return {}
    files = {benchmark_role(b.name): spec.resolve(b.path) for b in spec.eval.benchmarks if b.path is not None}
    return files | {benchmark_ids_role(b.name): spec.resolve(b.ids) for b in spec.eval.benchmarks if b.ids is not None}


def run(ctx: StageContext) -> None:
    from runner.models.loading import cpu_threads

    with cpu_threads(ctx.profile.threads):  # in the key on CPU: the merge's float sums follow it
        _export(ctx)


def _export(ctx: StageContext) -> None:
    spec = ctx.spec
    source = _gguf_toolchain(ctx) if spec.export.gguf is not None else None  # an unsupported model stops here
    shutil.copytree(ctx.upstream["train"] / "adapter", ctx.out / "adapter")
    summary = TrainSummary.read(ctx.upstream["train"] / "summary.json")
    model_info = json.loads((ctx.upstream["model"] / "model.json").read_text("utf-8"))
    metadata = {
        "base_model": model_info, "spec": {"lora": vars(spec.lora), "train": dataclasses.asdict(spec.train)},
        "stage_keys": {"model": ctx.upstream["model"].name, "train": ctx.upstream["train"].name},
        "metrics": {"train_loss_first": summary.train_loss_first, "train_loss_last": summary.train_loss_last,
                    "eval_loss_before": summary.eval_loss_before, "eval_loss_after": summary.eval_loss_after,
                    "steps": summary.steps, "trainable_parameters": summary.trainable},
        "profile": ctx.profile.key_fields(),
    }
    written = ExportMetadata.of(metadata)
    written.write(ctx.out / "adapter" / "metadata.json")
    (ctx.out / "adapter" / "README.md").write_text(model_card(spec, written), "utf-8")
    if spec.export.merged:
        merge(ctx)
    if source is not None:
        export_gguf(ctx, source)


def _gguf_toolchain(ctx: StageContext) -> Path:
    """llama.cpp's converter, and the base model's architecture checked against it, before any work."""
    from runner.models.loading import weights_path
    from runner.stages.export.gguf import check_supported, llama_cpp_source

    source = llama_cpp_source(ctx.log)
    config = json.loads((Path(weights_path(ctx.upstream["model"])) / "config.json").read_text("utf-8"))
    ctx.log(f"export: llama.cpp's converter supports {check_supported(source, config)}")
    return source


def export_gguf(ctx: StageContext, source: Path) -> None:
    """The GGUF files and the Ollama Modelfile, then the parity gate over every form written."""
    from runner.models.loading import load_tokenizer
    from runner.stages.export import gguf, parity

    assert ctx.spec.export.gguf is not None  # the caller checked
    types = ctx.spec.export.gguf.types
    # Only for a tokenizer this project built (the demo model): the converter's table cannot know it.
    declared = gguf.DEMO_PRE_TOKENIZER if ctx.spec.model.source == "init" else None
    files = gguf.write_ggufs(source, ctx.out / "merged", ctx.out / "adapter", ctx.work / "base", ctx.out / "gguf",
                             ctx.work, types, declared, ctx.profile.threads, ctx.log)
    modelfile = gguf.modelfile(load_tokenizer(ctx.upstream["model"]), files[types[0]].name)
    (ctx.out / "gguf" / "Modelfile").write_text(modelfile, "utf-8")
    gguf.write_summary(ctx.out / "gguf", files)
    parity.check(ctx, ctx.upstream["model"], files)


def merge(ctx: StageContext) -> None:
    from peft import PeftModel

    from runner.models.loading import load_base, load_tokenizer, torch_dtype

    spec, profile = ctx.spec, ctx.profile
    dtype_name = profile.dtype if spec.export.merged_dtype == "auto" else spec.export.merged_dtype
    model = load_base(ctx.upstream["model"], spec, profile)
    if profile.quantization != "none":
        model = dequantize(model, torch_dtype(dtype_name))
        ctx.log(f"export: dequantized the 4-bit base to {dtype_name} before merging")
    if spec.export.gguf is not None:  # the base the GGUF LoRA applies to: the very weights merged into
        model.to(torch_dtype(dtype_name)).save_pretrained(str(ctx.work / "base"), safe_serialization=True)
        load_tokenizer(ctx.upstream["model"]).save_pretrained(str(ctx.work / "base"))
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
