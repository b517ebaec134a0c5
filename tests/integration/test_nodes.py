"""Training across nodes: two "nodes" of one gloo process each on 127.0.0.1, each a `runner run` of
its own, meeting at one c10d rendezvous through `accelerate launch`; node 0 writes the shared store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.machine.world import free_port
from tests.integration.conftest import ROOT, Tiny, only_artifact, runner
from tests.integration.test_crash import rows_in

# One thread per process on both sides: on CPU the thread count is in the train key (float sums follow
# it), and torch's default differs (two processes share a node's cores; one process per "node" gets all).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _two_process_spec(tiny: Tiny, folder: Path, epochs: int = 2) -> Path:
    spec = folder / "two.yaml"
    spec.write_text(tiny.spec.read_text().replace("seed: 7", "seed: 7\nhardware: {processes: 2}")
                    .replace("epochs: 2", f"epochs: {epochs}"))
    return spec


def _store(tiny: Tiny, store: Path) -> Path:
    for stage in ("model", "data"):  # shared with the tiny run: same keys
        (store / stage).mkdir(parents=True)
        (store / stage / tiny.artifacts[stage].name).symlink_to(tiny.artifacts[stage])
    return store


def _node(spec: Path, store: Path, rank: int, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--only", "train",
                             "--nodes", "2", "--node-rank", str(rank), "--master", f"127.0.0.1:{port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=ONE_THREAD)


def _record(store: Path) -> dict[str, object]:
    return json.loads(sorted((store / "runs").glob("*.json"))[-1].read_text())


def test_two_nodes_give_the_adapter_two_processes_on_one_node_give(tiny: Tiny, tmp_path: Path) -> None:
    spec = _two_process_spec(tiny, tmp_path)
    one = _store(tiny, tmp_path / "one")
    started = time.time()
    done = runner("run", str(spec), "--store", str(one), "--only", "train", env=ONE_THREAD)
    one_node = time.time() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = _store(tiny, tmp_path / "two")
    port = free_port()
    started = time.time()
    follower = _node(spec, two, 1, port)
    leader = _node(spec, two, 0, port)
    try:
        out0, out1 = leader.communicate(timeout=600)[0], follower.communicate(timeout=120)[0]
    finally:
        _kill_trees(leader, follower)
    two_nodes = time.time() - started
    assert leader.returncode == 0 and follower.returncode == 0, out0[-3000:] + out1[-3000:]
    assert "launching 1 of 2 processes on node 0 of 2" in out0 and "trained in 2 processes (gloo) on 2 nodes" in out0
    assert "node 1: trained its 1 process(es); node 0 writes the store" in out1
    a, b = only_artifact(one, "train"), only_artifact(two, "train")
    # The same key (hardware.processes is the world size, however spread) and the same bytes: gloo sums
    # the two gradients in the same order whether the peer is a process or a node away.
    assert a.name == b.name
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (a / "adapter" / name).read_bytes() == (b / "adapter" / name).read_bytes(), name
    assert _record(one)["world"] == {"world_size": 2, "nodes": 1, "processes_per_node": 2, "backend": "gloo",
                                     "sharding": "ddp", "device": "cpu"}
    assert _record(two)["world"] == {"world_size": 2, "nodes": 2, "processes_per_node": 1, "backend": "gloo",
                                     "sharding": "ddp", "device": "cpu"}
    assert not (two / "runs").exists() or len(list((two / "runs").glob("*.json"))) == 1  # node 1 wrote no record
    print(f"one node, 2 processes: {one_node:.1f} s; two nodes of 1 process: {two_nodes:.1f} s")


def _tree(root: int) -> list[int]:
    """root and every process below it (the launcher and workers a node started)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


def _kill_trees(*nodes: subprocess.Popen[str]) -> None:
    """Each node still running, with everything it started (a failed assertion leaves none behind)."""
    for proc in nodes:
        for pid in reversed(_tree(proc.pid)) if proc.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_node_killed_mid_run_stops_the_other_with_one_line_and_the_rerun_resumes(tiny: Tiny, tmp_path: Path) -> None:
    spec = _two_process_spec(tiny, tmp_path, epochs=3)
    store = _store(tiny, tmp_path / "store")
    port = free_port()
    follower, leader = _node(spec, store, 1, port), _node(spec, store, 0, port)
    try:
        deadline = time.time() + 300
        while not rows_in(store, 12, checkpoint=True)() and leader.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert leader.poll() is None, leader.communicate()[0][-3000:]
        for pid in reversed(_tree(follower.pid)):  # the whole node: its runner, launcher and worker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.time()
        out = leader.communicate(timeout=120)[0]
        print(f"node 0 stopped {time.time() - killed:.1f} s after node 1 was killed")
    finally:
        _kill_trees(leader, follower)
    follower.communicate(timeout=30)
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert leader.returncode == 5 and len(errors) == 1, out[-3000:]
    assert "training across 2 nodes stopped" in errors[0] and "resumes from the last checkpoint" in errors[0]
    port = free_port()
    follower, leader = _node(spec, store, 1, port), _node(spec, store, 0, port)
    started = time.time()
    try:
        out0, out1 = leader.communicate(timeout=600)[0], follower.communicate(timeout=120)[0]
    finally:
        _kill_trees(leader, follower)
    print(f"rerun: {time.time() - started:.1f} s")
    assert leader.returncode == 0 and follower.returncode == 0, out0[-3000:] + out1[-3000:]
    assert "train: resuming from checkpoint-" in out0, out0[-3000:]
    assert len(list(only_artifact(store, "train").glob("adapter/*.safetensors"))) == 1
