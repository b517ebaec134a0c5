"""Real 4-bit QLoRA on a CUDA GPU with the profile chosen automatically. CI has no GPU: these skip
there; run them on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import TINY, memory_bench, only_artifact, runner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_qlora_on_the_gpu_with_the_automatic_profile(tmp_path: Path) -> None:
    spec = tmp_path / "gpu.yaml"
    spec.write_text(TINY)
    store = tmp_path / "store"
    plan = runner("plan", str(spec), "--store", str(store))
    assert "profile: cuda" in plan.stdout and "quantization nf4" in plan.stdout, plan.stdout
    done = runner("run", str(spec), "--store", str(store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((only_artifact(store, "train") / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"]


def test_memory_estimate_against_cuda_peak_allocation(tmp_path: Path) -> None:
    for row in memory_bench("medium,large", tmp_path):
        assert row["device"] == "cuda"
        assert 0.85 <= row["predicted_gib"] / row["measured_gib"] <= 1.15, row


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_fsdp_qlora_over_two_gpus_writes_one_adapter(tmp_path: Path) -> None:
    spec = tmp_path / "fsdp.yaml"
    spec.write_text(TINY.replace("seed: 7", "seed: 7\nhardware: {processes: 2, distributed: fsdp}"))
    store = tmp_path / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "export")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train: launching 2 processes with accelerate (FSDP)" in done.stdout
    train = only_artifact(store, "train")
    assert len(list(train.glob("adapter/*.safetensors"))) == 1 and not (train / "adapter" / "training_args.bin").exists()
    summary = json.loads((train / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"]
