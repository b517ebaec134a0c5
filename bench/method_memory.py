#!/usr/bin/env python
"""Predicted vs measured peak memory of a DPO, ORPO, KTO and GRPO step, as bench/memory.py does for SFT.

    .venv/bin/python bench/method_memory.py [--methods dpo,orpo,kto,grpo] [--json OUT] [--checkpointing]

For each method: write rows of fixed lengths, build the model and data stages with `runner run --only
data` (a random-initialised Llama, 4-bit), then in a child process load them as the train stage does
(runner.stages.train.loop.setup), build the method's TRL trainer with the train stage's own builders,
and run two steps of TRL's own training_step on one batch. The peak is measured as bench/memory.py
measures SFT's: what the loaded model holds, counted from its tensors, plus the peak RSS the steps add
above the RSS before them (glibc's mmap threshold fixed, so freed tensors leave RSS). GRPO's two phases
are measured apart: generating the batch's completions (and the reference pass), then the step.

Each row also gives the estimate the method would get if counted as SFT (the micro-batch's examples as
rows, full logits, no reference, no generation): the figure before the methods were counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory import LIVE, _nbytes, _status  # noqa: E402

# hidden, layers, intermediate, heads, kv_heads, vocab: activations well above the fused head's tiles
MODEL = (256, 4, 704, 4, 2, 1024)
WORDS = [f"w{i}" for i in range(60)]
SPEC = """name: mem-{method}
seed: 3
model: {{source: init, init: {{hidden_size: {h}, intermediate_size: {i}, num_layers: {l}, num_heads: {nh},
         num_kv_heads: {kv}, vocab_size: {v}}}, quantization: nf4}}
data: {{train: {{path: rows.jsonl}}, format: {fmt}, template: plain, validation_fraction: 0, max_length: 1024}}
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{method: {method}, batch_size: {batch}, micro_batch_size: {micro}, max_steps: 2{grpo}}}
"""
# method: (data format, batch size, micro-batch)
METHODS = {"dpo": ("preference", 4, 4), "orpo": ("preference", 4, 4), "kto": ("kto", 4, 4),
           "grpo": ("multiple_choice", 16, 4)}
PROMPT, ANSWER, COMPLETION = 150, 50, 48  # words (about one token each); GRPO's max_completion_length


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def rows(method: str, n: int = 32) -> list[dict[str, Any]]:
    """Rows of the method's format, every prompt and answer of the same number of words."""
    rng = random.Random(5)
    out: list[dict[str, Any]] = []
    for i in range(n):
        prompt = _words(rng, PROMPT)
        if method in ("dpo", "orpo"):
            out.append({"prompt": prompt, "chosen": _words(rng, ANSWER), "rejected": _words(rng, ANSWER)})
        elif method == "kto":
            out.append({"prompt": prompt, "completion": _words(rng, ANSWER), "label": i % 2 == 0})
        else:
            out.append({"question": prompt, "options": {k: _words(rng, 2) for k in "ABCD"}, "answer_idx": "B"})
    return out


def prepare(method: str, folder: Path) -> tuple[Path, Path, Path]:
    """(spec, model artifact, data artifact) of the method's run, built by `runner run --only data`."""
    fmt, batch, micro = METHODS[method]
    h, layers, inter, heads, kv, vocab = MODEL
    grpo = f", grpo: {{num_generations: 4, max_completion_length: {COMPLETION}, beta: 0.04}}" if method == "grpo" else ""
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(method)))
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(method=method, h=h, i=inter, l=layers, nh=heads, kv=kv, v=vocab, fmt=fmt, batch=batch,
                                micro=micro, grpo=grpo))
    store = folder / "store"
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--only", "data"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    found = [next(p for p in (store / stage).iterdir() if (p / "manifest.json").is_file()) for stage in ("model", "data")]
    return spec, found[0], found[1]


