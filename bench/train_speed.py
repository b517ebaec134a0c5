#!/usr/bin/env python
"""Training throughput of the runner's train stage against a hand-written Trainer loop and TRL's
SFTTrainer on the same model, data and optimizer steps; plus the wall time of a no-op re-run and of
`runner validate`.

    .venv/bin/python bench/train_speed.py [--steps 60] [--repeats 3] [--spec specs/smoke.yaml]

The timed figure for all three is the Trainer's own `train_runtime` (the runner writes it to
summary.json as `seconds`), so model loading, evaluation and adapter saving stay out of it for all.
Library noise (progress bars, warnings) goes to bench/out/train_speed.log; the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain file: make `runner` importable without an install
OUT = ROOT / "bench" / "out"
LOG = OUT / "train_speed.log"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the Hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from runner.profile import Profile, probe_machine, resolve_profile  # noqa: E402  (after sys.path)
from runner.spec import Spec, load_spec  # noqa: E402

NOOP_TARGET_S, VALIDATE_TARGET_S = 1.5, 0.3


@dataclasses.dataclass
class Result:
    seconds: float  # Trainer train_runtime
    tokens: int  # non-pad tokens in training forwards
    steps: int
    loss: float  # mean training loss over the run: a check that runner and hand-written did the same work


class TokenCounter:
    """Counts non-pad tokens in training-mode forwards. A hook on the outer model is exact where a
    counting collator is not: evaluation batches and the dataloader's look-ahead batch never count."""

    def __init__(self) -> None:
        self.tokens = 0

    def attach(self, model: Any) -> Any:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return model

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            mask = kwargs.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())


@contextlib.contextmanager
def stderr_to_log() -> Iterator[None]:
    """Send fd 2 (tqdm bars, warnings, C-level messages) to the log file, the same for all three."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(LOG, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def runner_cli(*args: str) -> float:
    """Wall seconds of one `python -m runner ...` subprocess: what a user waits for, imports included."""
    started = time.perf_counter()
    with open(LOG, "a", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=log, stderr=log)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"`runner {' '.join(args)}` failed ({proc.returncode}); see {LOG}")
    return seconds


def lora_config(spec: Spec) -> Any:
    from peft import LoraConfig

    t = spec.lora.target_modules
    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=t if isinstance(t, str) else list(t), bias="none", task_type="CAUSAL_LM")


def load_4bit(model_dir: Path, spec: Spec, profile: Profile) -> Any:
    """The base model as a user would load it: 4-bit with the profile's type and compute dtype,
    bitsandbytes defaults for everything else (storage uint8)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[profile.dtype]
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=profile.quantization,
                           bnb_4bit_use_double_quant=spec.model.double_quant, bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(str(model_dir / "weights"), dtype=dtype, quantization_config=q)


def in_memory_rows(data_dir: Path) -> Any:
    """train.arrow copied into memory: TRL maps the dataset, and a memory-mapped one would get its
    cache files written beside train.arrow, inside the runner's store."""
    from datasets import Dataset

    return Dataset.from_dict(Dataset.from_file(str(data_dir / "train.arrow")).to_dict())


def run_runner(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(a) The runner's own train stage, unchanged; only the token-counting hook is added to its model."""
    from runner.stages import StageContext
    from runner.stages import train as stage
    from runner.stages.training import read_metrics

    counter, original = TokenCounter(), stage._lora_model
    stage._lora_model = lambda *a, **k: counter.attach(original(*a, **k))  # type: ignore[assignment]
    try:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, max_steps=steps))
        out = scratch / "out"
        out.mkdir(parents=True)
        stage.run(StageContext(spec=spec, profile=profile, out=out, work=scratch / "work", upstream=upstream,
                               files={}, log=lambda message: None))
    finally:
        stage._lora_model = original  # type: ignore[assignment]
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    losses = [row["loss"] for row in read_metrics(out / "metrics.jsonl")]  # logged at every step
    return Result(summary["seconds"], counter.tokens, summary["steps"], statistics.fmean(losses))


