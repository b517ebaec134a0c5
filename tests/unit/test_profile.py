"""Profiles from fake probes: what a T4, an RTX 3090, an A100, an H100, an M1 and a CPU box get.
The probes are fakes because these machines cannot exist here; resolve_profile is the real code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runner.core.errors import ProfileError
from runner.machine.probe import Gpu, Probe, probe_machine
from runner.machine.profile import resolve_profile
from runner.spec.typed import parse_spec

CUDA_TORCH, BNB = "2.13.0", "0.50.2"
T4 = Probe(gpus=(Gpu("Tesla T4", (7, 5), 15360, 15000),), cpu_count=2, ram_mib=12000, torch=CUDA_TORCH, bitsandbytes=BNB)
RTX3090 = Probe(gpus=(Gpu("NVIDIA GeForce RTX 3090", (8, 6), 24576, 24000),), torch=CUDA_TORCH, bitsandbytes=BNB)
A100 = Probe(gpus=(Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81920, 81000),), cpu_count=32, cores=16, torch=CUDA_TORCH,
             bitsandbytes=BNB)
H100 = Probe(gpus=(Gpu("NVIDIA H100 80GB HBM3", (9, 0), 81559, 80000),), torch=CUDA_TORCH, bitsandbytes=BNB)
M1 = Probe(mps=True, cpu_count=8, ram_mib=32768, torch="2.13.0", bitsandbytes=None)
CPU = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes=BNB)
CPU_OLD_BNB = Probe(cpu_count=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.43.1")


def spec(tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    (tmp_path / "t.jsonl").write_text("{}\n")
    return parse_spec("model: {source: init}\ndata: {train: {path: t.jsonl}}\n" + extra, base_dir=tmp_path)


@pytest.mark.parametrize("probe, device, dtype, quant, optim", [
    (T4, "cuda", "fp16", "nf4", "paged_adamw_8bit"),
    (RTX3090, "cuda", "bf16", "nf4", "paged_adamw_8bit"),
    (A100, "cuda", "bf16", "nf4", "paged_adamw_8bit"),
    (H100, "cuda", "bf16", "nf4", "paged_adamw_8bit"),
    (M1, "mps", "fp16", "none", "adamw_torch"),
    (CPU, "cpu", "fp32", "nf4", "adamw_torch"),
    (CPU_OLD_BNB, "cpu", "fp32", "none", "adamw_torch"),
])
def test_default_profiles(tmp_path: Path, probe: Probe, device: str, dtype: str, quant: str, optim: str) -> None:
    p = resolve_profile(spec(tmp_path), probe)
    assert (p.device, p.dtype, p.quantization, p.optimizer) == (device, dtype, quant, optim)
    assert p.micro_batch_size * p.gradient_accumulation == 16
    assert p.reasons and all(isinstance(r, str) and r for r in p.reasons)


def test_t4_says_why_it_uses_fp16(tmp_path: Path) -> None:
    p = resolve_profile(spec(tmp_path), T4)
    assert "fp16 compute: sm_75 has no bf16" in p.reasons


def test_bf16_on_t4_follows_the_spec_policy(tmp_path: Path) -> None:
    p = resolve_profile(spec(tmp_path, "hardware: {dtype: bf16}\n"), T4)
    assert p.dtype == "fp16" and any("falling back to fp16" in r for r in p.reasons)
    with pytest.raises(ProfileError, match="set hardware.dtype: fp16"):
        resolve_profile(spec(tmp_path, "hardware: {dtype: bf16, on_unsupported: error}\n"), T4)


def test_4bit_on_mps_falls_back_or_stops(tmp_path: Path) -> None:
    p = resolve_profile(spec(tmp_path), M1)
    assert p.quantization == "none" and any("LoRA without quantization" in r for r in p.reasons)
    with pytest.raises(ProfileError, match="model.quantization: none"):
        resolve_profile(spec(tmp_path, "hardware: {on_unsupported: error}\n"), M1)


def test_cuda_asked_on_a_cpu_box(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no CUDA GPU found"):
        resolve_profile(spec(tmp_path, "hardware: {device: cuda, on_unsupported: error}\n"), CPU)
    gpu_but_cpu_torch = Probe(gpus=T4.gpus, torch="2.13.0+cpu", bitsandbytes=BNB)
    assert resolve_profile(spec(tmp_path), gpu_but_cpu_torch).device == "cpu"


def test_key_fields_leave_out_what_only_changes_speed(tmp_path: Path) -> None:
    a = resolve_profile(spec(tmp_path, "train: {micro_batch_size: 2}\n"), CPU)
    b = resolve_profile(spec(tmp_path, "train: {micro_batch_size: 8}\n"), CPU)
    assert a.micro_batch_size != b.micro_batch_size and a.key_fields() == b.key_fields()


def test_threads_follow_the_cores_or_omp_num_threads(tmp_path: Path) -> None:
    p = resolve_profile(spec(tmp_path), CPU)
    assert p.threads == 2 and "2 CPU threads: 2 physical cores (in the keys: CPU float sums follow the count)" in p.reasons
    one = resolve_profile(spec(tmp_path), replace(CPU, omp_num_threads="1"))
    assert one.threads == 1 and any(r.startswith("1 CPU thread: OMP_NUM_THREADS=1 ") for r in one.reasons)
    bad = resolve_profile(spec(tmp_path), replace(CPU, omp_num_threads="many"))
    assert bad.threads == 2 and "OMP_NUM_THREADS 'many' is not a positive whole number: ignored" in bad.reasons
    assert resolve_profile(spec(tmp_path), replace(CPU, omp_num_threads="")).threads == 2
    # Several processes share the cores, unless OMP_NUM_THREADS says how many each one takes.
    shared = resolve_profile(spec(tmp_path, "hardware: {processes: 2}\n"), CPU)
    assert shared.threads == 1 and any("2 physical cores shared by 2 processes" in r for r in shared.reasons)
    assert resolve_profile(spec(tmp_path, "hardware: {processes: 2}\n"), replace(CPU, omp_num_threads="2")).threads == 2


def test_the_real_probe_reads_the_cores_and_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    probe = probe_machine()
    assert probe.omp_num_threads == "3" and 1 <= probe.cores <= probe.cpu_count


def test_the_thread_count_is_in_the_keys_on_cpu_only(tmp_path: Path) -> None:
    cpu1, cpu2 = (resolve_profile(spec(tmp_path), replace(CPU, omp_num_threads=n)) for n in ("1", "2"))
    assert cpu1.key_fields()["threads"] == 1 and cpu1.key_fields() != cpu2.key_fields()
    gpu1, gpu16 = (resolve_profile(spec(tmp_path), replace(A100, omp_num_threads=n)) for n in ("1", None))
    assert (gpu1.threads, gpu16.threads) == (1, 16) and gpu1.key_fields() == gpu16.key_fields()
    assert "threads" not in gpu1.key_fields() and any("not in the keys on cuda" in r for r in gpu16.reasons)


def test_one_process_per_gpu_keeps_the_effective_batch(tmp_path: Path) -> None:
    two = Probe(gpus=A100.gpus * 2, torch=CUDA_TORCH, bitsandbytes=BNB)
    p = resolve_profile(spec(tmp_path), two)
    assert p.processes == 2 and p.micro_batch_size * p.gradient_accumulation * 2 == 16
    assert p.key_fields()["processes"] == 2


def test_processes_asked_for_on_cpu_and_too_many_on_gpu(tmp_path: Path) -> None:
    assert resolve_profile(spec(tmp_path, "hardware: {processes: 2}\n"), CPU).processes == 2
    p = resolve_profile(spec(tmp_path, "hardware: {processes: 4}\n"), A100)
    assert p.processes == 1 and any("falling back to 1 processes" in r for r in p.reasons)
    with pytest.raises(ProfileError, match="multiple of the 3 processes"):
        resolve_profile(spec(tmp_path, "hardware: {processes: 3}\n"), CPU)


def test_how_several_processes_share_training(tmp_path: Path) -> None:
    two = Probe(gpus=RTX3090.gpus * 2, torch=CUDA_TORCH, bitsandbytes=BNB)
    auto = resolve_profile(spec(tmp_path), two)
    assert auto.distributed == "ddp" and any("hardware.distributed: fsdp shards the model instead" in r for r in auto.reasons)
    fsdp = resolve_profile(spec(tmp_path, "hardware: {distributed: fsdp}\n"), two)
    assert fsdp.distributed == "fsdp" and resolve_profile(spec(tmp_path, "hardware: {distributed: ddp}\n"), two).distributed == "ddp"
    # FSDP cannot reload bitsandbytes' 8-bit optimizer state from a checkpoint: plain AdamW, and why
    assert auto.optimizer == "paged_adamw_8bit" and fsdp.optimizer == "adamw_torch"
    assert any(r.startswith("optimizer adamw_torch: FSDP cannot reshard") for r in fsdp.reasons)
    with pytest.raises(ProfileError, match="set train.optimizer: adamw_torch"):
        resolve_profile(spec(tmp_path, "hardware: {distributed: fsdp, on_unsupported: error}\ntrain: {optimizer: paged_adamw_8bit}\n"), two)
    # One process has nothing to share, and the key stays what it was before the field existed.
    one = resolve_profile(spec(tmp_path, "hardware: {distributed: fsdp}\n"), A100)
    assert one.distributed == "none" and "distributed" not in one.key_fields()
    assert auto.key_fields()["distributed"] == "ddp"
    # FSDP on CPU is FSDP2 (gloo), which needs torch >= 2.6: before that, the spec's policy decides.
    cpu = resolve_profile(spec(tmp_path, "hardware: {processes: 2, distributed: fsdp}\n"), CPU)
    assert cpu.distributed == "fsdp" and any("FSDP2 over the 2 processes" in r for r in cpu.reasons)
    old = replace(CPU, torch="2.5.1+cpu")
    cpu = resolve_profile(spec(tmp_path, "hardware: {processes: 2, distributed: fsdp}\n"), old)
    assert cpu.distributed == "ddp" and any("FSDP on cpu needs FSDP2, which needs torch >= 2.6" in r for r in cpu.reasons)
    with pytest.raises(ProfileError, match="set hardware.distributed: ddp, or set hardware.on_unsupported: fallback"):
        resolve_profile(spec(tmp_path, "hardware: {processes: 2, distributed: fsdp, on_unsupported: error}\n"), old)
    assert resolve_profile(spec(tmp_path, "hardware: {processes: 2}\n"), CPU).distributed == "ddp"


@pytest.mark.parametrize("probe, autocast, fused", [
    (T4, True, True),  # the Trainer's fp16 autocast
    (A100, True, True),  # bf16 autocast
    (M1, False, False),  # plain fp16 LoRA without autocast; SDPA's math path on MPS
    (CPU, False, True),  # fp32; CPU's SDPA is a flash kernel
])
def test_the_memory_estimate_sees_what_the_profile_runs(tmp_path: Path, probe: Probe, autocast: bool, fused: bool) -> None:
    from runner.machine.memory import setup_for

    p = resolve_profile(spec(tmp_path), probe)
    s = setup_for(spec(tmp_path), p, 512)
    assert (s.autocast, s.fused_attention, s.device, s.quantization) == (autocast, fused, p.device, p.quantization)
    assert s.compute_bytes == (4 if p.dtype == "fp32" else 2)
    assert s.eight_bit_optimizer == (p.optimizer == "paged_adamw_8bit")
