"""Hardware profiles: a pure `resolve_profile(spec, probe)` from the spec and a probe of the machine
(`runner.machine.probe`), each decision with its reason. Tests hand it a fake Probe for a T4, an A100, an M1
or a CPU box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from runner.core.errors import ProfileError
from runner.machine.probe import Probe
from runner.machine.world import SHARDED, ZERO_STAGES, fsdp_version
from runner.spec.typed import Spec

Device = Literal["cuda", "mps", "cpu"]
Dtype = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class Profile:
    device: Device
    dtype: Dtype
    quantization: Literal["nf4", "fp4", "none"]
    optimizer: str
    micro_batch_size: int
    gradient_accumulation: int  # micro-batch x accumulation x processes = the spec's batch_size
    gradient_checkpointing: bool
    attn_implementation: str
    memory_mib: int = 0  # what the device has: the GPU's total, or the machine's RAM
    processes: int = 1  # data-parallel training processes (accelerate launch when above 1)
    distributed: Literal["none", "ddp", "fsdp", "zero2", "zero3"] = "none"  # how the processes share training
    threads: int = 1  # CPU intra-op threads per process; the train stage sets torch to exactly this
    reasons: tuple[str, ...] = field(default=())

    def key_fields(self) -> dict[str, str | int]:
        """What changes a trained model's numbers. Micro-batch split, checkpointing and attention
        kernel change speed and memory, not the result, so they stay out of keys."""
        fields: dict[str, str | int] = {"device": self.device, "dtype": self.dtype, "quantization": self.quantization,
                  "optimizer": self.optimizer, "processes": self.processes}
        if self.processes > 1:  # sharded and replicated training sum gradients in other orders
            fields["distributed"] = self.distributed
        if self.device == "cpu":  # each thread sums its own slice of a matmul: the count moves the last bits
            fields["threads"] = self.threads
        return fields


class _Decisions:
    """Collects the reason for each decision and applies the spec's policy on what cannot be done."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.reasons: list[str] = []

    def note(self, reason: str) -> None:
        self.reasons.append(reason)

    def cannot(self, problem: str, fix: str, fallback: str) -> None:
        if self.policy == "error":
            raise ProfileError(f"{problem}: {fix}, or set hardware.on_unsupported: fallback")
        self.reasons.append(f"{problem}: falling back to {fallback}")


def resolve_profile(spec: Spec, probe: Probe) -> Profile:
    d = _Decisions(spec.hardware.on_unsupported)
    device = _device(spec, probe, d)
    dtype = _dtype(spec, probe, device, d)
    quant = _quantization(spec, probe, device, d)
    processes = _processes(spec, probe, device, d)
    distributed = _distributed(spec, probe, device, processes, d)
    optimizer = _optimizer(spec, probe, device, distributed, d)
    micro, accum = _batch(spec, device, processes, d)
    threads = _threads(probe, device, processes, d)
    checkpointing = spec.train.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = device == "cuda"
        d.note(f"gradient checkpointing {'on' if checkpointing else 'off'}: "
               + ("trade compute for memory on the GPU" if checkpointing else "memory is not the limit off-GPU"))
    return Profile(device=device, dtype=dtype, quantization=quant, optimizer=optimizer,
                   micro_batch_size=micro, gradient_accumulation=accum,
                   gradient_checkpointing=bool(checkpointing), attn_implementation="sdpa",
                   memory_mib=probe.gpus[0].total_mib if device == "cuda" else probe.ram_mib, processes=processes,
                   distributed=distributed, threads=threads, reasons=tuple(d.reasons))


def _device(spec: Spec, probe: Probe, d: _Decisions) -> Device:
    cuda_ok = bool(probe.gpus) and probe.torch_has_cuda
    wanted = spec.hardware.device
    if wanted == "auto":
        device: Device = "cuda" if cuda_ok else "mps" if probe.mps else "cpu"
        d.note(f"device {device}: " + (f"{probe.gpus[0].name}" if device == "cuda" else
                                      "Apple GPU" if device == "mps" else "no CUDA GPU or Apple GPU found"))
        return device
    if wanted == "cuda" and not cuda_ok:
        why = "torch build is CPU-only" if probe.gpus else "no CUDA GPU found"
        d.cannot(f"hardware.device cuda: {why}", "use the CUDA image or a GPU machine", "cpu")
        return "cpu"
    if wanted == "mps" and not probe.mps:
        d.cannot("hardware.device mps: no Apple GPU", "set hardware.device: auto", "cpu")
        return "cpu"
    d.note(f"device {wanted}: asked for by the spec")
    return wanted