def run_hand(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(b) The QLoRA loop a user writes from the peft/transformers docs, with the runner's settings."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(spec.seed)  # same LoRA init and data order as the runner
    tok = AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer"))
    # Checkpointing as the profile says (off on CPU); the peft default would turn it on.
    model = prepare_model_for_kbit_training(load_4bit(upstream["model"], spec, profile),
                                            use_gradient_checkpointing=profile.gradient_checkpointing)
    counter = TokenCounter()
    model = counter.attach(get_peft_model(model, lora_config(spec)))
    t = spec.train
    args = TrainingArguments(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=profile.micro_batch_size,
                             gradient_accumulation_steps=profile.gradient_accumulation, learning_rate=t.learning_rate,
                             lr_scheduler_type=t.scheduler, warmup_steps=t.warmup, weight_decay=t.weight_decay,
                             max_grad_norm=t.max_grad_norm, optim=profile.optimizer, seed=spec.seed, report_to="none",
                             use_cpu=profile.device == "cpu")  # as the runner does
    trainer = Trainer(model=model, args=args, train_dataset=in_memory_rows(upstream["data"]),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    return Result(result.metrics["train_runtime"], counter.tokens, result.global_step, result.training_loss)


def run_trl(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(c) TRL's SFTTrainer with its defaults (bf16 autocast, gradient checkpointing, entropy and
    token-accuracy metrics); it reads the pre-tokenized `input_ids`/`labels` columns as they are."""
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer"))
    config = SFTConfig(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=profile.micro_batch_size,
                       gradient_accumulation_steps=profile.gradient_accumulation,
                       learning_rate=spec.train.learning_rate, report_to="none",
                       use_cpu=profile.device == "cpu")  # without it TRL's bf16 default refuses a CPU
    trainer = SFTTrainer(model=load_4bit(upstream["model"], spec, profile), args=config, processing_class=tok,
                         train_dataset=in_memory_rows(upstream["data"]), peft_config=lora_config(spec))
    counter = TokenCounter()
    counter.attach(trainer.model)
    result = trainer.train()
    return Result(result.metrics["train_runtime"], counter.tokens, result.global_step, result.training_loss)


METHODS: dict[str, Callable[[Spec, Profile, dict[str, Path], int, Path], Result]] = {
    "runner": run_runner, "hand-written": run_hand, "trl-sft": run_trl}


def artifact_dirs(spec: Spec, profile: Profile, spec_path: Path, store: Path) -> dict[str, Path]:
    """The committed model and data artifacts, found the way `runner plan` finds them."""
    from runner.plan import plan
    from runner.stages import all_stages
    from runner.store import Store

    steps = {s.stage: s for s in plan(all_stages(), spec, profile, Store(store), None)}
    if any(s.manifest is None for s in steps.values()):
        raise SystemExit(f"the spec run left stages uncached: {[n for n, s in steps.items() if s.manifest is None]}")
    return {name: steps[name].manifest.path for name in ("model", "data")}  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "smoke.yaml")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per method; the median is reported")
    args = parser.parse_args()
    spec_path = args.spec.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    LOG.write_text("", "utf-8")
    spec = load_spec(spec_path)
    profile = resolve_profile(spec, probe_machine())
    figures: dict[str, Any] = {"spec": str(spec_path.relative_to(ROOT)), "steps": args.steps, "repeats": args.repeats,
                               "profile": dataclasses.asdict(profile), "cpu_count": os.cpu_count(),
                               "loadavg_start": os.getloadavg()[0]}
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work skews timings",
              flush=True)
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        store = Path(tmp) / "store"
        # One full run builds model and data with the runner's own stages and leaves every stage
        # cached, which the no-op timing below needs anyway.
        print(f"building {spec.name} into a temporary store (full run) ...", flush=True)
        figures["full_run_s"] = round(runner_cli("run", str(spec_path), "--store", str(store)), 2)
        upstream = artifact_dirs(spec, profile, spec_path, store)

        runs: dict[str, list[Result]] = {name: [] for name in METHODS}
        names = list(METHODS)
        for rep in range(args.repeats):
            # Rotate the order each round, so warm-up and drift fall on every method alike.
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                print(f"round {rep + 1}/{args.repeats}: {name}, {args.steps} steps ...", flush=True)
                with stderr_to_log():
                    runs[name].append(METHODS[name](spec, profile, upstream, args.steps, Path(tmp) / f"{name}-{rep}"))
                gc.collect()

        # Subprocesses, as a user runs them; medians, since a cold page cache or a busy core skews one.
        noop = [runner_cli("run", str(spec_path), "--store", str(store)) for _ in range(3)]
        validate = [runner_cli("validate", str(spec_path)) for _ in range(5)]

    figures["loadavg_end"] = os.getloadavg()[0]  # a busy machine (another job) explains a noisy run
    methods: dict[str, Any] = {}
    for name, results in runs.items():
        seconds = statistics.median(r.seconds for r in results)
        tokens = statistics.median(r.tokens for r in results)
        methods[name] = {"seconds": [r.seconds for r in results], "median_seconds": seconds, "tokens": tokens,
                         "tokens_per_s": round(tokens / seconds, 1), "steps": results[0].steps,
                         "mean_train_loss": round(statistics.median(r.loss for r in results), 4)}
    tps = {name: m["tokens_per_s"] for name, m in methods.items()}
    figures["methods"] = methods
    figures["ratios"] = {"runner/hand-written": round(tps["runner"] / tps["hand-written"], 3),
                         "runner/trl-sft": round(tps["runner"] / tps["trl-sft"], 3)}
    figures["noop_rerun_s"] = {"runs": [round(s, 3) for s in noop], "median": round(statistics.median(noop), 3),
                               "target": NOOP_TARGET_S, "ok": statistics.median(noop) < NOOP_TARGET_S}
    figures["validate_s"] = {"runs": [round(s, 3) for s in validate], "median": round(statistics.median(validate), 3),
                             "target": VALIDATE_TARGET_S, "ok": statistics.median(validate) < VALIDATE_TARGET_S}
    (OUT / "train_speed.json").write_text(json.dumps(figures, indent=1) + "\n", "utf-8")

    print(f"\nprofile: {profile.device} {profile.dtype}, {profile.quantization}, micro-batch "
          f"{profile.micro_batch_size} x {profile.gradient_accumulation}; {args.steps} steps, median of {args.repeats}")
    print(f"{'method':<14}{'train s':>9}{'tokens':>9}{'tokens/s':>10}{'mean loss':>11}")
    for name, m in methods.items():
        print(f"{name:<14}{m['median_seconds']:>9.2f}{m['tokens']:>9.0f}{m['tokens_per_s']:>10.0f}{m['mean_train_loss']:>11.4f}")
    for label, ratio in figures["ratios"].items():
        print(f"{label:<24}{ratio:>6.3f}")
    for label, fig in (("no-op re-run", figures["noop_rerun_s"]), ("validate", figures["validate_s"])):
        print(f"{label:<14}{fig['median']:>7.3f} s  (target < {fig['target']} s: {'ok' if fig['ok'] else 'MISSED'})")
    print(f"full run {figures['full_run_s']} s; figures in {OUT / 'train_speed.json'}; library output in {LOG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
