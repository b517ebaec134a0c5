"""`runner sweep --on ray` on a real Ray cluster of two nodes (a head and a worker, two `ray start`
processes on 127.0.0.1, one CPU each, so the two variants run one on each), and `--on slurm` through
submitit's local executor: the shared stages are built once, and the comparison is the local sweep's."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.machine.world import free_port
from tests.integration.conftest import ROOT, runner
from tests.integration.test_sweep_run import SPEC, STAGES

RAY = str(Path(sys.executable).parent / "ray")
# Every Ray process of these tests, nodes and drivers alike. Token authentication off, explicitly: a Ray
# that ray.init() started on this machine (a local sweep) leaves ~/.ray/auth_token behind, and with it
# there `ray start --head` turns tokens on while a joining worker does not ("Authentication token is
# missing or incorrect"). These clusters listen on 127.0.0.1 only and live for one test.
LOOPBACK_RAY = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # a session of its own: the node and every process it starts, stopped at the end
        return subprocess.Popen([RAY, "start", *args, "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
                                 "--object-store-memory", "80000000", "--block"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _until_started(node: subprocess.Popen[bytes], log: Path, patience: float = 180) -> None:
    deadline = time.time() + patience
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert node.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def _stop(node: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as `ray stop` sends it, to this node only (others' Ray on this machine untouched); its
    process group killed if it has not gone within 30 s."""
    if node.poll() is None:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(node.pid, signal.SIGKILL)  # anything the node started and left behind
    except (ProcessLookupError, PermissionError):
        pass
    node.wait()


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A head and one worker node on 127.0.0.1; their address; both stopped after the test."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, **LOOPBACK_RAY}
    address = f"127.0.0.1:{free_port()}"
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(_start(["--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
                             "--include-dashboard", "false", "--temp-dir", str(temp)], temp / "head.log", env))
        _until_started(nodes[0], temp / "head.log")
        (temp / "w").mkdir()  # the worker's own logs: one folder for both would show each line twice
        nodes.append(_start(["--address", address, "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp / "w")],
                            temp / "worker.log", env))
        _until_started(nodes[1], temp / "worker.log")
        yield address
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def executed(output: str) -> dict[str, int]:
    """How many times each stage was built: distinct (process, stage, key) in what Ray relayed."""
    found = set(re.findall(rf"pid=(\d+).*?\] ({'|'.join(STAGES)}): running ([0-9a-f]{{12}})", output))
    return {stage: sum(1 for _, s, _ in found if s == stage) for stage in STAGES}


def _comparisons(store: Path) -> list[dict[str, object]]:
    """The sweep's comparison, without what differs between two stores (paths, times)."""
    found = json.loads((next((store / "sweeps").iterdir()) / "compare" / "comparison.json").read_text())
    return [{k: v for k, v in c.items() if k in ("run", "reference", "n", "test", "holm_p")} for c in found["comparisons"]]


def _built_once(store: Path) -> None:
    for stage, count in zip(STAGES, (1, 1, 2, 2, 2)):
        assert len([p for p in (store / stage).iterdir() if (p / "manifest.json").is_file()]) == count, stage


def _kill_a_task_once_it_builds(output: Path, ray_nodes: str, patience: float = 300) -> int:
    """SIGKILL the Ray worker running a variant once that variant is building a stage (its worker,
    as a node failure would take it; the `runner run` below it gets SIGTERM from the kernel)."""
    deadline = time.time() + patience
    while not (found := re.search(r"pid=(\d+)\S* \[runner\] (model|data): running", output.read_text(errors="replace"))):
        assert time.time() < deadline, output.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    pid = int(found.group(1))
    assert "ray::" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"), ray_nodes  # a Ray worker
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_sweep_on_a_two_node_ray_cluster_shares_stages_survives_a_killed_worker_and_compares_as_a_local_sweep(
        ray_cluster: str, tmp_path: Path) -> None:
    spec, output = tmp_path / "sweep.yaml", tmp_path / "ray.out"
    spec.write_text(SPEC)
    env = {**os.environ, **LOOPBACK_RAY}
    started = time.time()
    with output.open("w") as out:
        sweep = subprocess.Popen([sys.executable, "-m", "runner", "sweep", str(spec), "--set", "lora.r=4,8", "--store",
                                  str(tmp_path / "ray"), "--on", "ray", "--address", ray_cluster], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        killed = _kill_a_task_once_it_builds(output, ray_cluster)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.terminate()
            sweep.wait(timeout=60)
    ray_seconds = time.time() - started
    text = output.read_text(errors="replace")
    assert sweep.returncode == 0, text[-4000:]
    assert "as Ray tasks on " + ray_cluster + " (2 CPUs, 0 GPU each)" in text, text[-4000:]
    # Ray started the killed variant again (a new worker); the stages its first try had not finished,
    # it built then; model and data were still built once in all, though both variants started together.
    assert "sweep: sweep-test-r4 finished" in text and "sweep: sweep-test-r8 finished" in text
    # Three workers ran variants: the killed one, the other variant's, and the retry's (a new worker:
    # the other is still busy with its own variant when Ray sees the death).
    assert killed in (workers := {int(p) for p in re.findall(r"pid=(\d+)\S* \[runner\]", text)}), text[-4000:]
    assert len(workers) >= 3, (workers, text[-4000:])
    assert sum(executed(text).values()) >= 8 and executed(text)["train"] >= 2, text[-4000:]
    _built_once(tmp_path / "ray")

    started = time.time()
    local = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(tmp_path / "local"), "--jobs", "2", env=env)
    local_seconds = time.time() - started
    assert local.returncode == 0, (local.stdout + local.stderr)[-4000:]
    assert _comparisons(tmp_path / "ray") == _comparisons(tmp_path / "local") != []
    print(f"two-variant sweep: on a two-node Ray cluster, a worker killed {ray_seconds:.1f} s; "
          f"locally with --jobs 2 {local_seconds:.1f} s")


def test_a_sweep_on_slurm_runs_through_submitit_s_local_executor(tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RUNNER_SUBMITIT_CLUSTER": "local"}
    done = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(tmp_path / "store"), "--on", "slurm", env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "2 variant(s) submitted as local job(s)" in out and "sweep: sweep-test-r8 finished" in out, out[-4000:]
    _built_once(tmp_path / "store")
    assert [c["run"] for c in _comparisons(tmp_path / "store")] == ["sweep-test-r8"]
    logs = "".join(p.read_text() for p in (next((tmp_path / "store" / "sweeps").iterdir()) / "slurm").rglob("*.out"))
    assert "train: running" in logs  # each variant's `runner run`, in its job's log


def test_sweep_on_slurm_without_sbatch_says_so_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_SUBMITIT_CLUSTER"} | {"PATH": "/usr/bin:/bin"}
    done = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(tmp_path / "store"), "--on", "slurm", env=env)
    assert done.returncode != 0 and "no `sbatch` here" in done.stderr and "Traceback" not in done.stderr, done.stderr
