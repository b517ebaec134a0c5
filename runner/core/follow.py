"""`runner run` on a node other than node 0: it joins the training node 0 launches, and writes nothing.

Node 0 runs the stages as ever (model and data built once, in the shared store) and, at the train
stage, writes the stage's context (launch.json) in the train key's work folder and launches its
processes. This node plans the same spec against the same store to find that key, waits for the
context to appear, and launches its own share of the processes into the same rendezvous. Waiting
for node 0's files is also the first check that the store is shared; the workers check the other
direction (runner.stages.train.launch.check_shared_store).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from runner.core.errors import StageError
from runner.core.execute import registered_stages
from runner.core.plan import plan
from runner.core.store import Store
from runner.machine.profile import Profile
from runner.machine.world import Nodes, failure_file, launch_command, launch_failure, run_launcher, sharing_environment
from runner.spec.typed import Spec

PATIENCE = 1800  # seconds to wait for node 0 to reach the train stage: it builds the model and data first


def follow(spec: Spec, profile: Profile, store: Store, nodes: Nodes, log: Callable[[str], None],
           patience: float | None = None) -> str:
    """Train this node's share; returns what happened, in a line. Waits up to `patience` seconds
    (None: `RUNNER_FOLLOW_PATIENCE` where set, else PATIENCE) for node 0 to reach the train stage."""
    local = nodes.per_node(profile.processes)
    context = _wait_for_context(spec, profile, store, nodes, log, _patience() if patience is None else patience)
    if context is None:
        return f"node {nodes.rank}: train is already in the store; nothing to do"
    settings = json.loads(context.read_text("utf-8"))["profile"]
    failure_file(context.parent, nodes).unlink(missing_ok=True)
    env = {**os.environ, **sharing_environment(settings["distributed"]), "OMP_NUM_THREADS": str(settings["threads"])}
    log(f"train: launching {local} of {profile.processes} processes on node {nodes.rank} of {nodes.count}, "
        f"rendezvous at {nodes.address}:{nodes.port}")
    code = run_launcher(launch_command(profile.processes, settings["distributed"], nodes, context), env)
    if code != 0:
        raise StageError(launch_failure(context.parent, profile.processes, nodes, code))
    return f"node {nodes.rank}: trained its {local} process(es); node 0 writes the store"


def _patience() -> float:
    """`RUNNER_FOLLOW_PATIENCE` (whole seconds) where set: longer for a node 0 with much data to build
    first, shorter in the tests."""
    value = os.environ.get("RUNNER_FOLLOW_PATIENCE", "")
    return int(value) if value.isdigit() and int(value) > 0 else PATIENCE


def _wait_for_context(spec: Spec, profile: Profile, store: Store, nodes: Nodes, log: Callable[[str], None],
                      patience: float) -> Path | None:
    """launch.json of the train key once node 0 wrote it; None when train is already built."""
    stages = registered_stages()
    deadline = time.monotonic() + patience
    told = False
    while True:
        step = next(s for s in plan(stages, spec, profile, store, None) if s.stage == "train")
        if step.status == "cached":
            return None
        context = store.work_dir("train", step.key) / "launch.json" if step.key is not None else None
        # A launch.json left by an earlier, stopped try is there before node 0 gets back to training:
        # node 0's launcher listening at --master is what says this try's context is written.
        if context is not None and context.is_file() and _listening(nodes.address, nodes.port):
            return context
        if not told:
            log(f"node {nodes.rank}: waiting for node 0 to reach the train stage in {store.root}")
            told = True
        if time.monotonic() > deadline:
            raise StageError(f"node {nodes.rank}: node 0 did not start training in {store.root} within {patience:.0f} s; "
                             "is node 0 running, and is --store on a filesystem every node sees (the same path on each)?")
        time.sleep(1)


def _listening(address: str, port: int) -> bool:
    """Whether node 0's rendezvous (the c10d store its launcher hosts) accepts connections yet."""
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False
