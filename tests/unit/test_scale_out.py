"""Training across nodes and sweeps on a cluster, the light part: the world the command line describes,
the `accelerate launch` each node runs, and the SLURM array job a sweep would submit (no SLURM here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core.errors import ProfileError
from runner.core.records import trained_world
from runner.experiments.cluster import sbatch_script, slurm_parameters
from runner.machine.probe import Gpu, Probe
from runner.machine.world import Nodes, launch_command, launch_failure, nodes_from_environment, nodes_given

ROOT = Path(__file__).resolve().parents[2]


def test_one_node_when_nothing_is_said() -> None:
    assert nodes_given(None, None, None) == Nodes() and not Nodes().many
    assert nodes_from_environment({}) == Nodes()


def test_the_command_line_world_round_trips_through_the_environment() -> None:
    nodes = nodes_given(2, 1, "10.0.0.1:29500")
    assert nodes == Nodes(2, 1, "10.0.0.1", 29500) and nodes.many
    assert nodes_from_environment(nodes.environment()) == nodes
    assert nodes_given(2, 0, "[fd00::1]:29500").address == "fd00::1"


@pytest.mark.parametrize(("count", "rank", "master", "says"), [
    (2, 2, "h:1", "--node-rank 2 must be between 0 and 1"),
    (2, 0, None, "--nodes above 1 needs --master HOST:PORT"),
    (2, 0, "host", "write HOST:PORT"),
    (2, 0, "host:port", "write HOST:PORT"),
])
def test_a_wrong_world_is_one_line_saying_what_to_write(count: int, rank: int, master: str | None, says: str) -> None:
    with pytest.raises(ProfileError, match=says.replace("[", r"\[")):
        nodes_given(count, rank, master)


def test_processes_are_the_world_size_split_evenly_over_nodes() -> None:
    assert Nodes(2, 0, "h", 1).per_node(4) == 2
    with pytest.raises(ProfileError, match="set hardware.processes to a multiple of 2"):
        Nodes(2, 0, "h", 1).per_node(3)


def test_the_profile_sees_every_node_like_this_one() -> None:
    probe = Probe(gpus=(Gpu("H100", (9, 0), 81_000, 80_000),), cores=16, ram_mib=128_000)
    assert Nodes().cluster_probe(probe) == probe
    seen = Nodes(2, 0, "h", 1).cluster_probe(probe)
    assert len(seen.gpus) == 2 and seen.cores == 32


def test_each_node_launches_its_share_into_node_0_s_rendezvous(tmp_path: Path) -> None:
    command = launch_command(4, "ddp", Nodes(2, 1, "10.0.0.1", 29500), tmp_path / "launch.json")
    joined = " ".join(command)
    assert "--num_processes 4 --num_machines 2 --machine_rank 1" in joined
    assert "--main_process_ip 10.0.0.1 --main_process_port 29500" in joined and "--multi_gpu" in joined
    assert command[-3:] == ["-m", "runner.stages.train.worker", str(tmp_path / "launch.json")]
    one = " ".join(launch_command(2, "fsdp", Nodes(), tmp_path / "launch.json"))
    assert "--num_machines 1" in one and "--use_fsdp" in one and "--machine_rank" not in one


def test_a_failed_launch_says_what_the_worker_said_else_what_is_known(tmp_path: Path) -> None:
    nodes = Nodes(2, 0, "h", 1)
    assert "training across 2 nodes stopped (exit 1)" in launch_failure(tmp_path, 2, nodes, 1)
    assert "the 2 accelerate processes failed (exit 1)" in launch_failure(tmp_path, 2, Nodes(), 1)
    (tmp_path / "stopped-node-0.txt").write_text("train: the store is not on a filesystem every node sees\n")
    assert launch_failure(tmp_path, 2, nodes, 1) == "train: the store is not on a filesystem every node sees"


def test_the_sweep_s_slurm_job_is_one_array_of_its_variants_with_a_requeue_signal(tmp_path: Path) -> None:
    script = sbatch_script(tmp_path / "slurm" / "%j", 3, slurm_parameters(3, gpus=1, cpus=4, hours=24))
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --nodes=1", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120", "#SBATCH --job-name=runner-sweep"):
        assert line in script.splitlines(), line
    assert "srun" in script and "-m submitit.core._submit" in script
    assert "--gpus-per-node" not in sbatch_script(tmp_path, 2, slurm_parameters(2, gpus=0, cpus=2, hours=1))


def test_the_run_record_takes_the_world_from_the_train_artifact_and_nothing_else(tmp_path: Path) -> None:
    world = {"world_size": 2, "nodes": 2, "processes_per_node": 1, "backend": "gloo", "sharding": "ddp", "device": "cpu"}
    (tmp_path / "summary.json").write_text(json.dumps({"seconds": 3.0, "world": world}))
    assert trained_world(tmp_path) == world
    for hostile in ("[]", '{"world": [2]}', "{", '{"seconds": 1}'):
        (tmp_path / "summary.json").write_text(hostile)
        assert trained_world(tmp_path) is None, hostile
    assert trained_world(None) is None and trained_world(tmp_path / "absent") is None


@pytest.mark.parametrize("rank", [0, 1])
def test_a_world_the_nodes_cannot_split_stops_every_node_before_any_stage(rank: int, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "runner", "run", "specs/smoke.yaml", "--store", str(tmp_path),
                           "--set", "hardware.processes=1", "--nodes", "2", "--node-rank", str(rank),
                           "--master", "127.0.0.1:29500"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "hardware.processes 1 cannot be split evenly over --nodes 2" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "model").exists()  # nothing built, and node 1 did not wait for node 0
