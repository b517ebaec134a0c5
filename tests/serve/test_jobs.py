"""The job side across interruptions: checkpoints listed in OpenAI's shape, a cancelled job's spec
resumed from its checkpoint when submitted again, and a server killed mid-job that lists its jobs
after a restart, the running one failed with the reason (and its orphaned `runner run` stopped)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from conftest import KEY, ROOT, Server, _wait, ended, free_port, until
from spec import tiny_spec


def events(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)]


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_a_cancelled_job_keeps_its_checkpoints_and_its_spec_resumes_from_them(client: openai.OpenAI) -> None:
    spec = tiny_spec("serve-resume", max_steps=400)
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file="unused", extra_body={"spec": spec})
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []  # queued: nothing trained yet
    listed = until(lambda: list(client.fine_tuning.jobs.checkpoints.list(job.id)), "a checkpoint while training")
    assert isinstance(listed, list) and listed[0].step_number >= 10 and listed[0].fine_tuning_job_id == job.id
    client.fine_tuning.jobs.cancel(job.id)
    state = until(lambda: ended(client, job.id), "the cancel")
    assert getattr(state, "status", None) == "cancelled"
    kept = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert kept and kept[0].step_number >= listed[0].step_number  # the cancel itself saved one
    assert kept[0].metrics.step == kept[0].step_number and kept[0].fine_tuned_model_checkpoint.startswith("train/")
    again = client.fine_tuning.jobs.create(model="serve-tiny", training_file="unused", extra_body={"spec": spec})
    line = until(lambda: next((e for e in events(client, again.id) if "resuming from" in e), None), "the resume")
    assert f"checkpoint-{kept[0].step_number}" in str(line)
    client.fine_tuning.jobs.cancel(again.id)
    assert getattr(until(lambda: ended(client, again.id), "the second cancel"), "status", None) == "cancelled"
    assert "serve-resume" not in {m.id for m in client.models.list()}  # a cancelled job exports nothing
    with pytest.raises(openai.NotFoundError):
        list(client.fine_tuning.jobs.checkpoints.list("ftjob-nosuchjob"))


@contextmanager
def serving(store: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], openai.OpenAI]]:
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(store), "--port", str(port),
                                    "--api-key", KEY, "--data-dir", str(ROOT / "data")],  # the demo data its specs name
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}", process, log)
        yield process, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def alive(pid: int, job_id: str) -> bool:
    try:
        return job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_server_killed_mid_job_lists_its_jobs_after_a_restart(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "serve.log"
    with serving(store, log) as (process, client):
        job = client.fine_tuning.jobs.create(model="x", training_file="unused",
                                             extra_body={"spec": tiny_spec("serve-killed", max_steps=400)})
        until(lambda: any("train: running" in e for e in events(client, job.id)), "training to start")
        pid = client.fine_tuning.jobs.retrieve(job.id).model_extra["pid"]  # type: ignore[index]
        process.send_signal(signal.SIGKILL)  # no cleanup of any kind: as a crash or an OOM kill
        process.wait()
    assert alive(pid, job.id)  # the job's process outlived its server
    try:
        with serving(store, log) as (_, client):
            jobs = {j.id: j for j in client.fine_tuning.jobs.list()}
            assert list(jobs) == [job.id]
            killed = jobs[job.id]
            assert killed.status == "failed" and killed.error is not None
            assert "server stopped" in killed.error.message and "resume" in killed.error.message
            until(lambda: not alive(pid, job.id), "the orphaned runner run to stop", 240)  # a 2-core CI box under load
            assert client.fine_tuning.jobs.retrieve(job.id).status == "failed"  # and it stays so
    finally:
        if alive(pid, job.id):
            import os

            os.kill(pid, signal.SIGKILL)  # exactly the job process this test's server started


def test_sigterm_to_the_server_stops_its_jobs_training_and_says_so(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "serve.log"
    with serving(store, log) as (process, client):
        job = client.fine_tuning.jobs.create(model="x", training_file="unused",
                                             extra_body={"spec": tiny_spec("serve-sigterm", max_steps=400)})
        until(lambda: any("train: running" in e for e in events(client, job.id)), "training to start")
        until(lambda: list((store / "train" / ".work").glob("*/checkpoints/checkpoint-*")), "a first checkpoint")
        pid = client.fine_tuning.jobs.retrieve(job.id).model_extra["pid"]  # type: ignore[index]
        try:
            process.send_signal(signal.SIGTERM)  # as `docker stop`, systemd or Ctrl-C's cousin
            stopped = time.time()
            until(lambda: not alive(pid, job.id), "the job's runner run to stop", 20)  # a step, a checkpoint
            print(f"the job's runner run stopped {time.time() - stopped:.1f} s after the server's SIGTERM")
            process.wait(timeout=60)
        finally:
            if alive(pid, job.id):
                import os

                os.kill(pid, signal.SIGKILL)  # exactly the job process this test's server started
    record = json.loads((store / "jobs" / f"{job.id}.json").read_text())
    assert record["status"] == "failed" and record["error"]["code"] == "server_stopped"
    assert "stopped at a checkpoint" in record["error"]["message"] and record["finished_at"] is not None
    kept = sorted((store / "train" / ".work").glob("*/checkpoints/checkpoint-*"))
    assert kept  # what it finished stays for the resume
