#!/usr/bin/env python
"""Useful (non-padding) tokens/s of the runner's train stage, packed and padded, vs a hand-written
transformers Trainer (padded) and TRL's SFTTrainer with packing, on a length mix like real data.
    .venv/bin/python bench/train_speed.py [--steps 30] [--repeats 3] [--threads 1] [--spec specs/smoke.yaml]
The data: MedQA-style vignettes (word counts drawn like MedQA's test questions: median ~130, tens to
500) mixed half and half with MedMCQA-style one-liners (10-40 words), generated from the demo set's
words, tokenized by the runner's data stage (`--spec`'s model and training settings, max_length 512).
All methods train the same steps with the same effective batch and are compared on the Trainer's own
`train_runtime` (the runner's summary.json `seconds`), so loading, evaluation and saving stay out;
`cpu s` (process CPU time in Trainer.train) is what a busy machine cannot skew much (use --threads 1).
`--cli-timings` adds the wall time of a no-op re-run and of `runner validate` of `--spec` (a full run).
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

from runner.machine.probe import probe_machine  # noqa: E402  (needs sys.path)
from runner.machine.profile import Profile, resolve_profile  # noqa: E402  (needs sys.path)
from runner.spec.typed import Spec, load_spec  # noqa: E402

TARGETS = {"noop_rerun_s": 1.5, "validate_s": 0.3}
GOALS = {"runner-packed/hand-written": 1.5, "runner-packed/trl-packed": 1.2}  # issue 13
MAX_LENGTH = 512  # rows of the mix run to ~500 tokens
SMALL = {"hidden_size": 256, "intermediate_size": 688, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4}


@dataclasses.dataclass
class Result:
    seconds: float  # Trainer train_runtime
    tokens: int  # useful tokens in training forwards: the examples' own, no padding
    computed: int  # positions computed: useful plus padding
    steps: int  # optimizer steps done: --steps, or the comparison is off
    loss: float  # training loss over the last 5 steps
    wall: float = 0.0  # the whole call: load, (evaluate), train, save
    cpu: float = 0.0  # process CPU seconds inside Trainer.train


class TokenCounter:
    """Useful and computed tokens of training-mode forwards: exact where a counting collator is not
    (evaluation batches and the dataloader's look-ahead batch never count). Padded batches carry an
    attention mask; packed ones (position ids restarting per example, no mask) may end in a padding
    block: the last block of a row when none of its labels is a target."""
    tokens = 0
    computed = 0

    def attach(self, model: Any) -> Any:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return model

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        self.computed += int(ids.numel())
        if mask is not None:
            self.tokens += int(mask.sum())
            return
        self.tokens += int(ids.numel())
        positions, labels = kwargs.get("position_ids"), kwargs.get("labels")
        if positions is None or labels is None:
            return
        for row_pos, row_labels in zip(positions, labels):
            start = int((row_pos == 0).nonzero()[-1])  # the last block of the row
            if start > 0 and bool((row_labels[start:] == -100).all()):
                self.tokens -= len(row_pos) - start


def last_losses(losses: list[float]) -> float:
    return statistics.fmean(losses[-5:]) if losses else float("nan")


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


def run_runner(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path,
               packing: bool = False) -> Result:
    """(a, b) The runner's own train stage, packed or padded, unchanged but for the token-counting
    hook on its model."""
    from runner.core.stage import StageContext
    from runner.stages import train as stage
    from runner.stages.train import loop
    from runner.stages.train.batches import read_metrics, training_rows
    counter, original = TokenCounter(), loop.attach_lora
    loop.attach_lora = lambda *a, **k: counter.attach(original(*a, **k))
    try:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, max_steps=steps, packing=packing))
        out = scratch / "out"
        out.mkdir(parents=True)
        stage.run(StageContext(spec=spec, profile=profile, out=out, work=scratch / "work", upstream=upstream,
                               files={}, log=lambda message: None))
    finally:
        loop.attach_lora = original
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    losses = [row["loss"] for row in training_rows(read_metrics(out / "metrics.jsonl"))]  # logged at every step
    return Result(summary["seconds"], counter.tokens, counter.computed, summary["steps"], last_losses(losses))


def hf_losses(trainer: Any) -> float:
    return last_losses([h["loss"] for h in trainer.state.log_history if "loss" in h])


def run_hand(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(c) The QLoRA loop a user writes from the peft/transformers docs, with the runner's settings:
    each micro-batch padded to its longest row (DataCollatorForSeq2Seq)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed
    set_seed(spec.seed)  # same LoRA init and data order as the runner
    tok = AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer"))
    # Checkpointing as the profile says (off on CPU); peft's default would turn it on.
    model = prepare_model_for_kbit_training(load_4bit(upstream["model"], spec, profile),
                                            use_gradient_checkpointing=profile.gradient_checkpointing)
    counter = TokenCounter()
    model = counter.attach(get_peft_model(model, lora_config(spec)))
    args = TrainingArguments(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=profile.micro_batch_size,
                             gradient_accumulation_steps=profile.gradient_accumulation, report_to="none",
                             logging_steps=1, use_cpu=profile.device == "cpu", **same_optimisation(spec, profile))
    trainer = Trainer(model=model, args=args, train_dataset=in_memory_rows(upstream["data"]),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    model.save_pretrained(str(scratch / "adapter"))  # the runner saves its adapter too
    return Result(result.metrics["train_runtime"], counter.tokens, counter.computed, result.global_step, hf_losses(trainer))


def same_optimisation(spec: Spec, profile: Profile) -> dict[str, Any]:
    t = spec.train
    return {"learning_rate": t.learning_rate, "lr_scheduler_type": t.scheduler, "warmup_steps": t.warmup,
            "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm, "optim": profile.optimizer, "seed": spec.seed}


def run_trl_packed(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(d) TRL's SFTTrainer with packing=True (best-fit-decreasing rows of max_length, padding-free
    batches), in the runner's precision, checkpointing and optimisation; its other defaults (entropy
    and token accuracy logged each step) as they are. It packs whole rows of max_length, so a
    micro-batch of as many rows as hold the runner's micro-batch of examples (on average) keeps the
    tokens per step alike; it takes the pre-tokenized `input_ids`/`labels` columns as they are."""
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer
    set_seed(spec.seed)
    rows = in_memory_rows(upstream["data"])
    mean = statistics.fmean(len(ids) for ids in rows["input_ids"])
    per_row = max(1, round(profile.micro_batch_size * mean / spec.data.max_length))
    config = SFTConfig(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=per_row,
                       gradient_accumulation_steps=profile.gradient_accumulation, report_to="none", logging_steps=1,
                       packing=True, max_length=spec.data.max_length, bf16=False,
                       gradient_checkpointing=profile.gradient_checkpointing, use_cpu=profile.device == "cpu",
                       **same_optimisation(spec, profile))
    trainer = SFTTrainer(model=load_4bit(upstream["model"], spec, profile), args=config,
                         processing_class=AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer")),
                         train_dataset=rows, peft_config=lora_config(spec))
    counter = TokenCounter()
    counter.attach(trainer.model)  # the PeftModel SFTTrainer built
    result = trainer.train()
    trainer.save_model()
    return Result(result.metrics["train_runtime"], counter.tokens, counter.computed, result.global_step, hf_losses(trainer))


def run_trl(spec: Spec, profile: Profile, upstream: dict[str, Path], steps: int, scratch: Path) -> Result:
    """(e, --methods trl-sft) TRL's SFTTrainer with all its defaults (bf16 autocast, gradient
    checkpointing, no packing), padded batches of the runner's micro-batch size."""
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer
    set_seed(spec.seed)
    config = SFTConfig(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=profile.micro_batch_size,
                       gradient_accumulation_steps=profile.gradient_accumulation, logging_steps=1,
                       learning_rate=spec.train.learning_rate, report_to="none", max_length=spec.data.max_length,
                       use_cpu=profile.device == "cpu")  # without it TRL's bf16 default refuses a CPU
    trainer = SFTTrainer(model=load_4bit(upstream["model"], spec, profile), args=config,
                         processing_class=AutoTokenizer.from_pretrained(str(upstream["model"] / "tokenizer")),
                         train_dataset=in_memory_rows(upstream["data"]), peft_config=lora_config(spec))
    counter = TokenCounter()
    counter.attach(trainer.model)
    result = trainer.train()
    trainer.save_model()
    return Result(result.metrics["train_runtime"], counter.tokens, counter.computed, result.global_step, hf_losses(trainer))


METHODS: dict[str, Callable[[Spec, Profile, dict[str, Path], int, Path], Result]] = {
    "runner-packed": lambda *a: run_runner(*a, packing=True), "runner-padded": run_runner,
    "hand-written": run_hand, "trl-packed": run_trl_packed, "trl-sft": run_trl}
DEFAULT_METHODS = "runner-packed,runner-padded,hand-written,trl-packed"


def length_mix(path: Path, rows: int, seed: int) -> None:
    """MedQA-style vignettes and MedMCQA-style one-liners, half and half, in MedQA's fields: question
    word counts drawn log-normally around MedQA's (test set: median 129 words, 10-90% 76-192, max 539)
    and uniformly from 10 to 40; words from the demo questions, so the tokenizer knows them."""
    import random
    rng = random.Random(seed)
    demo = [json.loads(line) for line in (ROOT / "data" / "demo" / "medmc_train.jsonl").read_text("utf-8").splitlines()]
    words = sorted({w for r in demo for w in r["question"].split()})
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            n = int(min(480, max(30, rng.lognormvariate(4.85, 0.4)))) if i % 2 else rng.randint(10, 40)
            options = {k: " ".join(rng.choices(words, k=rng.randint(1, 4))) for k in "ABCD"}
            row = {"question": " ".join(rng.choices(words, k=n)) + "?", "options": options, "answer_idx": rng.choice("ABCD")}
            out.write(json.dumps(row) + "\n")


def mix_spec(spec_path: Path, folder: Path, rows: int, size: str) -> Path:
    """`spec_path` with the length mix as its training data (max_length 512), no benchmarks; `size`
    small: a larger random Llama than the smoke model."""
    import yaml

    from runner.spec.yamlpos import read_spec
    doc, _ = read_spec(spec_path.read_text("utf-8"), str(spec_path))  # 3e-3 read as a number, as the runner reads it
    length_mix(folder / "mix.jsonl", rows, doc.get("seed", 42))
    doc["name"] = f"{doc.get('name', 'bench')}-length-mix"
    doc["data"] = {**doc["data"], "train": {"path": str(folder / "mix.jsonl")}, "max_length": MAX_LENGTH,
                   "validation_fraction": 0.02}
    if size == "small":  # big enough that compute, not per-call overhead, sets the pace
        doc["model"]["init"] = {**doc["model"].get("init", {}), **SMALL}
    doc.pop("eval", None)
    doc.pop("export", None)
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(doc), "utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.splitlines()[:2]))
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "smoke.yaml",
                        help="model, LoRA and training settings (its data is replaced by the length mix)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per method; the median is reported")
    parser.add_argument("--rows", type=int, default=800, help="rows of the length mix")
    parser.add_argument("--size", choices=("small", "spec"), default="small",
                        help=f"the model: small ({SMALL}) or the spec's own")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for all (default: torch's, one per core); 1 on a shared machine")
    parser.add_argument("--cli-timings", action="store_true", help="also time a no-op re-run and `runner validate`")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary store is removed on kill
    if args.threads:
        # On a busy 2-core box, 2 OpenMP threads per process spin against the other jobs: steps get
        # 10-20x slower and swamp any difference between the methods. One thread each costs little.
        import torch
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # and the runner subprocesses
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    LOG.write_text("", "utf-8")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) / 2:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work skews timings"
              + ("" if args.threads else "; --threads 1 keeps the skew small"), flush=True)
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        spec_path = mix_spec(args.spec.resolve(), Path(tmp), args.rows, args.size)
        store = Path(tmp) / "store"
        print(f"building model and length-mix data ({args.rows} rows) into a temporary store ...", flush=True)
        _, problem = runner_cli("run", str(spec_path), "--store", str(store), "--only", "data")
        upstream = {stage: found[0].parent for stage in ("model", "data")
                    if (found := sorted((store / stage).glob("*/manifest.json")))}
        if len(upstream) < 2:
            raise SystemExit(f"the model and data stages failed ({problem}); see {LOG}")
        spec = load_spec(spec_path)
        profile = resolve_profile(spec, probe_machine())
        stats = json.loads((upstream["data"] / "stats.json").read_text("utf-8"))["train_tokens"]
        figures: dict[str, Any] = {"spec": str(args.spec), "size": args.size, "data": "length mix", "rows": args.rows,
                                   "steps": args.steps,
                                   "repeats": args.repeats, "threads": args.threads or "default",
                                   "cpu_count": os.cpu_count(), "loadavg_start": load, "train_tokens": stats,
                                   "profile": dataclasses.asdict(profile)}
        runs = measure(names, spec, profile, upstream, args, Path(tmp))
        if args.cli_timings:
            figures |= cli_timings(args.spec.resolve(), Path(tmp) / "cli-store")
    figures["loadavg_end"] = os.getloadavg()[0]  # a busy machine (another job) explains a noisy run
    report(figures, runs, profile, args)
    return 0


