"""`runner sweep --on ray` without `--address`: a Ray started on this machine for the sweep, the two variants
run as its tasks, the comparison written, and that Ray stopped afterwards, none of its processes left."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.integration.conftest import ROOT
from tests.integration.test_cluster_sweep import _built_once, _comparisons
from tests.integration.test_sweep_run import SPEC


def _marked(mark: bytes) -> dict[int, str]:
    """pid -> command line of each process whose environment holds `mark`: the sweep's and every process
    it started (Ray's GCS, raylet and workers inherit it), none of anyone else's. Not `ray status`: that
    reports any Ray on this machine, another user's included."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if mark in environ.read_bytes():
                found[int(environ.parent.name)] = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
    return found


def _ray_processes(mark: bytes) -> dict[int, str]:
    return {pid: line for pid, line in _marked(mark).items() if "gcs_server" in line or "raylet" in line
            or "ray::" in line or "default_worker" in line}


def test_a_sweep_on_a_ray_it_starts_itself_finishes_compares_and_leaves_no_ray_running(tmp_path: Path) -> None:
    spec, output = tmp_path / "sweep.yaml", tmp_path / "sweep.out"
    spec.write_text(SPEC)
    mark = f"runner-test-{uuid.uuid4().hex}"
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    # A fresh Ray temp folder and no RAY_ADDRESS: ray.init() finds no cluster to join and starts its own.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp),
        # A Ray that ray.init() starts turns token authentication on and writes ~/.ray/auth_token into the
        # home folder, where it outlives the test (and turns tokens on for every later `ray start`).
        "RAY_AUTH_MODE": "disabled",
        "RUNNER_TEST_MARK": mark}
    seen: dict[int, str] = {}
    started = time.time()
    with output.open("w") as out:
        sweep = subprocess.Popen([sys.executable, "-m", "runner", "sweep", str(spec), "--set", "lora.r=4,8", "--store",
                                  str(tmp_path / "store"), "--on", "ray"], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        while sweep.poll() is None and time.time() - started < 900:
            seen |= _ray_processes(mark.encode())  # the check below can fail: while it runs, they are there
            time.sleep(0.5)
        seconds = time.time() - started
        deadline = time.time() + 60  # Ray's processes go once the driver's ray.shutdown() has told them
        while (left := _ray_processes(mark.encode())) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        if sweep.poll() is None:
            sweep.terminate()
            sweep.wait(timeout=60)
        for pid in _marked(mark.encode()):  # only what this test started, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    text = output.read_text(errors="replace")
    assert sweep.returncode == 0, text[-4000:]
    assert "2 variant(s) as Ray tasks on a local Ray" in text, text[-4000:]
    assert "sweep: sweep-test-r4 finished" in text and "sweep: sweep-test-r8 finished" in text, text[-4000:]
    assert any("gcs_server" in line for line in seen.values()) and any("raylet" in line for line in seen.values()), seen
    assert not left, left
    _built_once(tmp_path / "store")
    assert [c["run"] for c in _comparisons(tmp_path / "store")] == ["sweep-test-r8"]
    print(f"two-variant sweep on a local Ray it started: {seconds:.1f} s; Ray processes seen: {len(seen)}")
