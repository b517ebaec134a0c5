"""One of the processes `accelerate launch` starts for the train stage (see runner.stages.train.launch).

A worker that stops for a reason of ours (a RunnerError) leaves its one line in the work folder for
its node's launcher, which raises it instead of "the processes failed"."""

from __future__ import annotations

import sys
from pathlib import Path

from runner.core import signals
from runner.core.errors import RunnerError
from runner.core.signals import Interrupted
from runner.machine.world import failure_file, nodes_from_environment
from runner.stages.train.launch import check_shared_store, context_from, fsdp_on_cpu, rank
from runner.stages.train.loop import train_here


def main(context: Path) -> int:
    import torch
    import torch.distributed as dist

    from runner.core.quiet import quiet_known_warnings

    quiet_known_warnings()
    signals.install()  # SIGTERM from the launcher (the runner stopped): checkpoint at the end of the step, then stop
    if torch.cuda.is_available():  # before any model loads: each process on its own GPU, not all on GPU 0
        torch.cuda.set_device(rank(local=True))
    ctx = context_from(context)
    nodes = nodes_from_environment()
    try:
        if nodes.many:
            # The process group up before the Trainer's (Accelerate reuses an initialised one, with the
            # backend it would pick itself), to check the store is shared before any training.
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            check_shared_store(ctx.work)
        if ctx.profile.distributed == "fsdp" and ctx.profile.device == "cpu":
            fsdp_on_cpu()  # after the multi-node group above: Accelerate reuses an initialised one
        train_here(ctx)
    except RunnerError as exc:
        if isinstance(exc, Interrupted):
            return exc.exit_code  # stopped from outside: the runner that passed the signal on says so
        if rank(local=True) == 0:
            failure_file(ctx.work, nodes).write_text(str(exc), "utf-8")
        print(f"[runner] rank {rank()}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
