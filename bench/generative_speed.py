#!/usr/bin/env python
"""Questions/s of the runner's generative evaluation (runner/stages/eval/sampling.py: KV-cache batches,
per-row stop) against lm-evaluation-harness's generative path (`HFLM.generate_until`), on the same model,
the same questions and the same budget, side by side in one run; and whether the extracted answers agree.

    .venv/bin/pip install -e ".[bench]"        # lm-eval, offline once installed
    .venv/bin/python bench/generative_speed.py [--limit 48] [--max-new-tokens 64] [--threads 2]

The model is random-initialised but shaped like a small real one (Llama, hidden 256, 4 layers, 8 heads,
2 KV heads, the tiny byte-level BPE tokenizer of the demo; --hidden/--layers change it); the questions
are the first --limit of the real MedQA test file (../shared/data), prompted as lm-eval's
`medqa_4options` prompts them. Both sides decode greedily (sampling would make the texts differ by
seed, not by code) with the same stop string and token budget and the same batch size. Each text is
read by the same regex on each side: ours with runner.scoring.extract, the harness's with its own
RegexFilter; `same texts` and `same answers` count agreement. A random model writes nonsense, so most
answers are the fallback on both sides: the texts are the stronger check. Each side runs --repeats
times, alternating, and its fastest run counts. Figures also go to bench/out/generative_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain file: make `runner` importable without an install
OUT = ROOT / "bench" / "out"
LOG = OUT / "generative_speed.log"
DATA = ROOT.parent / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PATTERN = r"answer is \(?([ABCD])\)?"  # lm-eval's MMLU-Pro-style extraction, the same on both sides
STOP = "\n\n"
TARGET_RATIO = 2.0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def build_model(folder: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    """A random Llama of a small real model's proportions and the demo tokenizer, saved as HF folders."""
    from runner.models.tiny import build_model as save_model
    from runner.models.tiny import build_tokenizer
    from runner.rows import demo
    from runner.spec.typed import ModelInit

    init = ModelInit(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_layers=layers, num_heads=8,
                     num_kv_heads=2, initializer_range=0.02)
    weights, tokenizer = folder / "weights", folder / "tokenizer"
    build_tokenizer(init.vocab_size, demo.corpus(), tokenizer)
    save_model(init, init.vocab_size, 0, weights)
    return weights, tokenizer


def questions(limit: int) -> list[str]:
    """lm-eval's medqa_4options prompts of the first `limit` real MedQA test questions."""
    from lm_eval.tasks.medqa import preprocess_medqa

    out = []
    with open(DATA / "medqa" / "test.jsonl", encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            doc = {"sent1": row["question"], **{f"ending{i}": row["options"][k] for i, k in enumerate("ABCD")}}
            out.append(preprocess_medqa.doc_to_text(doc))
            if len(out) == limit:
                break
    return out


class Clock:
    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_harness(lm: Any, prompts: list[str], max_new: int) -> dict[str, Any]:
    from lm_eval.api.instance import Instance
    from lm_eval.filters.extraction import RegexFilter

    kwargs = {"until": [STOP], "max_gen_toks": max_new, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(p, kwargs), idx=0) for p in prompts]
    with quiet(), Clock() as clock:
        texts = lm.generate_until(requests, disable_tqdm=True)
        answers = [r[0] for r in RegexFilter(regex_pattern=PATTERN).apply([[t] for t in texts], [{}] * len(texts))]
    return {"seconds": clock.wall, "cpu": clock.cpu, "texts": texts, "answers": answers}


