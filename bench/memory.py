#!/usr/bin/env python
"""Predicted vs measured peak memory of a training step, on random-initialised Llamas.

    .venv/bin/python bench/memory.py [--sizes tiny,medium] [--json OUT] [--png OUT] [--allocator live|default]
                                     [--packed] [--attention sdpa|eager]

Each size runs in its own process: build the model, load it the way the train stage does (4-bit on
CPU here; CUDA when present), wrap it in LoRA, count what the loaded model holds from its tensors,
train a few steps on a padded batch, and compare held + the peak the steps add with runner.machine.memory's
estimate of weights, LoRA state, activations and logits. With `--packed`, the batch is what the
train stage's PackCollator makes of short examples under train.packing (rows of up to seq_len tokens,
each holding several examples); `--attention eager` loads the model with eager attention, whose
(heads, T, T) scores are quadratic in a row's width.

On CUDA the peak is torch.cuda.max_memory_allocated (live tensors; the allocator's cache is not
counted). On CPU it is the peak RSS, and by default (`--allocator live`) the children run with a
fixed glibc mmap threshold, so every freed tensor goes back to the system and RSS follows live
memory the way max_memory_allocated does. With glibc's own dynamic threshold (`--allocator
default`) freed activations stay in the heap for reuse, and the RSS peak of the first step is
higher than what is live: that column shows how much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name: (hidden, layers, intermediate, heads, kv_heads, vocab, micro_batch, seq_len)
SIZES = {
    "tiny": (64, 2, 128, 4, 2, 2048, 8, 128),
    "medium": (768, 12, 2048, 12, 4, 32000, 2, 256),  # ~130M parameters
    "large": (1024, 16, 2816, 16, 8, 32000, 2, 256),  # ~270M parameters
    # long rows, many heads, a small vocabulary: attention's share of the peak is large (eager, packing)
    "wide": (128, 2, 256, 8, 2, 512, 4, 512),
}


# glibc: allocations above this size are mmapped and given back on free (a fixed value turns off the
# dynamic threshold, which otherwise rises to the largest freed block and keeps such blocks in the heap)
LIVE = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def child(size: str, checkpointing: bool, quantization: str, packed: bool = False,
          attention: str = "sdpa") -> dict[str, object]:
    import dataclasses
    import gc

    import torch

    from runner.machine.memory import Shape, estimate, setup_for
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base, torch_dtype
    from runner.models.tiny import build_model
    from runner.spec.typed import ModelInit, parse_spec
    from runner.stages.train.trainer import attach_lora

    hidden, layers, inter, heads, kv, vocab, micro, seq = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "weights").mkdir()
        init = ModelInit(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                         num_heads=heads, num_kv_heads=kv, max_position_embeddings=2048)
        build_model(init, vocab, 0, folder / "weights")
        gc.collect()
        (folder / "model.json").write_text(json.dumps({"source": "init"}))
        (folder / "t.jsonl").write_text("{}\n")
        spec = parse_spec(f"model: {{source: init, quantization: {quantization}}}\n"
                          f"data: {{train: {{path: t.jsonl}}, max_length: {seq}}}\ntrain: {{packing: {str(packed).lower()}}}\n",
                          base_dir=folder)
        profile = dataclasses.replace(resolve_profile(spec, probe_machine()), gradient_checkpointing=checkpointing,
                                      attn_implementation=attention)
        cuda = profile.device == "cuda"
        model = attach_lora(load_base(folder, spec, profile), spec, checkpointing)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        device = "cuda" if cuda else "cpu"
        batch, examples, longest = _batch(vocab, micro, seq, packed, device)
        # Mixed precision as the Trainer runs it (bf16 / fp16 autocast on CUDA)
        autocast = torch.autocast("cuda", dtype=torch_dtype(profile.dtype), enabled=cuda and profile.dtype != "fp32")
        with torch.no_grad():  # page in the mmapped checkpoint: its first touch is not training's memory
            for t in model.parameters():
                t.view(-1)[:: 1024].sum()
        # What the loaded model holds: every parameter and buffer, counted from the tensors themselves
        # (on CPU part of it is the mmapped checkpoint, which RSS counts as file pages).
        held = sum(_nbytes(t) for t in (*model.parameters(), *model.buffers()))
        gc.collect()
        if cuda:  # what the CUDA allocator holds for tensors (the context is not counted)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:  # reset the peak (VmHWM) to the current RSS: what training adds is the peak above it
            Path("/proc/self/clear_refs").write_text("5")
            before = _status("VmRSS")
        for _ in range(2):
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        added = (torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")) - before
        config = json.loads((folder / "weights" / "config.json").read_text())
    shape = Shape.from_config(config)
    # the train stage's own setup, with this step's batch and torch's fp32 AdamW
    setup = setup_for(spec, profile, longest)
    est = estimate(shape, dataclasses.replace(setup, micro_batch=examples, eight_bit_optimizer=False))
    held_predicted = est.weights + est.lora // 4  # LoRA: weights, not their gradients and Adam moments (fp32 each)
    return {"size": size, "parameters": shape.parameters(), "checkpointing": checkpointing, "quantization": quantization,
            "predicted_gib": est.total / 2**30, "measured_gib": (held + added) / 2**30,
            "predicted_held_gib": held_predicted / 2**30, "measured_held_gib": held / 2**30,
            "predicted_added_gib": (est.total - held_predicted) / 2**30, "measured_added_gib": added / 2**30,
            "estimate": est.describe(), "threads": os.cpu_count(), "device": profile.device,
            "allocator": "live" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default",
            "packed": packed, "attention": attention, "examples": examples, "longest": longest,
            "rows": int(batch["input_ids"].shape[0]), "width": int(batch["input_ids"].shape[1])}


def _batch(vocab: int, micro: int, seq: int, packed: bool, device: str) -> tuple[dict[str, Any], int, int]:
    """(model inputs, examples, longest example). Padded: `micro` rows of `seq` tokens, the last a quarter
    shorter, as PadCollator makes them. Packed: 3 x `micro` examples of about seq / 3 tokens, which the
    train stage's PackCollator packs into `micro` rows of exactly `seq` tokens (data.max_length): the
    widest rows packing makes, which the estimate counts on (narrower rows cost more positions here)."""
    import torch

    from runner.stages.train.batches import PackCollator

    if not packed:
        ids = torch.randint(10, vocab, (micro, seq), device=device)
        mask = torch.ones_like(ids)
        mask[-1, seq - seq // 4:] = 0
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}, micro, seq
    third = -(-seq // 3)
    lengths = [third, third, seq - 2 * third] * micro
    tokens = [torch.randint(10, vocab, (n,)).tolist() for n in lengths]
    batch = PackCollator(0, seq)([{"input_ids": t, "labels": t} for t in tokens])
    return {k: v.to(device) for k, v in batch.items()}, len(lengths), max(lengths)


def _nbytes(tensor: object) -> int:
    """A tensor's bytes, and those of its 4-bit quantization constants (absmax, nested absmax, codes)."""
    import torch

    total = tensor.numel() * tensor.element_size()  # type: ignore[attr-defined]
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code, getattr(state, "offset", None))
                     if isinstance(t, torch.Tensor))
        state = getattr(state, "state2", None)
    return int(total)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "out" / "memory.png",
                        help="the comparison as a picture (default bench/out/memory.png)")
    parser.add_argument("--allocator", choices=("live", "default"), default="live",
                        help="CPU: live (RSS follows live tensors) or glibc's default (freed blocks kept)")
    parser.add_argument("--packed", action="store_true", help="train on rows packed as train.packing packs them")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa", help="the attention implementation")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "CHECKPOINTING", "QUANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1", args.child[2], args.packed, args.attention)))
        return
    env = {**os.environ, **LIVE} if args.allocator == "live" else {k: v for k, v in os.environ.items() if k not in LIVE}
    rows = []
    print(f"{'size':<7} {'params':>8} {'ckpt':>5} {'quant':>5} {'predicted':>10} {'measured':>9} {'ratio':>6}"
          f"   model held / training added, predicted : measured (GiB)   [{args.allocator} allocator]")
    for size in args.sizes.split(","):
        for checkpointing in (False, True):
            flags = ["--attention", args.attention] + (["--packed"] if args.packed else [])
            out = subprocess.run([sys.executable, __file__, "--child", size, "1" if checkpointing else "0", "nf4", *flags],
                                 capture_output=True, text=True, check=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:<7} {row['parameters'] / 1e6:>7.0f}M {checkpointing!s:>5} {row['quantization']:>5} "
                  f"{row['predicted_gib']:>8.3f} G {row['measured_gib']:>7.3f} G {row['predicted_gib'] / row['measured_gib']:>6.3f}"
                  f"   {row['predicted_held_gib']:.3f} : {row['measured_held_gib']:.3f} / "
                  f"{row['predicted_added_gib']:.3f} : {row['measured_added_gib']:.3f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.png:
        plot(rows, args.png, args.allocator)
        print(f"picture: {args.png}")


