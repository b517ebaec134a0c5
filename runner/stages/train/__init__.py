"""Stage `train`: LoRA or QLoRA over the base model with the transformers Trainer.

Why Trainer and not TRL's SFTTrainer: the data stage already tokenized and masked the examples, and
SFTTrainer's defaults (entropy and token accuracy every step, bf16, checkpointing) ran 1.6-2.2x
slower per step on CPU and doubled memory there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from runner.core.errors import ProfileError
from runner.core.outputs import DataStats
from runner.core.stage import StageContext
from runner.machine.profile import Profile
from runner.scoring.rewards import reading_slice
from runner.spec.slices import quantization_slice
from runner.spec.typed import Dpo, Kto, Orpo, Spec
from runner.stages.train.gate import check_before_training
from runner.stages.train.launch import launch
from runner.stages.train.loop import train_here

name = "train"
version = 4
upstream = ("model", "data")
volatile = ("metrics.jsonl", "summary.json", "loss.png")
uses_profile = True
# Before training (never when cached): benchmark questions found in the training data are logged
# and recorded, or stop the run, as eval.contamination.action says.
gate = check_before_training
side_effect = None  # it acts on nothing outside the store


def spec_slice(spec: Spec) -> dict[str, Any]:
    lora, t = spec.lora, spec.train
    # How often we log or checkpoint (logging_steps, save_steps) does not change the weights: not here.
    train: dict[str, Any] = {
        "epochs": t.epochs, "max_steps": t.max_steps, "learning_rate": t.learning_rate, "batch_size": t.batch_size,
        "micro_batch_size": t.micro_batch_size, "scheduler": t.scheduler, "warmup": t.warmup,
        "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm, "optimizer": t.optimizer,
        "gradient_checkpointing": t.gradient_checkpointing}
    # Only when on, so the keys of specs written before these fields existed stay what they were.
    # eval_steps decides nothing without early stopping (evaluating changes no weight).
    if t.packing:
        train["packing"] = True
    if t.early_stopping is not None:
        train["early_stopping"] = {"patience": t.early_stopping.patience, "min_delta": t.early_stopping.min_delta,
                                   "eval_steps": t.eval_steps}
    train |= method_slice(spec)
    return {"lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.target_modules}
            | lora_variant_slice(spec), "train": train, "seed": spec.seed, "model": quantization_slice(spec.model)}


def method_slice(spec: Spec) -> dict[str, Any]:
    """train.method and what it reads, and train.init_adapter, only when set away from supervised
    training from fresh adapters (their files' digests come in through local_files): SFT specs keep
    the keys they had, and a method's section enters only under that method."""
    t, found = spec.train, dict[str, Any]()
    if t.method != "sft":
        found["method"] = t.method
    if t.method == "grpo":
        g = t.grpo
        found["grpo"] = {"num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
                         "temperature": g.temperature, "beta": g.beta, "vllm": g.vllm,
                         "rewards": [{"name": r.name, "weight": r.weight, "file": r.path is not None} for r in g.rewards]}
        if read := reading_slice(spec):  # answer_correct reads as eval.generative does: its reading, when not the default
            found["grpo"]["read"] = read
    sections: dict[str, Dpo | Orpo | Kto] = {"dpo": t.dpo, "orpo": t.orpo, "kto": t.kto}
    preference = sections.get(t.method)
    if preference is not None:
        found[t.method] = asdict(preference)
    if t.init_adapter is not None:
        found["init_adapter"] = True
    return found


def lora_variant_slice(spec: Spec) -> dict[str, Any]:
    """Each LoRA variant only when set away from its default, so earlier keys stay what they were."""
    lora = spec.lora
    variants = {"use_dora": lora.use_dora, "use_rslora": lora.use_rslora, "modules_to_save": list(lora.modules_to_save),
                "init": lora.init}
    defaults = {"use_dora": False, "use_rslora": False, "modules_to_save": [], "init": "default"}
    return {k: v for k, v in variants.items() if v != defaults[k]}


def local_files(spec: Spec) -> dict[str, Path]:
    """The starting adapter's files (train.init_adapter; a spec's is found by runner.core.chain first)
    and the files of user-written GRPO rewards."""
    from runner.stages.train.chaining import init_adapter_files

    found: dict[str, Path] = {}
    start = spec.train.init_adapter
    if start is not None and start.path is not None:
        found |= init_adapter_files(spec.resolve(start.path))
    if spec.train.method == "grpo":
        found |= {f"reward/{r.name}": spec.resolve(r.path) for r in spec.train.grpo.rewards if r.path is not None}
    return found


def run(ctx: StageContext) -> None:
    from runner.core import signals

    # Fit memory before loading anything: if nothing fits, stop with the numbers, not an OOM later
    # (and in this process, before any are launched). A signal meanwhile stops the stage after it.
    with signals.graceful():
        ctx = replace(ctx, profile=fit_memory(ctx))
    if ctx.profile.processes > 1:
        launch(ctx)  # every process runs train_here with the fitted profile; rank 0 writes the artifact
    else:
        train_here(ctx)


def fit_memory(ctx: StageContext) -> Profile:
    """The profile with micro-batch and checkpointing fitted to the device, for the model's shape and
    the longest training example; logs what was changed."""
    from runner.machine.memory import GIB, MEMORY_BUDGET, fit_profile
    from runner.models.loading import weights_path

    config = json.loads((Path(weights_path(ctx.upstream["model"])) / "config.json").read_text("utf-8"))
    longest = DataStats.read(ctx.upstream["data"] / "stats.json").train_tokens.max
    assert longest is not None  # the data stage counts every training example
    profile = ctx.profile
    fitted = fit_profile(ctx.spec, profile, config, longest)
    budget = profile.memory_mib * 2**20 * MEMORY_BUDGET / GIB
    ctx.log(f"train: memory estimate {fitted.estimate.describe()}, budget {budget:.1f} GiB "
            f"({MEMORY_BUDGET:.0%} of {profile.device})")
    for note in fitted.notes:
        ctx.log(f"train: to fit memory, {note}")
    if fitted.estimate.load / GIB > budget:
        raise ProfileError(f"train: FSDP shards the model only after each process has loaded all of it "
                           f"({fitted.estimate.load / GIB:.1f} GiB), more than {budget:.1f} GiB of one GPU: use GPUs "
                           "with more memory or a smaller model")
    if not fitted.fits:
        est = fitted.estimate
        raise ProfileError(f"train: needs about {est.total / GIB:.1f} GiB even at micro-batch "
                           f"{fitted.micro_batch} with checkpointing {'on' if fitted.checkpointing else 'off'}, "
                           f"but {profile.device} has {budget:.1f} GiB to give: {est.to_lower()}, use "
                           "model.quantization nf4, a smaller model, or a bigger device")
    return replace(profile, micro_batch_size=fitted.micro_batch, gradient_accumulation=fitted.accumulation,
                   gradient_checkpointing=fitted.checkpointing)
