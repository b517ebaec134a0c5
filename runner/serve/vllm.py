"""`runner serve --engine vllm`: generation handed to vLLM, the existing engine for GPU throughput
(continuous batching, paged attention), as `vllm serve BASE --enable-lora --lora-modules name=path ...`
in a subprocess. Our own continuous-batching engine is not written on purpose.

The command is built by a pure function from the store's registry entries and the adapters' ranks, so
it is tested where vLLM cannot run. The API key travels in VLLM_API_KEY, never on the command line
(where `ps` shows it to every user of the machine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from runner.serve.registry import Entry, Registry

# vLLM takes only these as --max-lora-rank (its MaxLoRARanks); the store's largest rank is rounded up.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmError(Exception):
    """Why vLLM cannot serve here, in one line that says what to do."""


def adapter_rank(adapter_dir: Path) -> int:
    """The largest rank in an adapter's adapter_config.json (`r`, or a `rank_pattern` override)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text("utf-8"))
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def max_lora_rank(ranks: list[int]) -> int:
    largest = max(ranks, default=8)
    fits = [r for r in VLLM_RANKS if r >= largest]
    if not fits:
        raise VllmError(f"an adapter has rank {largest}; vLLM serves ranks up to {VLLM_RANKS[-1]}: use "
                        "--engine runner")
    return fits[0]


def vllm_command(base: Entry, adapters: list[tuple[Entry, int]], host: str, port: int,
                 vllm: str = "vllm") -> list[str]:
    """`vllm serve` for one base and its adapters (entry, rank): the base under our id, each adapter
    under its /v1/models id, so a client sees the same names with either engine."""
    weights = _local_weights(base.model_dir)
    if weights is not None:
        source = [str(weights)]
    else:
        hub_id, revision = _hub(base.model_dir)
        source = [hub_id, "--revision", revision]  # the exact commit the model stage recorded
    command = [vllm, "serve", *source, "--served-model-name", base.id, "--tokenizer",
               str(base.model_dir / "tokenizer"), "--host", host, "--port", str(port)]
    if base.profile.quantization != "none":
        command += ["--quantization", "bitsandbytes"]  # 4-bit, as the adapters were trained (and eval loads)
    if adapters:
        command += ["--enable-lora", "--max-lora-rank", str(max_lora_rank([r for _, r in adapters])),
                    # vLLM's default of 1 would put one adapter per batch: every adapter may share one
                    "--max-loras", str(len(adapters)), "--lora-modules",
                    *(f"{entry.id}={entry.adapter_dir}" for entry, _ in sorted(adapters, key=lambda a: a[0].id))]
    return command


def _local_weights(model_dir: Path) -> Path | None:
    from runner.core.plan import local_weights

    return local_weights(model_dir)


def _hub(model_dir: Path) -> tuple[str, str]:
    info = json.loads((model_dir / "model.json").read_text("utf-8"))
    return str(info["id"]), str(info.get("revision") or "main")


def plan(store: Path, host: str, port: int, base_id: str | None = None) -> list[str]:
    """The command for the store: its one base (or `base_id`), every adapter on it, the largest rank."""
    entries = Registry(store).scan().values()
    bases = [e for e in entries if e.kind == "base" and base_id in (None, e.id)]
    if len(bases) != 1:
        names = ", ".join(sorted(e.id for e in entries if e.kind == "base")) or "none"
        raise VllmError(f"vLLM serves one base model; the store has {len(bases)} that fit (bases: {names}): "
                        "serve one store per base, or use --engine runner")
    adapters = [(e, adapter_rank(e.adapter_dir)) for e in entries
                if e.kind == "adapter" and e.parent == bases[0].id and e.adapter_dir is not None]
    return vllm_command(bases[0], adapters, host, port)


def check_vllm() -> None:
    """vLLM needs a CUDA GPU and the vllm package; say what to do when either is missing."""
    vllm = shutil.which("vllm")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda or vllm is None:
        missing = " and ".join(m for m, ok in (("a CUDA GPU", cuda), ("vllm (pip install vllm)", vllm)) if not ok)
        raise VllmError(f"--engine vllm needs {missing}: use the CUDA image with vllm installed, or drop "
                        "--engine vllm to serve with the built-in engine")


def serve_vllm(store: Path, host: str, port: int, api_key: str | None) -> int:
    """Run vLLM in the foreground until it exits (Ctrl-C reaches it too: same process group)."""
    check_vllm()
    command = plan(store, host, port)
    env = dict(os.environ) | ({"VLLM_API_KEY": api_key} if api_key else {})
    print("[serve] " + " ".join(command), flush=True)
    return subprocess.call(command, env=env)
