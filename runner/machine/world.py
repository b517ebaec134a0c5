"""The world training runs in: how many nodes, which one this is, where they meet; and the
`accelerate launch` command that starts this node's share of the processes.

One node is what `runner run` did before. Several nodes are described on the command line
(`runner run SPEC --nodes 2 --node-rank 1 --master HOST:PORT`), as torchrun's --nnodes, --node-rank
and --master-addr/--master-port say it; the command line hands them to the train stage through the
environment (RUNNER_NODES, RUNNER_NODE_RANK, RUNNER_MASTER), because the stage runs below the CLI.
`hardware.processes` is the world size, all nodes together, so the key of a trained adapter does not
depend on how its processes were spread over machines. Light: no torch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.core.errors import ProfileError
from runner.machine.probe import Probe

NODES, NODE_RANK, MASTER = "RUNNER_NODES", "RUNNER_NODE_RANK", "RUNNER_MASTER"


@dataclass(frozen=True)
class Nodes:
    count: int = 1
    rank: int = 0  # this node's; node 0 runs the stages and its rank-0 process writes the store
    address: str = "127.0.0.1"  # where node 0's c10d store listens (torch's rendezvous)
    port: int = 0  # 0: a free port, chosen on one node

    @property
    def many(self) -> bool:
        return self.count > 1

    def environment(self) -> dict[str, str]:
        return {NODES: str(self.count), NODE_RANK: str(self.rank), MASTER: f"{self.address}:{self.port}"}

    def per_node(self, processes: int) -> int:
        """Processes on each node: the world size split evenly, as torchrun's --nproc-per-node."""
        if processes % self.count:
            raise ProfileError(f"hardware.processes {processes} cannot be split evenly over --nodes {self.count}: "
                               f"set hardware.processes to a multiple of {self.count}")
        return processes // self.count

    def cluster_probe(self, probe: Probe) -> Probe:
        """The whole world as the profile should see it: every node like this one (torchrun assumes it
        too), so `processes: auto` is one per GPU on all nodes and each process gets its node's share
        of the cores."""
        if not self.many:
            return probe
        return replace(probe, gpus=probe.gpus * self.count, cores=probe.cores * self.count)


def nodes_given(count: int | None, rank: int | None, master: str | None) -> Nodes:
    """The command line's --nodes/--node-rank/--master, checked; one node when none is given."""
    if count is None and rank is None and master is None:
        return Nodes()
    count = count or 1
    rank = rank or 0
    if count < 1 or not 0 <= rank < count:
        raise ProfileError(f"--node-rank {rank} must be between 0 and {count - 1} (--nodes {count})")
    if count > 1 and not master:
        raise ProfileError("--nodes above 1 needs --master HOST:PORT: node 0's address and a free port every node "
                           "can reach (as torchrun's --master-addr/--master-port)")
    address, _, port = (master or "127.0.0.1:0").rpartition(":")
    if not address or not port.isdigit():
        raise ProfileError(f"--master {master!r}: write HOST:PORT, e.g. 10.0.0.1:29500")
    return Nodes(count, rank, address.strip("[]"), int(port))


def nodes_from_environment(environ: Mapping[str, str] = os.environ) -> Nodes:
    """What the command line said, as the train stage reads it."""
    if NODES not in environ:
        return Nodes()
    return nodes_given(int(environ[NODES]), int(environ.get(NODE_RANK, "0")), environ.get(MASTER))


