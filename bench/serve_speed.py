#!/usr/bin/env python
"""Tokens/s and time to first token of `runner serve` against one-at-a-time `generate` calls, on the
same set of concurrent greedy requests over the base and two adapters, and whether the answers match.

    .venv/bin/python bench/serve_speed.py [--store DIR] [--per-model 8] [--max-tokens 32]

The store (a temporary folder unless --store) gets two short training runs of the smoke model
(specs/smoke.yaml's tiny Llama, 4-bit), differing only in learning rate: one base, two adapters. The
server side is a real `python -m runner serve` process, sent every request at once from as many
threads, streamed so the first token's arrival is seen. The loop side is the same process setup the
server's worker has (base loaded as eval loads it, both adapters on one PeftModel, the profile's
threads) answering the requests one after another, each with its own `generate`. Both sides are
warmed first (models loaded, one request each); time to first token counts from the moment the whole
set is sent, so the loop's includes the wait behind earlier requests, as a client would see it.
Library output goes to bench/out/serve_speed.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain file: make `runner` importable without an install
OUT = ROOT / "bench" / "out"
LOG = OUT / "serve_speed.log"
DEMO = ROOT / "data" / "demo"
TARGET_RATIO = 3.0


def bench_spec(name: str, learning_rate: str) -> str:
    """The smoke model (same init, so both runs share one model stage: one base), a few steps."""
    return f"""
name: {name}
seed: 42
model:
  source: init
  init: {{hidden_size: 64, intermediate_size: 128, num_layers: 2, initializer_range: 0.1}}
  quantization: nf4
data:
  train: {{path: {DEMO / "medmc_train.jsonl"}}}
  format: multiple_choice
  template: plain
  max_rows: 64
  max_length: 256
lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}}
train: {{epochs: 1, learning_rate: {learning_rate}, batch_size: 16, max_steps: 4, save_steps: 40}}
eval:
  benchmarks: [{{name: demo, path: {DEMO / "medmc_test.jsonl"}, limit: 4}}]
  generation: {{max_new_tokens: 8}}
