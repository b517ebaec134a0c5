#!/usr/bin/env python
"""Peak memory of the data stage on a large JSONL against a small one: rows stream, so it should not grow.

    .venv/bin/python bench/data_memory.py [--gib 2] [--small-mib 8] [--keep DIR]

Writes two JSONL files of multiple-choice rows (MedQA-shaped, every question different) into a temp
folder: one of --gib GiB and one of --small-mib MiB; builds the tiny demo model once; then runs
`runner run SPEC --only data` on each in its own process (one thread) and prints the peak RSS of
each (from wait4, that process alone), the ratio (target: within 1.5x) and rows/s. The files are
deleted afterwards unless --keep names a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = """
name: data-memory
seed: 1
model:
  source: init
  init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}
data: {{train: {{path: {path}}}, template: plain, max_length: 2048}}
"""
WORDS = ["patient", "presents", "with", "fever", "cough", "dyspnea", "chest", "pain", "history", "of", "diabetes", "hypertension", "smoking", "examination", "shows", "tachycardia", "crackles", "laboratory", "studies", "reveal", "elevated", "white", "count"]


def write_rows(path: Path, size: int) -> int:
    """MedQA-shaped rows until the file holds `size` bytes; returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        while handle.tell() < size:
            words = " ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(300 + n % 100))
            row = {"question": f"Case {n}: a {20 + n % 60}-year-old {words}. What is the diagnosis?",
                   "options": {"A": f"Pneumonia {n % 13}", "B": "Asthma", "C": "Heart failure", "D": "Embolism"},
                   "answer_idx": "ABCD"[n % 4]}
            handle.write(json.dumps(row) + "\n")
            n += 1
    return n


def run_data(spec: Path, store: Path, env: dict[str, str]) -> tuple[int, float]:
    """(peak RSS in bytes of the `runner run --only data` process, seconds)."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--only", "data"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"data stage failed on {spec}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return usage.ru_maxrss * 1024, time.time() - started  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the large file in GiB")
    parser.add_argument("--small-mib", type=float, default=8.0, help="size of the small file in MiB")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="data-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        results = {}
        for label, size in (("small", int(args.small_mib * 2**20)), ("large", int(args.gib * 2**30))):
            rows = write_rows(folder / f"{label}.jsonl", size)
            spec = folder / f"{label}.yaml"
            spec.write_text(SPEC.format(path=folder / f"{label}.jsonl"))
            store = folder / "store"
            if label == "small":  # the model once, so each measured process runs the data stage alone
                subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--only", "model"],
                               cwd=ROOT, env=env, check=True, capture_output=True)
            peak, seconds = run_data(spec, store, env)
            results[label] = (size, rows, peak, seconds)
            print(f"{label}: {size / 2**20:,.0f} MiB, {rows:,} rows: peak RSS {peak / 2**20:,.0f} MiB, "
                  f"{seconds:.0f} s ({rows / seconds:,.0f} rows/s)", flush=True)
        ratio = results["large"][2] / results["small"][2]
        print(f"threads: 1 (OMP_NUM_THREADS=1, RAYON_NUM_THREADS=1)\n"
              f"large / small peak RSS: {ratio:.2f}x for {results['large'][0] / results['small'][0]:,.0f}x the data "
              f"(target: within 1.5x) -> {'OK' if ratio <= 1.5 else 'OVER'}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
