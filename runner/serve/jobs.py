"""Fine-tuning jobs in OpenAI's shapes: each a `python -m runner run SPEC --store STORE` in its own
process (the command line's locks, crash safety and run record), one at a time, kept as JSON under
`<store>/jobs/` so a restarted server lists them. Uploads (/v1/files) are stored by content."""

from __future__ import annotations

import hashlib
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

import yaml
from fastapi import APIRouter, HTTPException, Request, UploadFile

from runner.errors import SpecError
from runner.serve.schemas import JobRequest
from runner.spec import parse_spec

router = APIRouter()
ENDED = ("succeeded", "failed", "cancelled")


class JobQueue:
    def __init__(self, store: Path) -> None:
        self.folder = store / "jobs"
        self.store = store
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running: tuple[str, subprocess.Popen[bytes]] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        for job in self.all():  # a job running when the server died: no process is watching it now
            if job["status"] in ("running", "validating_files"):
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
                     error={"code": "server_stopped", "message": "the server stopped while the job was running"
                            f"{stopped}; submit the same spec again to resume from its checkpoint"})

    def start(self) -> None:
        threading.Thread(target=self._loop, name="jobs", daemon=True).start()

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
        return sorted(jobs, key=lambda j: j["created_at"], reverse=True)

    def _update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            job = self.get(job_id) | fields
            tmp = self.path(job_id).with_suffix(".tmp")
            tmp.write_text(json.dumps(job, indent=1), "utf-8")
            os.replace(tmp, self.path(job_id))
            return job

    def submit(self, spec_text: str, model: str, training_file: str | None,
               shown: dict[str, Any] | None = None) -> dict[str, Any]:
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        (self.folder / f"{job_id}.yaml").write_text(spec_text, "utf-8")
        job = {"id": job_id, "object": "fine_tuning.job", "model": model, "created_at": int(time.time()),
               "status": "queued", "fine_tuned_model": None, "finished_at": None, "error": None,
               "training_file": training_file, "validation_file": None, "hyperparameters": {},
               "result_files": [], "trained_tokens": None, "organization_id": "runner", "seed": 0} | (shown or {})
        self.path(job_id).write_text(json.dumps(job, indent=1), "utf-8")
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
        elif job["status"] == "queued":
            job = self._update(job_id, status="cancelled", finished_at=int(time.time()))
        return job

    def events(self, job_id: str) -> list[dict[str, Any]]:
        job = self.get(job_id)
        try:
            lines = (self.folder / f"{job_id}.log").read_text("utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        return [{"id": f"{job_id}-{i}", "object": "fine_tuning.job.event", "created_at": job["created_at"],
                 "level": "error" if line.startswith("error") else "info", "message": line, "type": "message"}
                for i, line in enumerate(lines) if line.strip()]

    def _loop(self) -> None:
        while True:
            queued = [j for j in self.all() if j["status"] == "queued"]
            if not queued:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(min(queued, key=lambda j: j["created_at"])["id"])

    def _run(self, job_id: str) -> None:
        spec = self.folder / f"{job_id}.yaml"
        with open(self.folder / f"{job_id}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "--store", str(self.store)],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._running = (job_id, process)
            self._update(job_id, status="running", pid=process.pid)
            code = process.wait()
        self._running = None
        job = self.get(job_id)
        fields: dict[str, Any] = {"finished_at": int(time.time())}
        if job.get("cancel_requested"):
            fields["status"] = "cancelled"
        elif code == 0:
            fields |= {"status": "succeeded", "fine_tuned_model": self._adapter(spec)}
        else:
            tail = (self.folder / f"{job_id}.log").read_text("utf-8", errors="replace").strip().splitlines()[-1:]
            fields |= {"status": "failed", "error": {"message": tail[0] if tail else f"exit code {code}"}}
        self._update(job_id, **fields)

    def _adapter(self, spec: Path) -> str | None:
        from runner.records import latest_record
        from runner.serve.models import Registry

        record = latest_record(self.store, spec)
        stage = record.stage("export") if record else None
        return Registry(self.store).adapter_for_export(stage["key"]) if stage else None


def _runs(pid: int, job_id: str) -> bool:
    """Whether `pid` is still this job's `runner run` (its command line names the job's spec file)."""
    try:
        return job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False  # gone (or no /proc): nothing left to stop


def spec_text(body: JobRequest, base_dir: Path) -> str:
    """The job's spec as YAML, checked as `runner validate` checks it: 400 with every problem."""
    if body.spec is None:
        raise HTTPException(400, "give `model` (a served base or adapter id) and `training_file`, or a `spec` "
                                 "(YAML text or a JSON object, in extra_body)")
    text = body.spec if isinstance(body.spec, str) else yaml.safe_dump(body.spec, sort_keys=False)
    checked(text, base_dir)
    return text


def checked(text: str, base_dir: Path, problems: list[str] | None = None) -> None:
    """400 listing `problems` and every problem `runner validate` finds in the spec `text`."""
    problems = list(problems or [])
    try:
        parse_spec(text, source="spec", base_dir=base_dir)
    except SpecError as exc:
        problems += exc.problems
    if problems:
        raise HTTPException(400, "the spec is not valid: " + "; ".join(problems))


def from_openai(body: JobRequest, request: Request, base_dir: Path) -> tuple[str, dict[str, Any]]:
    """The spec OpenAI's fields ask for (runner.serve.openai_jobs), checked as a given spec is, and
    what the job record shows of it."""
    from runner.serve.openai_jobs import job_fields, mapped, stored_file

    if not body.model:
        spec_text(body, base_dir)  # neither `model` nor `spec`: the 400 that says what to give
    entry = request.app.state.registry.get(body.model)
    if entry is None:
        raise HTTPException(404, f"model {body.model!r} does not exist: give a base or adapter id from /v1/models")
    fields = body.model_dump(exclude_none=True)
    store: Path = request.app.state.store
    spec, problems = mapped(fields, entry, lambda file_id: stored_file(store, file_id))
    text = yaml.safe_dump(spec, sort_keys=False)
    checked(text, base_dir, problems)
    return text, job_fields(fields, spec)


def _queue(request: Request) -> JobQueue:
    jobs: JobQueue = request.app.state.jobs
    return jobs


@router.post("/v1/fine_tuning/jobs")
def create_job(body: JobRequest, request: Request) -> dict[str, Any]:
    jobs = _queue(request)
    if body.spec is None:
        text, shown = from_openai(body, request, jobs.folder)
        return jobs.submit(text, str(body.model), body.training_file, shown)
    return jobs.submit(spec_text(body, jobs.folder), body.model or "spec", body.training_file)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _queue(request).all(), "has_more": False}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _queue(request).get(job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return _queue(request).cancel(job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def job_events(job_id: str, request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _queue(request).events(job_id), "has_more": False}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, request: Request) -> dict[str, Any]:
    from runner.serve.checkpoints import checkpoints

    jobs = _queue(request)
    jobs.get(job_id)  # 404 for a job that does not exist
    found = checkpoints(jobs.store, job_id, jobs.folder / f"{job_id}.yaml", jobs.folder / f"{job_id}.log")
    return {"object": "list", "data": found, "has_more": False,
            "first_id": found[0]["id"] if found else None, "last_id": found[-1]["id"] if found else None}


@router.post("/v1/files")
async def upload(request: Request, file: UploadFile, purpose: str = "fine-tune") -> dict[str, Any]:
    from runner.serve.app import MAX_UPLOAD

    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"upload over the {MAX_UPLOAD} byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, f"{file.filename}: not UTF-8 text (JSONL: one JSON object a line)") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                raise HTTPException(400, f"{file.filename}: line {number} is not JSON (JSONL: one object a line)") from None
    digest = hashlib.sha256(data).hexdigest()
    folder = request.app.state.store / "files"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{digest}.jsonl").write_bytes(data)
    return {"id": f"file-{digest[:24]}", "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": file.filename or "upload.jsonl", "purpose": purpose, "status": "processed"}