def launch_command(processes: int, distributed: str, nodes: Nodes, context: Path) -> list[str]:
    """`accelerate launch` of this node's processes, each running the train worker on `context`."""
    if nodes.many:
        # Static rendezvous at node 0's c10d store: node ranks are fixed by --node-rank (rank 0 is on
        # node 0, which writes the store), and a node that dies ends the run instead of a re-rendezvous.
        where = ["--num_machines", str(nodes.count), "--machine_rank", str(nodes.rank),
                 "--main_process_ip", nodes.address, "--main_process_port", str(nodes.port)]
    else:
        where = ["--num_machines", "1", "--main_process_port", str(nodes.port or free_port())]
    sharing = sharing_arguments(distributed, deepspeed_config_path(context))
    return [sys.executable, "-m", "accelerate.commands.launch", *sharing,
            "--num_processes", str(processes), *where, "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "runner.stages.train.worker", str(context)]


def launch_failure(work: Path, processes: int, nodes: Nodes, code: int) -> str:
    """One line for a launch that failed: what a worker said it stopped for, else what we know."""
    said = failure_file(work, nodes)
    if said.is_file():
        return said.read_text("utf-8").strip()
    if nodes.many:
        return (f"train: training across {nodes.count} nodes stopped (exit {code}): a node or one of its processes "
                "left (the output above says which); run the same command on every node again: training resumes "
                "from the last checkpoint")
    return f"train: the {processes} accelerate processes failed (exit {code}); the output above says why"


def failure_file(work: Path, nodes: Nodes) -> Path:
    """Where a node's first worker leaves the one line it stopped with, for that node's launcher."""
    return work / f"stopped-node-{nodes.rank}.txt"


SHARDED = ("fsdp", "zero2", "zero3")  # the ways of training that split model states over the processes
ZERO_STAGES = {"zero2": 2, "zero3": 3}


def fsdp_version(torch_version: str | None = None) -> int:
    """FSDP2 (torch's fully_shard: each parameter its own DTensor shard) where torch has it, as
    Accelerate requires (torch >= 2.6); FSDP1 (flat parameters, GPUs only) before. Read from the
    installed distribution's metadata: this module stays light."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = torch_version or version("torch")
    except PackageNotFoundError:
        return 2
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2])
    return 2 if (major, minor) >= (2, 6) else 1


def sharing_arguments(distributed: str, deepspeed_config: Path | None = None, version: int | None = None) -> list[str]:
    """`accelerate launch` options for how the processes share training. ZeRO reads its settings from
    `deepspeed_config` (deepspeed_settings, written beside the worker's context)."""
    if distributed in ZERO_STAGES:
        # The standard launcher (torchrun's rendezvous, as DDP and FSDP use) across nodes, not
        # DeepSpeed's own pdsh/ssh one: the nodes are started by `runner run` on each.
        return ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed_config),
                "--deepspeed_multinode_launcher", "standard"]
    if distributed != "fsdp":
        # --multi_gpu with use_cpu set in the Trainer gives real gloo processes on CPU; `--cpu` alone
        # silently runs a single one.
        return ["--multi_gpu"]
    if (version or fsdp_version()) == 2:
        # FSDP2, as Accelerate and PEFT document FSDP-QLoRA on it: every decoder layer (the model's own
        # _no_split_modules) its own unit, resharded after its forward (FULL_SHARD); each parameter
        # sharded on its own, so frozen 4-bit weights (stored in the compute dtype: loading.py) and
        # trainable LoRA matrices share a unit; the full adapter gathered to save. (transformers 5
        # still loads a 4-bit model whole in every process before FSDP shards it: the memory estimate
        # counts that.)
        return ["--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
                "--fsdp_cpu_ram_efficient_loading", "true", "--fsdp_offload_params", "false"]
    # FSDP1 (torch < 2.6): flat parameters (use_orig_params false: the Trainer wraps the LoRA layers
    # apart, so each unit is all-trainable or all-frozen); module states synchronised from rank 0.
    return ["--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
            "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_backward_prefetch", "BACKWARD_PRE",
            "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "false",
            "--fsdp_cpu_ram_efficient_loading", "true", "--fsdp_sync_module_states", "true",
            "--fsdp_offload_params", "false"]


def deepspeed_settings(distributed: str, dtype: str, device: str) -> dict[str, Any]:
    """DeepSpeed's configuration for ZeRO-2 or ZeRO-3, as Accelerate takes it in a file. Batch sizes,
    clipping and precision are "auto": the Trainer fills them from its own arguments (the fitted
    profile), so they are said once. The optimizer is the Trainer's (adamw_torch), which ZeRO wraps and
    partitions; DeepSpeed calls any optimizer not its own "untested". ZeRO-3 gathers the 16-bit
    weights on save, so the saved adapter is whole (PEFT's and Accelerate's ZeRO-3 recipe)."""
    zero: dict[str, Any] = {"stage": ZERO_STAGES[distributed], "overlap_comm": False, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if distributed == "zero3":
        zero |= {"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                 "stage3_gather_16bit_weights_on_model_save": True}
    return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": dtype == "bf16" and device == "cuda"},
            "fp16": {"enabled": dtype == "fp16" and device == "cuda"},
            "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False}


def deepspeed_config_path(context: Path) -> Path:
    """Where the DeepSpeed configuration lives: beside the worker's context, in the train key's work
    folder, which every node sees (the store is shared)."""
    return context.parent / "deepspeed.json"


def sharing_environment(distributed: str, device: str = "cuda") -> dict[str, str]:
    """Settings the libraries read from the environment only. Under FSDP: leave the rotary embedding
    out of FSDP's units, whose mixed precision would round its fp32 frequencies to bf16 at the first
    forward (the angles then drift with the position, and training would not see the positions
    export and eval see). Under ZeRO on CPU: DeepSpeed's CPU accelerator (it would look for CUDA)."""
    if distributed == "fsdp":
        return {"FSDP_IGNORED_MODULES": r".*\.rotary_emb"}
    if distributed in ZERO_STAGES and device == "cpu":
        return {"DS_ACCELERATOR": "cpu"}
    return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_launcher(command: list[str], env: dict[str, str]) -> int:
    """Run `accelerate launch` to its end; its exit code. Interrupted (Ctrl-C, SIGTERM), it is stopped
    with its workers first."""
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except BaseException:
        stop_launcher(process)
        raise


def stop_launcher(launcher: subprocess.Popen[bytes], patience: float = 60) -> None:
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
