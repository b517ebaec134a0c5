"""Byte-identical results at one key, whatever the environment's thread count: on CPU the profile's
thread count is in the train key (float sums follow it), and the train stage sets torch to exactly
that count, so OMP_NUM_THREADS in the environment can change the key but never the bytes of a key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core.stage import StageContext
from runner.machine.profile import Profile
from runner.spec.typed import load_spec
from runner.stages.train.launch import write_context
from tests.integration.conftest import ROOT, Tiny, runner, statuses

ADAPTER = Path("adapter") / "adapter_model.safetensors"


def default_env() -> dict[str, str]:
    """This environment without the variables torch reads its default thread count from."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def tiny_profile(tiny: Tiny) -> Profile:
    """The profile the tiny run's train stage was built with, from its run record."""
    key = tiny.artifacts["train"].name
    for path in (tiny.store / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if any(s["stage"] == "train" and s["key"] == key and s["action"] == "ran" for s in record["stages"]):
            return Profile(**{**record["profile"], "reasons": tuple(record["profile"]["reasons"])})
    raise AssertionError(f"no run record built train {key[:12]}")


def test_the_default_thread_count_is_torchs() -> None:
    """The probe counts cores without importing torch; torch, asked in a fresh process, agrees."""
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 1):
        pytest.skip("pinned to some CPUs: the profile counts only those, torch counts them all")
    check = ("import torch; from runner.machine.probe import probe_machine; from runner.machine.profile import resolve_profile; from runner.spec.typed import load_spec;"
             "print(torch.get_num_threads(), resolve_profile(load_spec('specs/smoke.yaml'), probe_machine()).threads)")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=default_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    torch_threads, profile_threads = done.stdout.split()
    assert profile_threads == torch_threads


def test_another_thread_count_is_another_key(tiny: Tiny) -> None:
    if tiny_profile(tiny).threads == 1:
        pytest.skip("the tiny run already trained on one thread")
    done = runner("plan", str(tiny.spec), "--store", str(tiny.store), env={**default_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "1 CPU thread: OMP_NUM_THREADS=1 (in the keys" in done.stdout
    status = statuses(done.stdout)
    assert (status["model"], status["data"]) == ("cached", "cached"), done.stdout
    assert status["train"] == "stale" and tiny.artifacts["train"].name[:12] not in done.stdout, done.stdout
    assert f"profile.threads {tiny_profile(tiny).threads} → 1" in done.stdout  # plan says why it reruns


def test_one_key_gives_one_adapter_whatever_omp_num_threads_says(tiny: Tiny, tmp_path: Path) -> None:
    """The tiny run's train stage again, in a worker process (the path launched training takes)
    whose environment says one thread: the stage sets the profile's count, so the bytes are equal."""
    profile = tiny_profile(tiny)
    if profile.threads == 1:
        pytest.skip("the tiny run already trained on one thread: nothing to differ from")
    ctx = StageContext(spec=load_spec(tiny.spec), profile=profile, out=tmp_path / "out", work=tmp_path / "work",
                       upstream={"model": tiny.artifacts["model"], "data": tiny.artifacts["data"]}, files={},
                       log=print)
    ctx.out.mkdir()
    env = {**default_env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "runner.stages.train.worker", str(write_context(ctx))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (ctx.out / ADAPTER).read_bytes() == (tiny.artifacts["train"] / ADAPTER).read_bytes()
