"""The serve tests' tiny spec: one training run whose eval answers a query, so a served answer can be
compared with the one eval wrote."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
QUERY = "Which agent is preferred as initial pharmacotherapy for chronic myeloid leukemia?"


def tiny_spec(name: str = "serve-tiny", max_steps: int | None = None) -> str:
    steps = f", max_steps: {max_steps}" if max_steps else ""
    return f"""
name: {name}
seed: 7
model:
  source: init
  init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}
  quantization: nf4
data:
  train: {{path: {DEMO / "medmc_train.jsonl"}}}
  template: plain
  max_rows: 96
  max_length: 256
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{epochs: 3, learning_rate: 3e-3, batch_size: 8, save_steps: 10{steps}}}
eval:
  benchmarks: [{{name: demo, path: {DEMO / "medmc_test.jsonl"}, limit: 4}}]
  queries: ["{QUERY}"]
  generation: {{max_new_tokens: 16}}
"""