def plot(rows: list[dict[str, object]], path: Path, allocator: str) -> None:
    """Predicted and measured side by side for each model and checkpointing setting, each bar split
    into what the loaded model holds and what training adds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, row in enumerate(rows):
        for offset, kind, shade in ((-0.2, "predicted", "#9ecae1"), (0.2, "measured", "#3182bd")):
            held, added = float(row[f"{kind}_held_gib"]), float(row[f"{kind}_added_gib"])  # type: ignore[arg-type]
            ax.bar(i + offset, held, 0.38, color="#bdbdbd", edgecolor="white")
            ax.bar(i + offset, added, 0.38, bottom=held, color=shade, edgecolor="white",
                   label=f"{kind}: training adds" if i == 0 else None)
        ratio = float(row["predicted_gib"]) / float(row["measured_gib"])  # type: ignore[arg-type]
        ax.text(i, max(float(row["predicted_gib"]), float(row["measured_gib"])), f"{ratio:.2f}x",  # type: ignore[arg-type]
                ha="center", va="bottom", fontsize=9)
    ax.bar(0, 0, color="#bdbdbd", label="the loaded model holds")
    ax.set_xticks(range(len(rows)), [f"{r['size']}\n{'checkpointing' if r['checkpointing'] else 'no checkpointing'}"
                                     for r in rows], fontsize=8)
    ax.set(ylabel="GiB", title=f"training peak: estimate (left) vs measured (right)\n"
                               f"{rows[0]['device']}, {allocator} allocator; labels: estimate / measured")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
