"""Fine-tuning jobs in OpenAI's shapes: each a `python -m runner run SPEC --store STORE` in its own
process (the command line's locks, crash safety and run record), one at a time, kept as JSON under
`<store>/jobs/` so a restarted server lists them. A job built from OpenAI's fields first checks its
chat uploads (`validating_files`), then queues. Uploads are runner.serve.uploads'; the routes are
runner/serve/routes/jobs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from runner.serve.confine import job_env
from runner.serve.jobs.outputs import Events, metric_rows, step_metrics, trained_tokens
from runner.serve.uploads import FileStore

ENDED = ("succeeded", "failed", "cancelled")
STOP_WAIT = 30.0  # seconds a stopping server gives its job's `runner run` to save a checkpoint and exit
STOPPED = "the server stopped while the job was running"


class JobQueue:
    def __init__(self, store: Path, allow_push: bool = False) -> None:
        self.folder = store / "jobs"
        self.store = store
        self.allow_push = allow_push  # the operator's choice (`runner serve --allow-push`), never a client's
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running: tuple[str, subprocess.Popen[bytes], Events] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        for job in self.all():  # a job running when the server died: no process is watching it now
            if job["status"] == "running":
                self._orphaned(job)

    def _orphaned(self, job: dict[str, Any]) -> None:
        """Marked failed with the reason; its `runner run`, if it outlived the server, is stopped as Ctrl-C
        stops it (checkpoint, then exit), so it neither holds the store's lock nor trains unwatched."""
        stopped = ""
        pid = job.get("pid")
        if isinstance(pid, int) and _runs(pid, job["id"]):
            os.kill(pid, signal.SIGINT)
            stopped = " (its training process was stopped at a checkpoint)"
        self._update(job["id"], status="failed", finished_at=int(time.time()),
                     error={"code": "server_stopped", "param": None, "message": f"{STOPPED}{stopped}; submit the "
                            "same spec again to resume from its checkpoint"})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The server is stopping: the running job's `runner run` gets Ctrl-C's SIGINT (the training loop
        saves a checkpoint, then exits; the store keeps every finished stage), is killed if it has not
        exited within STOP_WAIT, and the job is marked failed with the reason. Queued jobs stay queued."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake.set()
        running = self._running
        if running is None:
            return
        job_id, process, events = running
        events.add(f"the server is stopping: job {job_id} is stopped at a checkpoint")
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if self._thread is not None:
            self._thread.join(5)  # its last log lines become events before the record is written
        self._finished(job_id, code, events, stopped=True)

    def path(self, job_id: str) -> Path:
        if not job_id.startswith("ftjob-") or not job_id[6:].isalnum():
            raise HTTPException(404, f"job {job_id!r} does not exist")
        return self.folder / f"{job_id}.json"

    def get(self, job_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path(job_id).read_text("utf-8"))
        except (OSError, ValueError):
            raise HTTPException(404, f"job {job_id!r} does not exist") from None
        return data

    def all(self) -> list[dict[str, Any]]:
        jobs = []
        for path in self.folder.glob("ftjob-*.json"):
            try:
                jobs.append(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(jobs, key=_created, reverse=True)

    def _update(self, job_id: str, only_if: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
        """The record with `fields` written (only while its status is one of `only_if`, when given)."""
        with self._lock:
            job = self.get(job_id)
            if only_if and job["status"] not in only_if:
                return job
            job |= fields
            tmp = self.path(job_id).with_suffix(".tmp")
            tmp.write_text(json.dumps(job, indent=1), "utf-8")
            os.replace(tmp, self.path(job_id))
            return job

    def submit(self, spec_text: str, model: str, training_file: str | None, shown: dict[str, Any] | None = None,
               checks: list[list[str]] | None = None) -> dict[str, Any]:
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        (self.folder / f"{job_id}.yaml").write_text(spec_text, "utf-8")
        job = {"id": job_id, "object": "fine_tuning.job", "model": model, "created_at": int(time.time()), "created_ns": time.time_ns(),
               "status": "validating_files" if checks else "queued", "fine_tuned_model": None, "finished_at": None,
               "error": None, "training_file": training_file, "validation_file": None, "hyperparameters": {},
               "result_files": [], "trained_tokens": None, "organization_id": "runner", "seed": 0,
               "checks": checks or []} | (shown or {})
        self.path(job_id).write_text(json.dumps(job, indent=1), "utf-8")
        Events(self.folder, job_id).add(f"Created fine-tuning job: {job_id}")
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in ENDED:
            raise HTTPException(400, f"job {job_id} already {job['status']}")
        job = self._update(job_id, cancel_requested=True)
        running = self._running
        if running and running[0] == job_id:
            running[1].send_signal(signal.SIGINT)  # as Ctrl-C: the training loop checkpoints, then exits
        else:
            job = self._update(job_id, ("queued", "validating_files"), status="cancelled", finished_at=int(time.time()))
        return job

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return Events(self.folder, job_id).listed(self.get(job_id)["created_at"])

    def _loop(self) -> None:
        while not self._stopping:
            jobs = self.all()
            checking = [j for j in jobs if j["status"] == "validating_files"]
            queued = [j for j in jobs if j["status"] == "queued"]
            if checking:
                self._validate(min(checking, key=_created))
            elif queued:
                self._run(min(queued, key=_created)["id"])
            else:
                self._wake.wait(1.0)
                self._wake.clear()

    def _validate(self, job: dict[str, Any]) -> None:
        """OpenAI's `validating_files`: every chat row must train (the runner would drop a bad one, and a
        file of only bad rows would fail later with advice about a spec this user never wrote)."""
        from runner.serve.jobs.openai_fields import row_problem

        events, uploads = Events(self.folder, job["id"]), FileStore(self.store)
        for name, file_id in job.get("checks", []):
            events.add(f"Validating {name}: {file_id}")
            path = uploads.path(file_id)
            problem = "the upload was deleted" if path is None else row_problem(path)
            if problem:
                message = f"{name} {file_id}: {problem}"
                events.add(f"error: {message}")
                self._update(job["id"], ("validating_files",), status="failed", finished_at=int(time.time()),
                             error={"code": f"invalid_{name}", "param": name, "message": message})
                return
        events.add("Files validated, the job is queued")
        self._update(job["id"], ("validating_files",), status="queued")

    def _run(self, job_id: str) -> None:
        spec, events = self.folder / f"{job_id}.yaml", Events(self.folder, job_id)
        if self._update(job_id, ("queued",), status="running")["status"] != "running":
            return  # cancelled between the loop's look and now: it never starts
        with open(self.folder / f"{job_id}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "--store", str(self.store)],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=job_env(os.environ, self.allow_push))
            self._running = (job_id, process, events)
            if self._update(job_id, pid=process.pid).get("cancel_requested"):
                process.send_signal(signal.SIGINT)  # a cancel that came while it started found no process to stop
            events.add("Fine-tuning job started")
            while process.poll() is None:
                events.pump()  # each line stamped within half a second of its writing
                time.sleep(0.5)
            events.pump(final=True)
        if self._stopping:
            return  # stop() writes the record once the process is gone
        self._running = None
        self._finished(job_id, process.returncode, events)

    def _finished(self, job_id: str, code: int, events: Events, stopped: bool = False) -> None:
        from runner.core.records import latest_record

        job = self.get(job_id)
        fields: dict[str, Any] = {"finished_at": int(time.time())}
        if job.get("cancel_requested"):
            fields["status"] = "cancelled"
        elif code == 0:
            record = latest_record(self.store, self.folder / f"{job_id}.yaml")
            rows = metric_rows(self.store, record)
            result = FileStore(self.store).save(step_metrics(rows), "step_metrics.csv", "fine-tune-results", ".csv")
            fields |= {"status": "succeeded", "fine_tuned_model": self._adapter(record),
                       "result_files": [result["id"]], "trained_tokens": trained_tokens(self.store, record, rows)}
        elif stopped:
            fields |= {"status": "failed", "error": {"code": "server_stopped", "param": None, "message":
                       f"{STOPPED} (its training process was stopped at a checkpoint, exit code {code}); "
                       "submit the same spec again to resume from its checkpoint"}}
        else:
            said = [e["message"] for e in events.listed(job["created_at"]) if e["level"] == "error"]
            fields |= {"status": "failed", "error": {"code": "run_failed", "param": None,
                                                     "message": said[-1] if said else f"exit code {code}"}}
        events.add(f"The job {fields['status']}" + (f": {fields['error']['message']}" if "error" in fields else ""))
        self._update(job_id, ("running",), **fields)

    def _adapter(self, record: Any) -> str | None:
        from runner.serve.registry import Registry

        stage = record.stage("export") if record else None
        return Registry(self.store).adapter_for_export(stage["key"]) if stage else None


def _runs(pid: int, job_id: str) -> bool:
    """Whether `pid` is still this job's `runner run` (its command line names the job's spec file)."""
    try:
        return job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False  # gone (or no /proc): nothing left to stop


def _created(job: dict[str, Any]) -> tuple[int, int]:
    """Creation order: OpenAI's `created_at` is whole seconds, and two jobs sent within one must still
    queue and list in the order they came (a record from before `created_ns` sorts first in its second)."""
    return job["created_at"], job.get("created_ns", 0)