def measure(names: list[str], spec: Spec, profile: Profile, upstream: dict[str, Path], args: argparse.Namespace,
            tmp: Path) -> dict[str, list[Result]]:
    runs: dict[str, list[Result]] = {name: [] for name in names}
    with output_to_log():  # importing transformers here already prints bitsandbytes warnings
        cpu_spent = clock_train_cpu()
    for rep in range(args.repeats):
        # Rotate the order each round, so warm-up and drift fall on every method alike.
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            print(f"round {rep + 1}/{args.repeats}: {name}, {args.steps} steps ...", flush=True)
            started = time.perf_counter()
            with output_to_log():
                result = METHODS[name](spec, profile, upstream, args.steps, tmp / f"{name}-{rep}")
            result.wall, result.cpu = time.perf_counter() - started, cpu_spent[-1]
            runs[name].append(result)
            gc.collect()
    return runs


def cli_timings(spec_path: Path, store: Path) -> dict[str, Any]:
    """Wall seconds of a no-op re-run (after one full run) and of `runner validate`, as a user runs them;
    medians, since one cold start or busy moment skews a run."""
    print(f"a full run of {spec_path.name}, then no-op re-runs and validations ...", flush=True)
    runner_cli("run", str(spec_path), "--store", str(store))
    timed = {"noop_rerun_s": [runner_cli("run", str(spec_path), "--store", str(store), expect_noop=True) for _ in range(3)],
             "validate_s": [runner_cli("validate", str(spec_path)) for _ in range(5)]}
    out = {}
    for key, calls in timed.items():
        # The median of the clean calls: a re-run that rebuilt a stage (code edited meanwhile) is no no-op.
        clean, problems = [s for s, p in calls if p is None], sorted({p for _, p in calls if p})
        median = statistics.median(clean) if clean else float("nan")
        out[key] = {"runs": [round(s, 3) for s, _ in calls], "median": round(median, 3), "target": TARGETS[key],
                    "ok": bool(clean) and median < TARGETS[key], "problems": problems}
    return out