def run_runner(model: Any, tok: Any, prompts: list[str], max_new: int, batch_size: int, work: Path) -> dict[str, Any]:
    from runner.scoring.extract import Step, apply
    from runner.stages.eval.sampling import Budget, sample_texts

    budget = Budget(max_new_tokens=max_new, samples=1, temperature=0.0, top_p=1.0, thinking_budget=None,
                    think_end="</think>", stop=(STOP,), seed=0, batch_size=batch_size)
    checkpoint = work / f"gen-{time.monotonic_ns()}.jsonl"  # a fresh one: every run generates everything
    with Clock() as clock:
        ids = [tok(p).input_ids[-(1024 - max_new):] for p in prompts]  # as HFLM left-truncates to max_length
        texts = [t[0] for t in sample_texts(model, tok, ids, budget, checkpoint, lambda _: None)]
        answers = [apply([Step("regex", regex_pattern=PATTERN)], [t])[0] for t in texts]
    return {"seconds": clock.wall, "cpu": clock.cpu, "texts": texts, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=48, help="MedQA questions")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="token budget of each answer, both sides")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch, both sides")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (printed); 0 is torch's choice")
    args = parser.parse_args()
    for var, value in OFFLINE.items():
        os.environ.setdefault(var, value)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="generative_speed_"))
    with quiet():
        weights, tokenizer = build_model(work / "model", args.hidden, args.layers)
        tok = AutoTokenizer.from_pretrained(str(tokenizer))
        model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32).eval()
        lm = HFLM(pretrained=str(weights), tokenizer=str(tokenizer), device="cpu", batch_size=args.batch_size,
                  dtype="float32", max_length=1024)
    prompts = questions(args.limit)
    lengths = sorted(len(tok(p).input_ids) for p in prompts)
    print(f"model: random Llama hidden {args.hidden}, {args.layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters | {len(prompts)} MedQA questions, "
          f"prompt tokens {lengths[0]}-{lengths[-1]} | {args.max_new_tokens} new tokens, greedy, stop {STOP!r} | "
          f"batch {args.batch_size} | {torch.get_num_threads()} torch threads | lm-eval {_version('lm_eval')}")
    runs: dict[str, list[dict[str, Any]]] = {"harness": [], "runner": []}
    for _ in range(args.repeats):
        runs["harness"].append(run_harness(lm, prompts, args.max_new_tokens))
        runs["runner"].append(run_runner(model, tok, prompts, args.max_new_tokens, args.batch_size, work))
    ours, theirs = runs["runner"][0], runs["harness"][0]
    best = {side: {k: min(r[k] for r in rs) for k in ("seconds", "cpu")} for side, rs in runs.items()}
    n = len(prompts)
    same_texts = sum(a.strip() == b.strip() for a, b in zip(ours["texts"], theirs["texts"]))
    same_answers = sum(a == b for a, b in zip(ours["answers"], theirs["answers"]))
    row = {"n": n, "runner_qps": n / best["runner"]["seconds"], "harness_qps": n / best["harness"]["seconds"],
           "ratio_wall": best["harness"]["seconds"] / best["runner"]["seconds"],
           "ratio_cpu": best["harness"]["cpu"] / best["runner"]["cpu"], "same_texts": same_texts,
           "same_answers": same_answers, "seconds": best}
    print(f"{'side':<28}{'questions/s':>12}{'wall s':>9}{'cpu s':>9}")
    print(f"{'runner (sampling.py)':<28}{row['runner_qps']:>12.2f}{best['runner']['seconds']:>9.1f}"
          f"{best['runner']['cpu']:>9.1f}")
    print(f"{'lm-eval HFLM.generate_until':<28}{row['harness_qps']:>12.2f}{best['harness']['seconds']:>9.1f}"
          f"{best['harness']['cpu']:>9.1f}")
    print(f"ratio {row['ratio_wall']:.2f}x wall, {row['ratio_cpu']:.2f}x CPU (target >= {TARGET_RATIO:g}x: "
          f"{'met' if row['ratio_wall'] >= TARGET_RATIO else 'NOT met'}); same texts {same_texts}/{n}; "
          f"same extracted answers {same_answers}/{n}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "generative_speed.json").write_text(json.dumps(
        {"threads": torch.get_num_threads(), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
         "hidden": args.hidden, "layers": args.layers, "lm_eval": _version("lm_eval"), "repeats": args.repeats,
         **row}, indent=1) + "\n")


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
