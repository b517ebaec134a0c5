"""Training in several processes with Hugging Face Accelerate (DDP; FSDP2 or DeepSpeed ZeRO-2/3 for
models one GPU cannot hold), the engine multi-GPU users already run, rather than a launcher of our own.

The train stage hands its context to `accelerate launch -m runner.stages.train.worker`; every process
runs the same Trainer code (Accelerate sets up the process group: NCCL on GPUs, gloo on CPU), and
rank 0 writes the artifact. Across nodes (runner.machine.world) node 0's `runner run` runs this and
every other node's joins it (runner.core.follow); rank 0, on node 0, writes the store.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.stage import StageContext
from runner.machine.profile import Profile
from runner.machine.world import (
    ZERO_STAGES,
    deepspeed_config_path,
    deepspeed_settings,
    failure_file,
    launch_command,
    launch_failure,
    nodes_from_environment,
    run_launcher,
    sharing_environment,
)
from runner.machine.world import sharing_arguments as sharing_arguments  # where the tests look for it
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
    nodes = nodes_from_environment()
    local = nodes.per_node(n)
    path = write_context(ctx)
    if ctx.profile.distributed in ZERO_STAGES:  # read by every node's launcher (the work folder is shared)
        deepspeed_config_path(path).write_text(json.dumps(
            deepspeed_settings(ctx.profile.distributed, ctx.profile.dtype, ctx.profile.device), indent=1), "utf-8")
    failure_file(ctx.work, nodes).unlink(missing_ok=True)
    command = launch_command(n, ctx.profile.distributed, nodes, path)
    # The profile's threads per process (the cores shared out, so they are not oversubscribed): every
    # library in the workers reads OMP_NUM_THREADS, and train_here sets torch's count to it as well.
    env = {**os.environ, **sharing_environment(ctx.profile.distributed, ctx.profile.device),
           "OMP_NUM_THREADS": str(ctx.profile.threads)}
    how = _how(ctx.profile)
    if nodes.many:
        ctx.log(f"train: launching {local} of {n} processes on node 0 of {nodes.count} with accelerate ({how}), "
                f"rendezvous at {nodes.address}:{nodes.port}")
    else:
        ctx.log(f"train: launching {n} processes with accelerate ({how})")
    code = run_launcher(command, env)
    if code != 0:
        raise StageError(launch_failure(ctx.work, n, nodes, code))


def _how(profile: Profile) -> str:
    """How the processes share training, for the log: "FSDP", "DeepSpeed ZeRO-3, gloo on CPU", ..."""
    sharing = {"fsdp": "FSDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}.get(profile.distributed)
    if profile.device == "cpu":
        return ", ".join(filter(None, (sharing, "gloo on CPU")))
    return sharing or "DDP"


def check_shared_store(work: Path, patience: float = 20.0) -> None:
    """Every rank writes a marker in the work folder and rank 0 must see them all: checkpoints (each
    rank's random state) and the artifact live there, so it must be one filesystem for every node.
    Called in every worker once the process group is up; raises the same one line in all of them."""
    import time
    import uuid

    import torch.distributed as dist

    me, world = dist.get_rank(), dist.get_world_size()
    token: list[Any] = [uuid.uuid4().hex if me == 0 else None]
    dist.broadcast_object_list(token, src=0)
    marks = work / "ranks"
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"rank-{me}").write_text(token[0], "utf-8")
    dist.barrier()
    missing: list[Any] = [None]
    if me == 0:
        deadline = time.time() + patience  # network filesystems show others' writes after a while
        while (absent := [r for r in range(world) if not _says(marks / f"rank-{r}", token[0])]) and time.time() < deadline:
            time.sleep(0.5)
        missing = [absent]
    dist.broadcast_object_list(missing, src=0)
    if missing[0]:
        raise StageError(f"train: the store is not on a filesystem every node sees: rank 0 cannot see the markers "
                         f"rank(s) {', '.join(map(str, missing[0]))} wrote in {marks}; put --store on a shared "
                         "filesystem (NFS, Lustre, ...) mounted at the same path on every node")


def _says(path: Path, token: str) -> bool:
    try:
        return path.read_text("utf-8") == token
    except OSError:
        return False


def world_of(trainer: Any, sharding: str | None = None) -> dict[str, Any]:
    """The world the Trainer really trained in, read from it and from torch (not what was asked for):
    a 4-bit base that silently trains at world size 1 shows here, and so does a sharding asked for
    that the libraries quietly turned into DDP (Accelerate does that to FSDP on CPU: see fsdp_on_cpu)."""
    import torch.distributed as dist

    size = int(trainer.args.world_size)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if size > 1 else 1
    return {"world_size": size, "nodes": max(1, size // local), "processes_per_node": local,
            "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
            "sharding": sharding or sharding_of(trainer), "device": trainer.args.device.type}


def sharding_of(trainer: Any) -> str:
    """How the model was really wrapped: fsdp (torch's FSDP2 module or FSDP1 wrapper), zero2/zero3 (a
    DeepSpeed engine and its stage), ddp, or none. Read from the wrapper, not the Trainer's flags: they
    say what Accelerate was configured for, which is not always what it did."""
    wrappers = {c.__name__ for m in (trainer.model, trainer.model_wrapped) for c in type(m).__mro__}
    if wrappers & {"FSDPModule", "FullyShardedDataParallel"}:
        return "fsdp"
    if "DeepSpeedEngine" in wrappers:
        return f"zero{trainer.model_wrapped.zero_optimization_stage()}"
    return "ddp" if "DistributedDataParallel" in wrappers else "none"


def check_world(world: dict[str, Any], profile: Profile) -> None:
    """Stop, before anything is saved, when the trainer did not train in the world that was launched:
    another world size (each process training alone: Axolotl's DDP-QLoRA bug) or another sharding.
    The same line in every process."""
    wanted = profile.distributed if profile.processes > 1 else "none"
    if world["world_size"] != profile.processes or world["sharding"] != wanted:
        raise StageError(f"train: launched {profile.processes} process(es) with {wanted}, but the trainer ran at "
                         f"world size {world['world_size']} with {world['sharding']}: nothing was saved; rerun with "
                         "--debug and report it, or set hardware.processes: 1")


def fsdp_on_cpu() -> None:
    """FSDP on CPU: Accelerate maps every CPU launch to MULTI_CPU (DDP over gloo) and drops its FSDP
    plugin without a word, though torch's FSDP2 (fully_shard) runs on CPU with gloo. So the worker
    sets up Accelerate's state itself, as transformers' `use_configured_state` lets it (see
    trainer.training_kwargs), and marks it FSDP with the plugin the launcher's FSDP_* environment
    describes. sharding_of then checks that the model really was sharded."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator(cpu=True).state  # the gloo process group, and Accelerate's shared state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP  # every AcceleratorState copies it from here


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