def _dtype(spec: Spec, probe: Probe, device: Device, d: _Decisions) -> Dtype:
    wanted = spec.hardware.dtype
    cap = probe.gpus[0].capability if device == "cuda" else (0, 0)
    bf16_ok = device == "cpu" or (device == "cuda" and cap >= (8, 0))
    if wanted == "auto":
        if device == "cuda":
            dtype: Dtype = "bf16" if bf16_ok else "fp16"
            d.note(f"{dtype} compute: sm_{cap[0]}{cap[1]} " + ("has bf16" if bf16_ok else "has no bf16"))
        else:
            dtype = "fp16" if device == "mps" else "fp32"
            d.note(f"{dtype} compute on {device}")
        return dtype
    if wanted == "bf16" and not bf16_ok:
        d.cannot(f"hardware.dtype bf16: not supported on {device} sm_{cap[0]}{cap[1]}",
                 "set hardware.dtype: fp16", "fp16")
        return "fp16"
    d.note(f"{wanted} compute: asked for by the spec")
    return wanted


def _bnb_at_least(probe: Probe, version: tuple[int, int]) -> bool:
    if probe.bitsandbytes is None:
        return False
    parts = probe.bitsandbytes.split(".")
    return (int(parts[0]), int(parts[1])) >= version


def _quantization(spec: Spec, probe: Probe, device: Device, d: _Decisions) -> Literal["nf4", "fp4", "none"]:
    wanted = spec.model.quantization
    if wanted == "none":
        d.note("no quantization: model.quantization is none (plain LoRA)")
        return "none"
    # bitsandbytes runs 4-bit on CUDA; from 0.48 also on CPU. It has no MPS 4-bit kernels.
    can = probe.bitsandbytes is not None and (device == "cuda" or (device == "cpu" and _bnb_at_least(probe, (0, 48))))
    if not can:
        why = "bitsandbytes is not installed" if probe.bitsandbytes is None else f"bitsandbytes {probe.bitsandbytes} has no 4-bit on {device}"
        d.cannot(f"model.quantization {wanted}: {why}", "set model.quantization: none or use the CUDA image",
                 "LoRA without quantization")
        return "none"
    d.note(f"{wanted} 4-bit base weights with bitsandbytes {probe.bitsandbytes} on {device}")
    return wanted


def _optimizer(spec: Spec, probe: Probe, device: Device, distributed: str, d: _Decisions) -> str:
    wanted = spec.train.optimizer
    eight_bit_ok = device == "cuda" and probe.bitsandbytes is not None
    # FSDP's optimizer state dict cannot take bitsandbytes' 8-bit state (nested dicts): a run could
    # not resume from its checkpoints. The LoRA states are small and FSDP shards them anyway.
    # ZeRO partitions the optimizer's fp32 states itself, and takes bitsandbytes' 8-bit ones untested.
    why = ("FSDP cannot reshard bitsandbytes' 8-bit optimizer state to resume from a checkpoint" if distributed == "fsdp"
           else "DeepSpeed ZeRO partitions the optimizer states itself (fp32 Adam)")
    if distributed in SHARDED and wanted == "auto":
        d.note(f"optimizer adamw_torch: {why}")
        return "adamw_torch"
    if distributed in SHARDED and wanted != "adamw_torch":
        d.cannot(f"train.optimizer {wanted}: {why}", "set train.optimizer: adamw_torch", "adamw_torch")
        return "adamw_torch"
    if wanted == "auto":
        choice = "paged_adamw_8bit" if eight_bit_ok else "adamw_torch"
        d.note(f"optimizer {choice}: " + ("8-bit states, paged to survive spikes" if eight_bit_ok else "8-bit optimizers need CUDA"))
        return choice
    if wanted != "adamw_torch" and not eight_bit_ok:
        d.cannot(f"train.optimizer {wanted}: needs bitsandbytes on CUDA", "set train.optimizer: adamw_torch", "adamw_torch")
        return "adamw_torch"
    return wanted


