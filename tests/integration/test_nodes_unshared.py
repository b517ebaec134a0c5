"""Training across nodes when the nodes do not meet as they should, each stopped with its one line: a node
other than 0 whose node 0 never reaches the train stage gives up after its patience (RUNNER_FOLLOW_PATIENCE
shortens it), and two nodes whose stores are not one filesystem stop in the workers' check before training."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from runner.machine.world import free_port
from tests.integration.conftest import ROOT, TINY, Tiny
from tests.integration.test_nodes import ONE_THREAD, _kill_trees, _node, _store, _two_process_spec


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error")]


def test_a_follower_whose_node_0_never_starts_gives_up_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(TINY.replace("seed: 7", "seed: 7\nhardware: {processes: 2}"))
    store = tmp_path / "store"
    started = time.time()
    follower = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--nodes", "2",
                               "--node-rank", "1", "--master", f"127.0.0.1:{free_port()}"], cwd=ROOT, text=True,
                              capture_output=True, timeout=300, env=ONE_THREAD | {"RUNNER_FOLLOW_PATIENCE": "3"})
    waited = time.time() - started
    out = follower.stdout + follower.stderr
    assert follower.returncode == 5 and _errors(out) == [
        f"error: node 1: node 0 did not start training in {store} within 3 s; is node 0 running, and is --store on a "
        "filesystem every node sees (the same path on each)?"], out[-3000:]
    assert f"node 1: waiting for node 0 to reach the train stage in {store}" in out and "Traceback" not in out
    assert waited < 120, waited  # the 3 s, not the half hour


def _share_as_an_unshared_disk(leader_store: Path, follower_store: Path, patience: float = 300) -> None:
    """Once node 0 wrote its launch.json, the same file in the follower's store with every path moved
    there: what a node whose --store is its own disk at the same path sees (its workers write there)."""
    deadline = time.time() + patience
    while not (found := list((leader_store / "train" / ".work").glob("*/launch.json"))):
        assert time.time() < deadline, "node 0 never wrote launch.json"
        time.sleep(0.2)
    time.sleep(0.5)  # written whole: one write_text, but let it land
    text = found[0].read_text("utf-8").replace(str(leader_store), str(follower_store))
    json.loads(text)
    mine = follower_store / "train" / ".work" / found[0].parent.name / "launch.json"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text(text, "utf-8")


def test_nodes_whose_stores_differ_stop_before_training_saying_the_store_is_not_shared(tiny: Tiny,
                                                                                          tmp_path: Path) -> None:
    spec = _two_process_spec(tiny, tmp_path)
    leader_store, follower_store = _store(tiny, tmp_path / "node0"), _store(tiny, tmp_path / "node1")
    port = free_port()
    leader, follower = _node(spec, leader_store, 0, port), _node(spec, follower_store, 1, port)
    try:
        _share_as_an_unshared_disk(leader_store, follower_store)
        out0, out1 = leader.communicate(timeout=300)[0], follower.communicate(timeout=120)[0]
    finally:
        _kill_trees(leader, follower)
    marks = leader_store / "train" / ".work"
    line = ("error: train: the store is not on a filesystem every node sees: rank 0 cannot see the markers rank(s) 1 "
            f"wrote in {marks}")
    assert leader.returncode == 5 and len(_errors(out0)) == 1 and _errors(out0)[0].startswith(line), out0[-3000:]
    assert _errors(out0)[0].endswith("put --store on a shared filesystem (NFS, Lustre, ...) mounted at the same path "
                                     "on every node"), out0[-3000:]
    assert follower.returncode == 5 and len(_errors(out1)) == 1, out1[-3000:]
    assert "the store is not on a filesystem every node sees" in _errors(out1)[0], out1[-3000:]
    assert not any((leader_store / "train").glob("*/manifest.json"))  # nothing trained, nothing stored
