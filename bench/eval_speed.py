#!/usr/bin/env python
"""Questions/s of the runner's scoring vs lm-evaluation-harness on the same questions and model, and
whether the per-question predictions are identical.

    .venv/bin/pip install -e ".[bench]"        # lm-eval, offline once installed
    .venv/bin/python bench/eval_speed.py [--limit 300] [--batch-size 16] [--model DIR --tokenizer DIR]

Without --model it scores the tiny model of specs/smoke.yaml (building it with `runner run --only
model` into --store when absent). The harness side is `simple_evaluate` on an `HFLM` pointed at the
same model folder, with tasks built from the harness's own `doc_to_text` functions over the local
files (MedQA, PubMedQA in ../shared/data; MedMCQA rows made from MedQA questions, since no MedMCQA
file is available offline). Both sides are timed from the rows on disk to predictions, with the model
already loaded and the harness's task index built. `ratio` compares wall time, `ratio cpu` the
process's CPU time (steadier when other work shares the machine), `ll-only cpu` our whole path
against the harness's `loglikelihood` call alone (its task setup left out). Each side runs
--repeats times, alternating, and its fastest run counts. Library output goes to
bench/out/eval_speed.log, figures to bench/out/eval_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain file: make `runner` importable without an install
OUT = ROOT / "bench" / "out"
LOG = OUT / "eval_speed.log"
DATA = ROOT.parent / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # never wait on the Hub

from runner.rows.rowfiles import read_local  # noqa: E402
from runner.scoring.benchmarks import benchmark_items  # noqa: E402  (needs sys.path)
from runner.spec.typed import Benchmark, Fields  # noqa: E402

TARGET_RATIO = 3.0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Progress bars and warnings of both libraries go to the log, not the table."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def tiny_model(store: Path) -> tuple[Path, Path]:
    found = sorted(store.glob("model/*/weights/config.json"))
    if not found:
        done = subprocess.run([sys.executable, "-m", "runner", "run", "specs/smoke.yaml", "--store", str(store),
                               "--only", "model"], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stdout + done.stderr)
        found = sorted(store.glob("model/*/weights/config.json"))
    folder = found[0].parent.parent
    return folder / "weights", folder / "tokenizer"


def medmcqa_file(folder: Path) -> Path:
    """MedMCQA-shaped rows (Hub layout, 0-based cop) made from the real MedQA questions."""
    path = folder / "medmcqa_from_medqa.jsonl"
    with open(DATA / "medqa" / "test.jsonl", encoding="utf-8") as src, open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            row = json.loads(line)
            opts = row["options"]
            out.write(json.dumps({"id": str(i), "question": row["question"], "opa": opts["A"], "opb": opts["B"],
                                  "opc": opts["C"], "opd": opts["D"], "cop": "ABCD".index(row["answer_idx"]),
                                  "subject_name": row["meta_info"]}) + "\n")
    return path


def harness_task(fmt: str, path: Path) -> Any:
    """A harness task over a local file, with the harness's own prompt function for the format."""
    from lm_eval.api.task import ConfigurableTask

    config: dict[str, Any] = {"task": f"local_{fmt}", "dataset_path": "json", "output_type": "multiple_choice",
                              "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
                              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    if fmt == "medqa":
        from lm_eval.tasks.medqa import preprocess_medqa as medqa

        def to_hf(docs: Any) -> Any:  # our rows -> the fields of GBaker/MedQA-USMLE-4-options-hf
            return docs.map(lambda d: {"sent1": d["question"], "label": "ABCD".index(d["answer_idx"]),
                                       **{f"ending{i}": d["options"][k] for i, k in enumerate("ABCD")}})

        config |= {"process_docs": to_hf, "doc_to_text": medqa.doc_to_text, "doc_to_target": medqa.doc_to_target,
                   "doc_to_choice": ["A", "B", "C", "D"]}
    elif fmt == "medmcqa":
        from lm_eval.tasks.medmcqa import utils_medmcqa

        config |= {"doc_to_text": utils_medmcqa.doc_to_text, "doc_to_target": "cop", "doc_to_choice": ["A", "B", "C", "D"]}
    else:
        from lm_eval.tasks.pubmedqa import preprocess_pubmedqa

        config |= {"doc_to_text": preprocess_pubmedqa.doc_to_text, "doc_to_target": "final_decision",
                   "doc_to_choice": ["yes", "no", "maybe"]}
    return ConfigurableTask(config=config)


class Clock:
    """Wall and CPU seconds of a block. On a shared machine CPU seconds are the steadier figure."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_harness(lm: Any, fmt: str, path: Path, limit: int, task_manager: Any = None) -> dict[str, Any]:
    import numpy as np
    from lm_eval import simple_evaluate

    inner = lm.loglikelihood
    spent = [0.0, 0.0]

    def timed(requests: Any, *args: Any, **kwargs: Any) -> Any:
        with Clock() as clock:
            out = inner(requests, *args, **kwargs)
        spent[0] += clock.wall
        spent[1] += clock.cpu
        return out

    lm.loglikelihood = timed
    with quiet(), Clock() as clock:
        out = simple_evaluate(model=lm, tasks=[harness_task(fmt, path)], limit=limit, log_samples=True,
                              bootstrap_iters=0, task_manager=task_manager)
    lm.loglikelihood = inner
    samples = sorted(out["samples"][f"local_{fmt}"], key=lambda s: s["doc_id"])
    lls = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
    return {"seconds": clock.wall, "cpu": clock.cpu, "ll_seconds": spent[0], "ll_cpu": spent[1], "lls": lls,
            "preds": [int(np.argmax(x)) for x in lls]}


def run_runner(model: Any, tok: Any, fmt: str, path: Path, limit: int, batch_size: int) -> dict[str, Any]:
    from runner.scoring.loglik import max_length_of, predictions, requests_for, score

    fields = Fields(answer_key_type="index0")
    with Clock() as clock:
        bench = Benchmark(name=fmt, format=fmt, path=str(path), fields=fields, limit=limit)  # type: ignore[arg-type]
        items, _ = benchmark_items(bench, read_local(path))
        requests = requests_for(items, tok, lambda p: p)
        logliks = score(model, requests, batch_size, tok.pad_token_id, max_length_of(model, tok))
        preds = predictions(len(items), requests, logliks)
    lls: list[list[float]] = [[] for _ in items]
    for r, ll in zip(requests, logliks):
        lls[r.item].append(ll)
    return {"seconds": clock.wall, "cpu": clock.cpu, "lls": lls, "preds": preds, "n": len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model folder (config + weights); default: the smoke spec's tiny model")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer folder (default: --model)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/evalbench"), help="where to build the tiny model")
    parser.add_argument("--limit", type=int, default=300, help="questions per benchmark")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward, both sides")
    parser.add_argument("--benchmarks", default="medqa,medmcqa,pubmedqa")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 (default) gives steady figures on a shared CPU, 0 is torch's choice")
    args = parser.parse_args()
    for var, value in OFFLINE.items():  # before the imports below: datasets reads them at import
        os.environ.setdefault(var, value)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from runner.models.loading import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    weights, tokenizer = (args.model, args.tokenizer or args.model) if args.model else tiny_model(args.store)
    tok = load_tokenizer(tokenizer.parent) if tokenizer.name == "tokenizer" else _tokenizer(tokenizer)
    with quiet():
        model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32).eval()
        lm = HFLM(pretrained=str(weights), tokenizer=str(tokenizer), device="cpu", batch_size=args.batch_size,
                  dtype="float32")
        # Built once, outside the timing: indexing the harness's thousands of task files is a fixed
        # cost of each harness run, which would flatter the ratio at small --limit.
        task_manager = TaskManager()
    tmp = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    files = {"medqa": DATA / "medqa" / "test.jsonl", "pubmedqa": DATA / "pubmedqa" / "test.jsonl",
             "medmcqa": medmcqa_file(tmp)}
    rows = []
    print(f"model {weights} | {args.limit} questions per benchmark | batch {args.batch_size} | "
          f"{torch.get_num_threads()} threads | lm-eval {_version('lm_eval')}")
    print(f"{'benchmark':<10}{'n':>5}{'runner q/s':>12}{'harness q/s':>13}{'ratio':>7}{'ratio cpu':>11}"
          f"{'ll-only cpu':>13}{'same preds':>12}{'max |dll|':>11}")
    for fmt in args.benchmarks.split(","):
        # Alternating repeats share the machine's noise (other work on a shared CPU); the fastest of
        # each side is the figure, as timeit takes it.
        runs: dict[str, list[dict[str, Any]]] = {"harness": [], "runner": []}
        for _ in range(args.repeats):
            runs["harness"].append(run_harness(lm, fmt, files[fmt], args.limit, task_manager))
            runs["runner"].append(run_runner(model, tok, fmt, files[fmt], args.limit, args.batch_size))
        harness, ours = runs["harness"][0], runs["runner"][0]
        assert all(r["preds"] == harness["preds"] for r in runs["harness"])
        assert all(r["preds"] == ours["preds"] for r in runs["runner"])
        best = {side: {k: min(r[k] for r in rs) for k in ("seconds", "cpu", "ll_seconds", "ll_cpu") if k in rs[0]}
                for side, rs in runs.items()}
        n = ours["n"]
        same = sum(a == b for a, b in zip(ours["preds"], harness["preds"]))
        dll = max(abs(a - b) for x, y in zip(ours["lls"], harness["lls"]) for a, b in zip(x, y))
        row = {"benchmark": fmt, "n": n, "runner_qps": n / best["runner"]["seconds"],
               "harness_qps": n / best["harness"]["seconds"],
               "ratio_wall": best["harness"]["seconds"] / best["runner"]["seconds"],
               "ratio_cpu": best["harness"]["cpu"] / best["runner"]["cpu"],
               "ratio_cpu_vs_harness_ll_only": best["harness"]["ll_cpu"] / best["runner"]["cpu"],
               "identical_predictions": same == n, "same": same, "max_abs_loglik_diff": dll,
               "seconds": best}
        rows.append(row)
        print(f"{fmt:<10}{n:>5}{row['runner_qps']:>12.1f}{row['harness_qps']:>13.1f}{row['ratio_wall']:>6.1f}x"
              f"{row['ratio_cpu']:>10.1f}x{row['ratio_cpu_vs_harness_ll_only']:>12.1f}x{f'{same}/{n}':>12}{dll:>11.2e}",
              flush=True)
    same_all = all(r["identical_predictions"] for r in rows)
    wall, cpu = min(r["ratio_wall"] for r in rows), min(r["ratio_cpu"] for r in rows)
    # The target is on questions/s (wall time), with identical predictions; CPU time shown beside it.
    print(f"predictions identical on every benchmark: {same_all}; lowest questions/s ratio {wall:.1f}x "
          f"(target >= {TARGET_RATIO:g}x: {'met' if same_all and wall >= TARGET_RATIO else 'NOT met'}); "
          f"lowest CPU-time ratio {cpu:.1f}x")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eval_speed.json").write_text(json.dumps({"model": str(weights), "limit": args.limit,
                                                     "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                                                     "lm_eval": _version("lm_eval"), "repeats": args.repeats, "rows": rows}, indent=1) + "\n")


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
