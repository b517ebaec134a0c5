"""The probe of the machine: plain facts (GPUs, cores, memory, installed library builds), as data.

Never imports torch: `plan` must stay light, and these facts are readable without it (nvidia-smi,
sysfs, package metadata). Tests hand `runner.machine.profile.resolve_profile` a fake Probe for a T4, an
A100, an M1 or a CPU box instead.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    total_mib: int
    free_mib: int


@dataclass(frozen=True)
class Probe:
    gpus: tuple[Gpu, ...] = ()
    mps: bool = False
    cpu_count: int = 1
    cores: int = 1  # physical cores this process may run on: torch's default thread count follows them
    omp_num_threads: str | None = None  # the environment's OMP_NUM_THREADS, as written
    ram_mib: int = 0
    torch: str | None = None  # installed version, e.g. "2.13.0+cpu"
    bitsandbytes: str | None = None
    deepspeed: str | None = None  # installed version (the `deepspeed` extra): ZeRO-2/3

    @property
    def torch_has_cuda(self) -> bool:
        return self.torch is not None and "+cpu" not in self.torch and platform.system() != "Darwin"


def probe_machine() -> Probe:
    return Probe(gpus=_nvidia_gpus(), mps=platform.system() == "Darwin" and platform.machine() == "arm64",
                 cpu_count=os.cpu_count() or 1, cores=_physical_cores(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                 ram_mib=_ram_mib(),
                 torch=_version("torch"), bitsandbytes=_version("bitsandbytes"), deepspeed=_version("deepspeed"))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _physical_cores() -> int:
    """Physical cores among the CPUs this process may run on. torch's default (one thread per
    physical core) counts every core of the machine; a process pinned to fewer (taskset, a
    container's cpuset) would then run more threads than it has cores, so only those count here."""
    if platform.system() == "Darwin":
        return _sysctl_int("hw.perflevel0.physicalcpu") or _sysctl_int("hw.physicalcpu") or os.cpu_count() or 1
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:  # no sysfs topology (some containers): count the CPU as a core
            cores.add((f"cpu{cpu}", ""))
    return len(cores) or 1


def _sysctl_int(name: str) -> int | None:
    """macOS: torch runs on the performance cores (perflevel0) of Apple silicon."""
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True).stdout
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _ram_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return 0


def _nvidia_gpus() -> tuple[Gpu, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    query = "--query-gpu=name,compute_cap,memory.total,memory.free"
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, cap, total, free = (part.strip() for part in line.split(","))
        major, minor = cap.split(".")
        gpus.append(Gpu(name, (int(major), int(minor)), int(total), int(free)))
    return tuple(gpus)
