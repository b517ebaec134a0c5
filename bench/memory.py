#!/usr/bin/env python
"""Predicted vs measured peak memory of a training step, on random-initialised Llamas.

    .venv/bin/python bench/memory.py [--sizes tiny,medium] [--json OUT]

Each size runs in its own process: build the model, load it the way the train stage does (4-bit
on CPU here; CUDA when present), wrap it in LoRA, reset the peak-RSS counter, train a few steps,
and compare the peak with runner.memory's estimate. On CPU the estimate is added to the process's
resident memory just before training (torch and its libraries), since that is what RSS counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name: (hidden, layers, intermediate, heads, kv_heads, vocab, micro_batch, seq_len)
SIZES = {
    "tiny": (64, 2, 128, 4, 2, 2048, 8, 128),
    "medium": (768, 12, 2048, 12, 4, 32000, 2, 256),  # ~130M parameters
    "large": (1024, 16, 2816, 16, 8, 32000, 2, 256),  # ~270M parameters
}


def child(size: str, checkpointing: bool, quantization: str) -> dict[str, float]:
    import dataclasses
    import os

    import torch

    from runner.memory import Setup, Shape, estimate
    from runner.profile import probe_machine, resolve_profile
    from runner.spec import ModelInit, parse_spec
    from runner.stages.loading import load_base
    from runner.stages.tiny import build_model
    from runner.stages.train import _lora_model

    hidden, layers, inter, heads, kv, vocab, micro, seq = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "weights").mkdir()
        init = ModelInit(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                         num_heads=heads, num_kv_heads=kv, max_position_embeddings=2048)
        build_model(init, vocab, 0, folder / "weights")
        (folder / "model.json").write_text(json.dumps({"source": "init"}))
        (folder / "t.jsonl").write_text("{}\n")
        spec = parse_spec(f"model: {{source: init, quantization: {quantization}}}\ndata: {{train: {{path: t.jsonl}}}}\n",
                          base_dir=folder)
        profile = dataclasses.replace(resolve_profile(spec, probe_machine()), gradient_checkpointing=checkpointing)
        model = _lora_model(load_base(folder, spec, profile), spec, checkpointing)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        cuda = profile.device == "cuda"
        ids = torch.randint(10, vocab, (micro, seq), device="cuda" if cuda else "cpu")
        if cuda:  # what the CUDA allocator holds for tensors (the context is not counted)
            torch.cuda.synchronize()
            rss_before = 0
            torch.cuda.reset_peak_memory_stats()
        else:  # resident memory, torch's own libraries included
            rss_before = _status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")
        config = json.loads((folder / "weights" / "config.json").read_text())
    shape = Shape.from_config(config)
    setup = Setup(quantization=profile.quantization, double_quant=True, compute_bytes=4 if profile.dtype == "fp32" else 2,
                  lora_r=spec.lora.r, lora_dropout=spec.lora.dropout, targets="all-linear",
                  fused_attention=profile.device == "cuda", eight_bit_optimizer=False, micro_batch=micro,
                  seq_len=seq, checkpointing=checkpointing)
    est = estimate(shape, setup)
    return {"size": size, "parameters": shape.parameters(), "checkpointing": checkpointing, "quantization": quantization,
            "rss_before_gib": rss_before / 2**30, "predicted_gib": (rss_before + est.total) / 2**30,
            "measured_gib": peak / 2**30, "predicted_training_gib": est.total / 2**30,
            "measured_training_gib": (peak - rss_before) / 2**30, "estimate": est.describe(), "threads": os.cpu_count(),
            "device": profile.device}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "CHECKPOINTING", "QUANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1", args.child[2])))
        return
    rows = []
    print(f"{'size':<7} {'params':>8} {'ckpt':>5} {'quant':>5} {'predicted':>10} {'measured':>9} {'ratio':>6}   training part: predicted / measured")
    for size in args.sizes.split(","):
        for checkpointing in (False, True):
            out = subprocess.run([sys.executable, __file__, "--child", size, "1" if checkpointing else "0", "nf4"],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:<7} {row['parameters'] / 1e6:>7.0f}M {str(checkpointing):>5} {row['quantization']:>5} "
                  f"{row['predicted_gib']:>8.3f} G {row['measured_gib']:>7.3f} G {row['predicted_gib'] / row['measured_gib']:>6.3f}"
                  f"   {row['predicted_training_gib']:.3f} / {row['measured_training_gib']:.3f} GiB", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
