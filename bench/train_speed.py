#!/usr/bin/env python
"""Tokens/s of the runner's train stage vs a hand-written Trainer loop vs TRL's SFTTrainer (same model,
data, steps, batch settings), and the wall time of a no-op re-run and of `runner validate`.
    .venv/bin/python bench/train_speed.py [--steps 60] [--repeats 3] [--threads N] [--spec specs/smoke.yaml]
All three are compared on the Trainer's own `train_runtime` (the runner's summary.json `seconds`), so
loading, evaluation and saving stay out; `wall` (load to saved adapter) shows what surrounds the loop,
`cpu s` (process CPU time in Trainer.train) what a busy machine cannot skew much (use --threads 1 there).
Library output goes to bench/out/train_speed.log, figures to bench/out/train_speed.json."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import signal
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

from runner.probe import probe_machine  # noqa: E402  (needs sys.path)
from runner.profile import Profile, resolve_profile  # noqa: E402  (needs sys.path)
from runner.spec import Spec, load_spec  # noqa: E402

TARGETS = {"noop_rerun_s": 1.5, "validate_s": 0.3}


@dataclasses.dataclass
class Result:
    seconds: float  # Trainer train_runtime
    tokens: int  # non-pad tokens in training forwards
    steps: int  # optimizer steps done: --steps, or the comparison is off
    loss: float  # mean training loss: equal for runner and hand-written when they do the same work
    wall: float = 0.0  # the whole call: load, (evaluate), train, save
    cpu: float = 0.0  # process CPU seconds inside Trainer.train


class TokenCounter:
    """Non-pad tokens of training-mode forwards: exact where a counting collator is not (evaluation
    batches and the dataloader's look-ahead batch never count)."""
    tokens = 0

    def attach(self, model: Any) -> Any:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return model

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            mask = kwargs.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())


def clock_train_cpu() -> list[float]:
    """Process CPU seconds of each Trainer.train call (SFTTrainer inherits it), for all three alike.
    On a shared machine CPU time (with --threads 1) hardly moves when other jobs take the cores,
    where train_runtime, a wall time, does."""
    from transformers import Trainer
    spent: list[float] = []
    train = Trainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return train(self, *args, **kwargs)
        finally:
            spent.append(time.process_time() - started)
    Trainer.train = timed  # type: ignore[method-assign]
    return spent


@contextlib.contextmanager
def output_to_log() -> Iterator[None]:
    """fds 1 and 2 (tqdm bars, printed metrics, warnings) to the log while a method trains, alike
    for all three, so the terminal shows only the bench's own lines."""
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    sys.stdout.flush()
    with open(LOG, "a", encoding="utf-8") as handle:
        for fd in saved:
            os.dup2(handle.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()  # stderr is unbuffered
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def runner_cli(*args: str, expect_noop: bool = False) -> tuple[float, str | None]:
    """Wall seconds of one `python -m runner ...` subprocess (what a user waits for, imports included)
    and what went wrong, if anything: the repo is edited under us, so a failure is reported, not fatal."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"$ runner {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        return seconds, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    if expect_noop and "ran nothing" not in proc.stdout:
        return seconds, "not a no-op: a stage ran (the code or spec changed since the full run?)"
    return seconds, None


def lora_config(spec: Spec) -> Any:
    from peft import LoraConfig
    t = spec.lora.target_modules
    # The spec's alpha as is (a float, annotated int in peft), exactly as the runner passes it.
    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,  # type: ignore[arg-type]
                      target_modules=t if isinstance(t, str) else list(t), bias="none", task_type="CAUSAL_LM")


def load_4bit(model_dir: Path, spec: Spec, profile: Profile) -> Any:
    """The base as a user loads it: 4-bit with the profile's type and compute dtype, bitsandbytes
    defaults otherwise (uint8 storage; the runner stores in the compute dtype)."""
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
    """(a) The runner's own train stage, unchanged but for the token-counting hook on its model."""
    from runner.stage import StageContext
    from runner.stages import train as stage
    from runner.stages.train import loop
    from runner.stages.train.callbacks import read_metrics
    counter, original = TokenCounter(), loop.attach_lora
    loop.attach_lora = lambda *a, **k: counter.attach(original(*a, **k))
    try:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, max_steps=steps))
        out = scratch / "out"
        out.mkdir(parents=True)
        stage.run(StageContext(spec=spec, profile=profile, out=out, work=scratch / "work", upstream=upstream,
                               files={}, log=lambda message: None))
    finally:
        loop.attach_lora = original
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    losses = [row["loss"] for row in read_metrics(out / "metrics.jsonl")]  # logged at every step
    return Result(summary["seconds"], counter.tokens, summary["steps"], statistics.fmean(losses))


