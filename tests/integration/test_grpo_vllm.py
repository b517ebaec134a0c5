"""GRPO's vLLM generation (TRL's colocated mode). The settings runner.stages.train.engine builds are
GRPOConfig's own (checked here, on any machine, no vllm needed); the run itself needs a CUDA GPU and
vllm: it skips elsewhere (`pytest -m gpu` on a GPU machine with `pip install vllm`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.spec.typed import load_spec
from runner.stages.train.engine import vllm_settings
from tests.integration.conftest import runner
from tests.integration.test_grpo import write_chain


def test_the_colocated_settings_are_grpo_configs_own(tmp_path: Path) -> None:
    from trl import GRPOConfig

    _, path = write_chain(tmp_path, ", vllm: true")
    spec = load_spec(path)
    cuda = dataclasses.replace(resolve_profile(spec, probe_machine()), device="cuda")
    settings = vllm_settings(spec, cuda, installed=True)
    config = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, num_generations=8,
                        per_device_train_batch_size=16, **settings)
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert config.vllm_max_model_length == spec.data.max_length + spec.train.grpo.max_completion_length


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install vllm)")
def test_grpo_generates_with_vllm_colocated_on_the_gpu(tmp_path: Path) -> None:
    _, spec = write_chain(tmp_path, ", vllm: true")
    store = tmp_path / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trains = [p for p in (store / "train").iterdir() if (p / "summary.json").is_file()]
    grpo = next(p for p in trains if json.loads((p / "summary.json").read_text()).get("method") == "grpo")
    rows = [json.loads(line) for line in (grpo / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("rewards/answer_correct/mean" in r for r in rows if "loss" in r)