def report(figures: dict[str, Any], runs: dict[str, list[Result]], profile: Profile, args: argparse.Namespace) -> None:
    med = statistics.median
    methods: dict[str, dict[str, Any]] = {name: {
        "seconds": [round(r.seconds, 3) for r in rs], "median_seconds": med(r.seconds for r in rs),
        "tokens": med(r.tokens for r in rs), "computed": med(r.computed for r in rs),
        "tokens_per_s": round(med(r.tokens for r in rs) / med(r.seconds for r in rs), 1),
        "cpu_s": round(med(r.cpu for r in rs), 2), "tokens_per_cpu_s": round(med(r.tokens / r.cpu for r in rs), 1),
        "steps": [r.steps for r in rs], "wall_s": round(med(r.wall for r in rs), 2),
        "final_train_loss": round(med(r.loss for r in rs), 4)} for name, rs in runs.items()}
    figures["methods"] = methods
    figures["ratios"] = {f"runner-packed/{other}{per}": round(methods["runner-packed"][key] / methods[other][key], 3)
                         for per, key in (("", "tokens_per_s"), (" per cpu s", "tokens_per_cpu_s"))
                         for other in methods if other != "runner-packed"} if "runner-packed" in methods else {}
    (OUT / "train_speed.json").write_text(json.dumps(figures, indent=1) + "\n", "utf-8")
    s = figures["train_tokens"]
    print(f"\nlength mix: {figures['rows']} rows, tokens per example min {s['min']}, median {s['p50']}, mean {s['mean']}, "
          f"p95 {s['p95']}, max {s['max']}")
    print(f"profile {profile.device} {profile.dtype} {profile.quantization}, micro-batch {profile.micro_batch_size}"
          f" x {profile.gradient_accumulation}; {args.steps} steps, median of {args.repeats}; torch threads "
          f"{figures['threads']}, load {figures['loadavg_start']:.1f} -> {figures['loadavg_end']:.1f}")
    print(f"{'method':<15}{'train s':>9}{'useful tok':>11}{'padding':>9}{'tokens/s':>10}{'cpu s':>8}{'tok/cpu s':>11}"
          f"{'final loss':>11}{'wall s':>8}")
    for name, m in methods.items():
        padding = 1 - m["tokens"] / m["computed"] if m["computed"] else 0.0
        print(f"{name:<15}{m['median_seconds']:>9.2f}{m['tokens']:>11.0f}{padding:>9.1%}{m['tokens_per_s']:>10.0f}"
              f"{m['cpu_s']:>8.2f}{m['tokens_per_cpu_s']:>11.0f}{m['final_train_loss']:>11.4f}{m['wall_s']:>8.2f}")
    for label, ratio in figures["ratios"].items():
        goal = GOALS.get(label)
        print(f"{label:<40}{ratio:>6.3f}" + (f"  goal >= {goal}: {'met' if ratio >= goal else 'NOT met'}" if goal else ""))
    for key, label in (("noop_rerun_s", "no-op re-run (median of 3)"), ("validate_s", "validate (median of 5)")):
        if key in figures:
            fig = figures[key]
            print(f"{label:<28}{fig['median']:>7.3f} s  target < {fig['target']} s: {'ok' if fig['ok'] else 'MISSED'}"
                  + "".join(f"\n  ({problem})" for problem in fig["problems"]))
    print(f"figures in {OUT / 'train_speed.json'}; library output in {LOG}")


if __name__ == "__main__":
    sys.exit(main())