def run_hand(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(b) The QLoRA loop a user writes from the peft/transformers docs, with the runner's settings."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed
    set_seed(spec.seed)  # same LoRA init and data order as the runner
    tok = AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer"))
    # Checkpointing as the profile says (off on CPU); peft's default would turn it on.
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
    model.save_pretrained(str(scratch / "adapter"))  # the runner saves its adapter too
    return Result(result.metrics["train_runtime"], counter.tokens, result.global_step, result.training_loss)


def run_trl(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(c) TRL's SFTTrainer with its defaults (bf16 autocast, gradient checkpointing, entropy and
    token-accuracy metrics); it takes the pre-tokenized `input_ids`/`labels` columns as they are."""
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer
    set_seed(spec.seed)
    config = SFTConfig(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=profile.micro_batch_size,
                       gradient_accumulation_steps=profile.gradient_accumulation,
                       learning_rate=spec.train.learning_rate, report_to="none",
                       use_cpu=profile.device == "cpu")  # without it TRL's bf16 default refuses a CPU
    trainer = SFTTrainer(model=load_4bit(upstream["model"], spec, profile), args=config,
                         processing_class=AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer")),
                         train_dataset=in_memory_rows(upstream["data"]), peft_config=lora_config(spec))
    counter = TokenCounter()
    counter.attach(trainer.model)  # the PeftModel SFTTrainer built
    result = trainer.train()
    trainer.save_model()
    return Result(result.metrics["train_runtime"], counter.tokens, result.global_step, result.training_loss)


METHODS: dict[str, Callable[[Spec, Profile, dict[str, Path], int, Path], Result]] = {
    "runner": run_runner, "hand-written": run_hand, "trl-sft": run_trl}


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.splitlines()[:2]))
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "smoke.yaml")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per method; the median is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for all three (default: torch's, one per core); 1 on a shared machine")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary store is removed on kill
    if args.threads:
        # On a busy 2-core box, 2 OpenMP threads per process spin against the other jobs: steps get
        # 10-20x slower and swamp any difference between the methods. One thread each costs little.
        import torch
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # and the runner subprocesses
    spec_path = args.spec.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    LOG.write_text("", "utf-8")
    spec = load_spec(spec_path)
    profile = resolve_profile(spec, probe_machine())
    load = os.getloadavg()[0]
    figures: dict[str, Any] = {"spec": str(args.spec), "steps": args.steps, "repeats": args.repeats,
                               "threads": args.threads or "default", "cpu_count": os.cpu_count(),
                               "loadavg_start": load, "profile": dataclasses.asdict(profile)}
    if load > (os.cpu_count() or 1) / 2:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work skews timings"
              + ("" if args.threads else "; --threads 1 keeps the skew small"), flush=True)
    runs: dict[str, list[Result]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        store = Path(tmp) / "store"
        # One full run builds model and data with the runner's own stages and leaves every stage
        # cached, which the no-op timing below needs anyway.
        print(f"building {spec.name} into a temporary store (one full run) ...", flush=True)
        seconds, problem = runner_cli("run", str(spec_path), "--store", str(store))
        figures["full_run"] = {"seconds": round(seconds, 2), "problem": problem}
        if problem:
            print(f"warning: the full run failed ({problem}); training goes on if model and data were built")
        # A fresh store holds one artifact per stage, at <store>/<stage>/<key>/ (see runner/store.py).
        upstream = {stage: found[0].parent for stage in ("model", "data")
                    if (found := sorted((store / stage).glob("*/manifest.json")))}
        if len(upstream) < 2:
            raise SystemExit(f"the full run did not build the model and data artifacts; see {LOG}")
        with output_to_log():  # importing transformers here already prints bitsandbytes warnings
            names, cpu_spent = list(METHODS), clock_train_cpu()
        for rep in range(args.repeats):
            # Rotate the order each round, so warm-up and drift fall on every method alike.
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                print(f"round {rep + 1}/{args.repeats}: {name}, {args.steps} steps ...", flush=True)
                started = time.perf_counter()
                with output_to_log():
                    result = METHODS[name](spec, profile, upstream, args.steps, Path(tmp) / f"{name}-{rep}")
                result.wall, result.cpu = time.perf_counter() - started, cpu_spent[-1]
                runs[name].append(result)
                gc.collect()
        # Subprocesses, as a user runs them; medians, since one cold start or busy moment skews a run.
        timed = {"noop_rerun_s": [runner_cli("run", str(spec_path), "--store", str(store), expect_noop=True)
                                  for _ in range(3)],
                 "validate_s": [runner_cli("validate", str(spec_path)) for _ in range(5)]}
    figures["loadavg_end"] = os.getloadavg()[0]  # a busy machine (another job) explains a noisy run

    med = statistics.median
    methods: dict[str, dict[str, Any]] = {name: {
        "seconds": [round(r.seconds, 3) for r in rs], "median_seconds": med(r.seconds for r in rs),
        "tokens": med(r.tokens for r in rs), "tokens_per_s": round(med(r.tokens for r in rs) / med(r.seconds for r in rs), 1),
        "cpu_s": round(med(r.cpu for r in rs), 2), "tokens_per_cpu_s": round(med(r.tokens / r.cpu for r in rs), 1),
        "steps": [r.steps for r in rs], "wall_s": round(med(r.wall for r in rs), 2),
        "mean_train_loss": round(med(r.loss for r in rs), 4)} for name, rs in runs.items()}
    figures["methods"] = methods
    figures["ratios"] = {f"runner/{other}{per}": round(methods["runner"][key] / methods[other][key], 3)
                         for per, key in (("", "tokens_per_s"), (" per cpu s", "tokens_per_cpu_s"))
                         for other in ("hand-written", "trl-sft")}
    for key, calls in timed.items():
        # The median of the clean calls: a re-run that rebuilt a stage (code edited meanwhile) is no no-op.
        clean, problems = [s for s, p in calls if p is None], sorted({p for _, p in calls if p})
        median = med(clean) if clean else float("nan")
        figures[key] = {"runs": [round(s, 3) for s, _ in calls], "median": round(median, 3), "target": TARGETS[key],
                        "ok": bool(clean) and median < TARGETS[key], "problems": problems}
    (OUT / "train_speed.json").write_text(json.dumps(figures, indent=1) + "\n", "utf-8")

    print(f"\nprofile {profile.device} {profile.dtype} {profile.quantization}, micro-batch {profile.micro_batch_size}"
          f" x {profile.gradient_accumulation}; {args.steps} steps, median of {args.repeats}; threads "
          f"{figures['threads']}, load {figures['loadavg_start']:.1f} -> {figures['loadavg_end']:.1f}")
    print(f"{'method':<14}{'train s':>9}{'tokens':>9}{'tokens/s':>10}{'cpu s':>8}{'tok/cpu s':>11}"
          f"{'mean loss':>11}{'wall s':>8}")
    for name, m in methods.items():
        print(f"{name:<14}{m['median_seconds']:>9.2f}{m['tokens']:>9.0f}{m['tokens_per_s']:>10.0f}{m['cpu_s']:>8.2f}"
              f"{m['tokens_per_cpu_s']:>11.0f}{m['mean_train_loss']:>11.4f}{m['wall_s']:>8.2f}")
    for label, ratio in figures["ratios"].items():
        print(f"{label:<33}{ratio:>6.3f}")
    for key, label in (("noop_rerun_s", "no-op re-run (median of 3)"), ("validate_s", "validate (median of 5)")):
        fig = figures[key]
        print(f"{label:<28}{fig['median']:>7.3f} s  target < {fig['target']} s: {'ok' if fig['ok'] else 'MISSED'}"
              + "".join(f"\n  ({problem})" for problem in fig["problems"]))
    print(f"full run {figures['full_run']['seconds']} s; figures in {OUT / 'train_speed.json'}; library output in {LOG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
