"""Training in several processes with Hugging Face Accelerate (DDP, or FSDP for models one GPU cannot
hold), the engine multi-GPU users already run, rather than a launcher of our own.

The train stage hands its context to `accelerate launch -m runner.stages.train.worker`; every process
runs the same Trainer code (Accelerate sets up the process group: NCCL on GPUs, gloo on CPU), and
rank 0 writes the artifact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.stage import StageContext
from runner.machine.profile import Profile
from runner.spec.typed import Spec, typed


def rank(local: bool = False) -> int:
    """This process's rank among those `accelerate launch` started (`local`: among those on this
    machine, which picks its GPU); 0 in a process nobody launched."""
    return int(os.environ.get("LOCAL_RANK" if local else "RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, which alone logs and writes the artifact."""
    return rank() == 0


def launch(ctx: StageContext) -> None:
    n = ctx.profile.processes
    path = write_context(ctx)
    command = [sys.executable, "-m", "accelerate.commands.launch", *sharing_arguments(ctx.profile.distributed),
               "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "runner.stages.train.worker", str(path)]
    # The profile's threads per process (the cores shared out, so they are not oversubscribed): every
    # library in the workers reads OMP_NUM_THREADS, and train_here sets torch's count to it as well.
    env = {**os.environ, **sharing_environment(ctx.profile.distributed), "OMP_NUM_THREADS": str(ctx.profile.threads)}
    how = "FSDP" if ctx.profile.distributed == "fsdp" else "gloo on CPU" if ctx.profile.device == "cpu" else "DDP"
    ctx.log(f"train: launching {n} processes with accelerate ({how})")
    process = subprocess.Popen(command, env=env)
    try:
        code = process.wait()
    except BaseException:  # Ctrl-C, SIGTERM (runner.core.signals), or anything else while they train
        _stop(process)
        raise
    if code != 0:
        raise StageError(f"train: the {n} accelerate processes failed (exit {code}); the output above says why")


def _stop(launcher: subprocess.Popen[bytes], patience: float = 60) -> None:
    """Stop the launcher the way a scheduler would, with SIGTERM: it passes the signal on to its
    workers (each in a session of its own, out of reach of our process group) and waits for them.
    Killing it outright would orphan the workers, and they would go on training, and writing, after
    the runner has gone. SIGKILL only if it has not finished within `patience` seconds."""
    launcher.send_signal(signal.SIGTERM)
    try:
        launcher.wait(timeout=patience)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def sharing_arguments(distributed: str) -> list[str]:
    """`accelerate launch` options for how the processes share training."""
    if distributed != "fsdp":
        # --multi_gpu with use_cpu set in the Trainer gives real gloo processes on CPU; `--cpu` alone
        # silently runs a single one.
        return ["--multi_gpu"]
    # FSDP-QLoRA as PEFT and bitsandbytes document it: every decoder layer (the model's own
    # _no_split_modules) its own unit, fully sharded; flat parameters (use_orig_params false: the
    # Trainer wraps the LoRA layers apart, so each unit is all-trainable or all-frozen); module
    # states synchronised from rank 0; the full adapter gathered to save. (transformers 5 still loads
    # a 4-bit model whole in every process before FSDP shards it: the memory estimate counts that.)
    return ["--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
            "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_backward_prefetch", "BACKWARD_PRE",
            "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "false",
            "--fsdp_cpu_ram_efficient_loading", "true", "--fsdp_sync_module_states", "true",
            "--fsdp_offload_params", "false"]


def sharing_environment(distributed: str) -> dict[str, str]:
    """Settings Accelerate reads from the environment only. Under FSDP: leave the rotary embedding
    out of FSDP's units, whose mixed precision would round its fp32 frequencies to bf16 at the first
    forward (the angles then drift with the position, and training would not see the positions
    export and eval see)."""
    return {"FSDP_IGNORED_MODULES": r".*\.rotary_emb"} if distributed == "fsdp" else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_context(ctx: StageContext) -> Path:
    """launch.json in the work folder: what each worker needs to rebuild `ctx` (see context_from)."""
    payload = {"spec": ctx.spec.as_dict(), "base_dir": ctx.spec.base_dir, "profile": asdict(ctx.profile),
               "out": str(ctx.out), "work": str(ctx.work),
               "upstream": {k: str(v) for k, v in ctx.upstream.items()}, "files": {k: str(v) for k, v in ctx.files.items()}}
    ctx.work.mkdir(parents=True, exist_ok=True)
    path = ctx.work / "launch.json"
    path.write_text(json.dumps(payload), "utf-8")
    return path


def context_from(path: Path) -> StageContext:
    """The StageContext a launched worker process rebuilds from launch.json."""
    payload: dict[str, Any] = json.loads(path.read_text("utf-8"))
    spec = typed(Spec, {**payload["spec"], "base_dir": payload["base_dir"]})
    profile = Profile(**{**payload["profile"], "reasons": tuple(payload["profile"]["reasons"])})
    return StageContext(spec=spec, profile=profile, out=Path(payload["out"]), work=Path(payload["work"]),
                        upstream={k: Path(v) for k, v in payload["upstream"].items()},
                        files={k: Path(v) for k, v in payload["files"].items()},
                        log=(lambda message: print(f"[runner] {message}", flush=True)) if is_main_process() else (lambda m: None))
