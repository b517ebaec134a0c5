"""Sharded QLoRA on two CUDA GPUs: DeepSpeed ZeRO-2/3 with a 4-bit base (stored in the compute dtype,
bf16, as PEFT's ZeRO-3 recipe asks), beside test_gpu.py's FSDP run. CI has no GPU: these skip there;
run them on a machine with two GPUs and the `deepspeed` extra, with `pytest -m gpu`. On CPU the same
configurations run in tests/integration/test_sharding.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import TINY, only_artifact, runner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_qlora_over_two_gpus_writes_one_whole_adapter(stage: str, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    spec = tmp_path / f"{stage}.yaml"
    spec.write_text(TINY.replace("seed: 7", f"seed: 7\nhardware: {{processes: 2, distributed: {stage}}}"))
    store = tmp_path / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "export")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    name = {"zero2": "ZeRO-2", "zero3": "ZeRO-3"}[stage]
    assert f"train: launching 2 processes with accelerate (DeepSpeed {name})" in done.stdout
    train = only_artifact(store, "train")
    summary = json.loads((train / "summary.json").read_text())
    assert summary["world"]["sharding"] == stage and summary["world"]["world_size"] == 2
    assert summary["world"]["backend"] == "nccl" and summary["train_loss_last"] < summary["train_loss_first"]
    from safetensors.torch import load_file

    adapter = load_file(str(train / "adapter" / "adapter_model.safetensors"))
    # ZeRO-3 gathers the partitioned weights on save: every tensor whole, none an empty partition
    assert adapter and all(t.numel() > 0 and t.abs().sum() > 0 for n, t in adapter.items() if "lora_A" in n)
