"""GRPO's generation engine: TRL's vLLM path, colocated, built as GRPOConfig settings (no vllm here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.core.errors import ProfileError
from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.spec.typed import Spec, parse_spec
from runner.stages.train.engine import VLLM_MEMORY_SHARE, vllm_settings

ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'
CPU = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")


def spec(tmp_path: Path, vllm: bool) -> Spec:
    (tmp_path / "train.jsonl").write_text(ROW)
    return parse_spec("model: {source: init}\ndata: {train: {path: train.jsonl}, max_length: 300}\n"
                      f"train: {{method: grpo, grpo: {{vllm: {str(vllm).lower()}, max_completion_length: 40}}}}\n",
                      base_dir=tmp_path)


def test_no_vllm_asked_is_transformers_generate(tmp_path: Path) -> None:
    s = spec(tmp_path, vllm=False)
    assert vllm_settings(s, resolve_profile(s, CPU), installed=True) == {}


def test_vllm_colocated_on_cuda(tmp_path: Path) -> None:
    s = spec(tmp_path, vllm=True)
    cuda = dataclasses.replace(resolve_profile(s, CPU), device="cuda")
    got = vllm_settings(s, cuda, installed=True)
    assert got == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": VLLM_MEMORY_SHARE,
                   "vllm_tensor_parallel_size": 1, "vllm_enable_sleep_mode": False,
                   "vllm_max_model_length": 340}  # the data stage's prompt length plus the completion's


def test_vllm_refused_in_one_line_off_cuda_or_uninstalled(tmp_path: Path) -> None:
    s = spec(tmp_path, vllm=True)
    cpu = resolve_profile(s, CPU)
    with pytest.raises(ProfileError, match="needs a CUDA device, this profile is cpu: set train.grpo.vllm: false"):
        vllm_settings(s, cpu, installed=True)
    with pytest.raises(ProfileError, match="vllm is not installed: `pip install vllm`"):
        vllm_settings(s, dataclasses.replace(cpu, device="cuda"), installed=False)


def test_vllm_is_in_the_train_key(tmp_path: Path) -> None:
    from runner.stages.train import spec_slice

    on, off = spec(tmp_path, vllm=True), spec(tmp_path, vllm=False)
    assert spec_slice(on)["train"]["grpo"]["vllm"] is True and spec_slice(off)["train"]["grpo"]["vllm"] is False