"""


def train_store(store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    for name, lr in (("bench-a", "3e-3"), ("bench-b", "1e-2")):
        spec = store.parent / f"{name}.yaml"
        spec.write_text(bench_spec(name, lr), "utf-8")
        with open(LOG, "a") as log:
            done = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store)],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"training {name} failed: see {LOG}")


def requests(models: list[str], per_model: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (DEMO / "medmc_test.jsonl").read_text("utf-8").splitlines()]
    questions = [r["question"] for r in rows[:per_model]]
    return [(m, q) for q in questions for m in models]  # interleaved: each batch mixes the three


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    log = open(LOG, "ab")  # noqa: SIM115  (the server writes to it until it is stopped)
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(store), "--port", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"runner serve exited with {process.returncode}: see {LOG}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    sys.exit("runner serve did not answer within 120 s")


def stream_one(client: Any, model: str, question: str, max_tokens: int, t0: float) -> dict[str, Any]:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, first, tokens = "", None, 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - t0
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"text": text, "ttft": first if first is not None else time.perf_counter() - t0, "tokens": tokens}


def server_side(store: Path, per_model: int, max_tokens: int) -> tuple[list[str], list[dict[str, Any]], float]:
    import openai

    process, url = start_server(store)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        cards = client.models.list().data
        models = [c.id for c in cards if getattr(c, "parent", None) is None] + sorted(
            c.id for c in cards if getattr(c, "parent", None) is not None)
        asks = requests(models, per_model)
        for model in models:  # warm: base and adapters loaded before the clock starts
            stream_one(client, model, asks[0][1], 2, time.perf_counter())
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(asks)) as pool:
            out = list(pool.map(lambda a: stream_one(client, a[0], a[1], max_tokens, t0), asks))
        return models, out, time.perf_counter() - t0
    finally:
        process.terminate()
        process.wait(timeout=30)


def load_like_the_server(store: Path, models: list[str]) -> tuple[Any, Any, dict[str, Any], Any]:
    """The worker's setup: the registry's entries, the base as eval loads it, both adapters on it."""
    from peft import PeftModel

    from runner.models.loading import load_base, load_tokenizer
    from runner.serve.registry import Registry

    entries = Registry(store).scan()
    base = entries[models[0]]
    model = load_base(base.model_dir, base.spec, base.profile)
    first, *others = models[1:]
    model = PeftModel.from_pretrained(model, str(entries[first].adapter_dir), adapter_name=first)
    for name in others:
        model.load_adapter(str(entries[name].adapter_dir), adapter_name=name)
    model.eval()
    return model, load_tokenizer(base.model_dir), entries, base.profile


def generate_one(model: Any, tok: Any, entry: Any, adapter: str, question: str, max_tokens: int,
                 t0: float) -> dict[str, Any]:
    import torch

    from runner.serve.engine import _eos_ids
    from runner.serve.prompts import prompt_ids, render_chat

    ids = torch.tensor([prompt_ids(render_chat([{"role": "user", "content": question}], tok, entry.spec), tok)])
    first: list[float] = []

    class First:  # the streamer sees the prompt, then each new token
        def put(self, value: Any) -> None:
            first.append(time.perf_counter() - t0)

        def end(self) -> None:
            pass

    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=sorted(_eos_ids(model, tok)), streamer=First(),
                             adapter_names=[adapter])
    new = out[0, ids.shape[1]:].tolist()
    eos = _eos_ids(model, tok)
    count = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    return {"text": tok.decode(new[:count], skip_special_tokens=True).strip(), "ttft": first[1], "tokens": count}


def loop_side(store: Path, models: list[str], per_model: int, max_tokens: int) -> tuple[list[dict[str, Any]], float, int]:
    from runner.models.loading import cpu_threads

    with open(LOG, "a") as log, contextlib.redirect_stderr(log):  # loading's progress bars and notices
        model, tok, entries, profile = load_like_the_server(store, models)
    asks = requests(models, per_model)
    with cpu_threads(profile.threads):
        for name in models:  # warm, as the server side was
            generate_one(model, tok, entries[name], "__base__" if name == models[0] else name, asks[0][1], 2, 0.0)
        t0 = time.perf_counter()
        out = [generate_one(model, tok, entries[m], "__base__" if m == models[0] else m, q, max_tokens, t0)
               for m, q in asks]
    return out, time.perf_counter() - t0, profile.threads


def figures(label: str, rows: list[dict[str, Any]], wall: float) -> dict[str, float]:
    tokens = sum(r["tokens"] for r in rows)
    ttft = [r["ttft"] for r in rows]
    found = {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "ttft_median_s": statistics.median(ttft),
             "ttft_max_s": max(ttft)}
    print(f"{label:<22} {tokens:>6} tokens in {wall:6.2f} s = {found['tok_s']:7.1f} tok/s   "
          f"time to first token: median {found['ttft_median_s']:.3f} s, max {found['ttft_max_s']:.3f} s")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="a store to reuse (trained into when it has no runs)")
    parser.add_argument("--per-model", type=int, default=8, help="requests per model (base and two adapters)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    LOG.write_text("")
    store = args.store or Path(tempfile.mkdtemp(prefix="serve-speed-")) / "store"
    if not (store / "runs").is_dir():
        train_store(store)
    models, served, served_wall = server_side(store, args.per_model, args.max_tokens)
    looped, loop_wall, threads = loop_side(store, models, args.per_model, args.max_tokens)
    print(f"models: {', '.join(models)}; {len(served)} greedy requests of up to {args.max_tokens} tokens; "
          f"torch threads: {threads} (of {os.cpu_count()} CPUs)")
    server = figures("server (concurrent)", served, served_wall)
    loop = figures("generate one at a time", looped, loop_wall)
    same = sum(s["text"] == g["text"] for s, g in zip(served, looped))
    ratio = server["tok_s"] / loop["tok_s"]
    print(f"ratio (server / loop tok/s): {ratio:.2f}x (goal >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    print(f"answers identical: {same}/{len(served)}" + ("" if same == len(served) else "  <- DIFFER"))
    (OUT / "serve_speed.json").write_text(json.dumps({"server": server, "loop": loop, "ratio": ratio,
                                                      "threads": threads, "identical": same, "of": len(served)},
                                                     indent=1))


if __name__ == "__main__":
    main()