def _processes(spec: Spec, probe: Probe, device: Device, d: _Decisions) -> int:
    wanted = spec.hardware.processes
    if wanted == "auto":
        n = len(probe.gpus) if device == "cuda" else 1
        if n > 1:
            d.note(f"{n} processes: one per GPU, launched with accelerate (DDP)")
    else:
        n = wanted
        if device == "cuda" and n > len(probe.gpus):
            d.cannot(f"hardware.processes {n}: only {len(probe.gpus)} GPU(s)", f"set hardware.processes: {len(probe.gpus)}",
                     f"{len(probe.gpus)} processes")
            n = len(probe.gpus)
        elif n > 1:
            d.note(f"{n} processes on {device}: asked for by the spec, launched with accelerate")
    if spec.train.batch_size % n:
        raise ProfileError(f"train.batch_size {spec.train.batch_size} must be a multiple of the {n} processes")
    return n


def _distributed(spec: Spec, probe: Probe, device: Device, processes: int,
                 d: _Decisions) -> Literal["none", "ddp", "fsdp", "zero2", "zero3"]:
    wanted = spec.hardware.distributed
    if processes == 1:
        if wanted in SHARDED:
            d.note(f"hardware.distributed {wanted}: one process, nothing to shard")
        return "none"
    if wanted == "auto":
        d.note(f"DDP over the {processes} processes" + (" (hardware.distributed: fsdp shards the model instead, "
                                                        "as zero3 does with DeepSpeed)" if device == "cuda" else ""))
        return "ddp"
    refusal = _sharding_refusal(wanted, probe, device)
    if refusal:
        d.cannot(f"hardware.distributed {wanted}: {refusal}", "set hardware.distributed: ddp", "DDP")
        return "ddp"
    how = {"fsdp": f"FSDP{fsdp_version(probe.torch)}", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
    d.note(f"{how.get(wanted, wanted.upper())} over the {processes} processes: asked for by the spec"
           + (" (gloo on CPU)" if device == "cpu" else ""))
    return wanted


def _sharding_refusal(wanted: str, probe: Probe, device: Device) -> str | None:
    """Why this machine cannot shard as asked, or None. FSDP on CPU is FSDP2 only (FSDP1 needs a GPU
    per process); DeepSpeed runs on CUDA and, with its CPU accelerator, on CPU; neither on MPS."""
    if wanted == "fsdp" and device == "cpu" and fsdp_version(probe.torch) == 1:
        return f"FSDP on cpu needs FSDP2, which needs torch >= 2.6 (installed: {probe.torch})"
    if wanted in ZERO_STAGES and probe.deepspeed is None:
        return "DeepSpeed is not installed: pip install 'qlora-runner[deepspeed]'"
    if wanted in SHARDED and device == "mps":
        return "neither FSDP nor DeepSpeed runs on mps"
    return None


def _batch(spec: Spec, device: Device, processes: int, d: _Decisions) -> tuple[int, int]:
    total = spec.train.batch_size
    per_process = total // processes
    if spec.train.micro_batch_size != "auto":
        micro = spec.train.micro_batch_size
        if per_process % micro:
            raise ProfileError(f"train.micro_batch_size {micro} must divide the {per_process} examples per process")
        d.note(f"micro-batch {micro} x {per_process // micro} accumulation: asked for by the spec")
        return micro, per_process // micro
    cap = 4 if device == "cuda" else 8
    micro = max(m for m in range(1, min(cap, per_process) + 1) if per_process % m == 0)
    shape = f"{micro} x {per_process // micro} accumulation" + (f" x {processes} processes" if processes > 1 else "")
    d.note(f"micro-batch {shape} = batch {total}")
    return micro, per_process // micro


def _threads(probe: Probe, device: Device, processes: int, d: _Decisions) -> int:
    """CPU threads per training process: OMP_NUM_THREADS when set (per process, as launchers read
    it), else the physical cores shared out among the processes: torch's own default."""
    env = (probe.omp_num_threads or "").strip()
    if env.isdigit() and int(env) > 0:
        n, why = int(env), f"OMP_NUM_THREADS={env}"
    else:
        if env:  # set but empty reads as unset, as OpenMP reads it
            d.note(f"OMP_NUM_THREADS {probe.omp_num_threads!r} is not a positive whole number: ignored")
        n = max(1, probe.cores // processes)
        why = f"{probe.cores} physical core{'s' if probe.cores != 1 else ''}" + (
            f" shared by {processes} processes" if processes > 1 else "")
    keyed = "in the keys: CPU float sums follow the count" if device == "cpu" else f"not in the keys on {device}"
    d.note(f"{n} CPU thread{'s' if n != 1 else ''}{' per process' if processes > 1 else ''}: {why} ({keyed})")
    return n
