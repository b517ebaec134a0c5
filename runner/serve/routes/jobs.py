"""The fine-tuning job routes, OpenAI's shapes: /v1/fine_tuning/jobs (create, list, retrieve, cancel,
events, checkpoints) and the job's progress as data for the page's live curves, over the job queue
(runner/serve/jobs/jobqueue.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request

from runner.serve.jobs.jobqueue import JobQueue
from runner.serve.jobs.progress import progress
from runner.serve.jobs.specs import from_openai, spec_text
from runner.serve.schemas import JobProgress, JobRequest
from runner.serve.uploads import page


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    queue = getattr(app.state, "jobs", None)
    if isinstance(queue, JobQueue):  # SIGTERM or Ctrl-C to the server: no `runner run` left training unwatched
        await asyncio.to_thread(queue.stop)


router = APIRouter(lifespan=_lifespan)


def _queue(request: Request) -> JobQueue:
    jobs: JobQueue = request.app.state.jobs
    return jobs


@router.post("/v1/fine_tuning/jobs")
def create_job(body: JobRequest, request: Request) -> dict[str, Any]:
    jobs = _queue(request)
    if body.spec is None:
        text, shown, checks = from_openai(body, request, jobs.folder)
        return jobs.submit(text, str(body.model), body.training_file, shown, checks)
    text, shown = spec_text(body, request, jobs.folder)
    return jobs.submit(text, body.model or "spec", body.training_file, shown)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, limit: int = Query(20, ge=1, le=1000), after: str | None = None) -> dict[str, Any]:
    return page(_queue(request).all(), limit, after)


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _queue(request).get(job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return _queue(request).cancel(job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def job_events(job_id: str, request: Request, limit: int = Query(20, ge=1, le=10000),
               after: str | None = None) -> dict[str, Any]:
    # newest first, as OpenAI lists them: the default page shows where a job is now, not how it began
    return page(list(reversed(_queue(request).events(job_id))), limit, after)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, request: Request) -> dict[str, Any]:
    from runner.serve.jobs.checkpoints import checkpoints

    jobs = _queue(request)
    jobs.get(job_id)  # 404 for a job that does not exist
    found = checkpoints(jobs.store, job_id, jobs.folder / f"{job_id}.yaml", jobs.folder / f"{job_id}.log")
    return {"object": "list", "data": found, "has_more": False,
            "first_id": found[0]["id"] if found else None, "last_id": found[-1]["id"] if found else None}


@router.get("/v1/fine_tuning/jobs/{job_id}/progress")
def job_progress(job_id: str, request: Request) -> JobProgress:
    jobs = request.app.state.jobs
    job = jobs.get(job_id)  # 404 for a job that does not exist
    return JobProgress(**progress(jobs.store, job, jobs.folder / f"{job_id}.log"))