def child(method: str, spec_path: Path, model_dir: Path, data_dir: Path, checkpointing: bool) -> dict[str, Any]:
    import torch

    from runner.core.stage import StageContext
    from runner.machine.memory import Shape, estimate, setup_for
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.spec.typed import load_spec
    from runner.stages.train import loop

    spec = load_spec(spec_path)
    profile = dataclasses.replace(resolve_profile(spec, probe_machine()), gradient_checkpointing=checkpointing)
    work = Path(tempfile.mkdtemp())
    ctx = StageContext(spec=spec, profile=profile, out=work / "out", work=work, upstream={"model": model_dir, "data": data_dir},
                       files={}, log=lambda line: None)
    ready = loop.setup(ctx)
    trainer = _trainer(ctx, ready)
    model = ready.model
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's own loop, which is not run here
    raw = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():  # page in the mmapped checkpoint: its first touch is not training's memory
        for t in model.parameters():
            t.view(-1)[:: 1024].sum()
    held = sum(_nbytes(t) for t in (*model.parameters(), *model.buffers()))
    prepare_inputs = trainer._prepare_inputs  # GRPO's generates, scores and runs the reference (once in 4 steps)
    before = _reset()
    inputs = prepare_inputs(raw)
    generated = _status("VmHWM") - before if method == "grpo" else 0  # a phase of its own, measured apart
    trainer._prepare_inputs = lambda batch: batch  # training_step's own call: the inputs are ready
    reference = 0
    if method in ("dpo", "kto"):  # the reference forward alone (no grad, adapter off), as the step runs it
        before = _reset()
        trainer.compute_ref_log_probs(trainer.model, inputs)
        reference = _status("VmHWM") - before
    before = _reset()
    for step in range(2):
        trainer.training_step(model, inputs if step == 0 else prepare_inputs(raw), None)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    added = _status("VmHWM") - before
    config = json.loads((model_dir / "weights" / "config.json").read_text())
    shape = Shape.from_config(config)
    examples, length, completion = _batch_shape(method, inputs)
    setup = dataclasses.replace(setup_for(spec, profile, length), micro_batch=examples, eight_bit_optimizer=False,
                                completion_len=completion)
    est, as_sft = estimate(shape, setup), estimate(shape, dataclasses.replace(setup, method="sft"))
    # chosen and rejected counted as one row a pair (half the rows the batch has), all else as the method's
    one_row = estimate(shape, dataclasses.replace(setup, micro_batch=max(1, examples // 2))) if method in ("dpo", "orpo") else est
    step_predicted = est.weights + est.lora + est.activations + max(est.logits, est.recompute + est.attention,
                                                                     est.reference)
    measured = held + max(added, generated)
    return {"method": method, "checkpointing": checkpointing, "device": profile.device, "threads": os.cpu_count(),
            "examples": examples, "length": length, "completion": completion, "estimate": est.describe(),
            "predicted_gib": est.total / 2**30, "measured_gib": measured / 2**30,
            "as_sft_gib": as_sft.total / 2**30, "one_row_a_pair_gib": one_row.total / 2**30, "held_gib": held / 2**30,
            "predicted_step_gib": step_predicted / 2**30, "measured_step_gib": (held + added) / 2**30,
            "predicted_reference_gib": est.reference / 2**30, "measured_reference_gib": reference / 2**30,
            "predicted_generation_gib": (est.weights + est.lora + est.apart) / 2**30 if est.apart else None,
            "measured_generation_gib": (held + generated) / 2**30 if generated else None}


def _trainer(ctx: Any, ready: Any) -> Any:
    """The method's trainer, built as the train loop builds it (runner.stages.train.loop.train)."""
    if ctx.spec.train.method == "grpo":
        from runner.models.loading import load_tokenizer
        from runner.stages.train.grpo import build_grpo_trainer

        return build_grpo_trainer(ready.model, ctx.spec, ctx.profile, ctx.work, ready.train_rows,
                                  load_tokenizer(ctx.upstream["model"]), ready.metrics)
    from runner.stages.train.preference import build_preference_trainer

    return build_preference_trainer(ctx, ready, ctx.profile)


def _batch_shape(method: str, inputs: dict[str, Any]) -> tuple[int, int, int]:
    """(examples, tokens of the longest row, completion tokens) of the step's batch."""
    if method == "dpo":
        return inputs["input_ids"].shape[0] // 2, inputs["input_ids"].shape[1], 0
    if method == "orpo":
        return inputs["chosen_input_ids"].shape[0], max(inputs["chosen_input_ids"].shape[1],
                                                        inputs["rejected_input_ids"].shape[1]), 0
    if method == "kto":
        return inputs["input_ids"].shape[0], max(inputs["input_ids"].shape[1], inputs["KL_input_ids"].shape[1]), 0
    return inputs["prompt_ids"].shape[0], inputs["prompt_ids"].shape[1], inputs["completion_ids"].shape[1]


def _reset() -> int:
    """Reset the peak (VmHWM) to the current RSS, and return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="dpo,orpo,kto,grpo")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SPEC", "MODEL", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, spec, model, data = args.child
        print(json.dumps(child(method, Path(spec), Path(model), Path(data), args.checkpointing)))
        return
    out = []
    print(f"{'method':<6} {'rows':>9} {'predicted':>10} {'measured':>9} {'ratio':>6} {'as SFT':>7}   (GiB; GRPO: step | generation apart)")
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            spec, model, data = prepare(method, Path(tmp))
            flags = ["--checkpointing"] if args.checkpointing else []
            done = subprocess.run([sys.executable, __file__, "--child", method, str(spec), str(model), str(data), *flags],
                                  capture_output=True, text=True, env={**os.environ, **LIVE}, cwd=ROOT)
            assert done.returncode == 0, done.stderr[-3000:]
            row = json.loads(done.stdout.strip().splitlines()[-1])
        out.append(row)
        ratio = row["predicted_gib"] / row["measured_gib"]
        phases = ""
        if row["measured_reference_gib"]:
            phases = f"   reference forward alone {row['predicted_reference_gib']:.3f} : {row['measured_reference_gib']:.3f}"
        if row["predicted_generation_gib"]:
            phases = (f"   step {row['predicted_step_gib']:.3f} : {row['measured_step_gib']:.3f} | generation "
                      f"{row['predicted_generation_gib']:.3f} : {row['measured_generation_gib']:.3f}")
        print(f"{method:<6} {row['examples']:>3} x {row['length']:>4} {row['predicted_gib']:>8.3f} G {row['measured_gib']:>7.3f} G "
              f"{ratio:>6.3f} {row['as_sft_gib'] / row['measured_gib']:>7.3f}{phases}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
