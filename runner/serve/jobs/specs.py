"""A job request's spec: a given `spec` checked as `runner validate` checks it (uploads named by id
resolved to their stored files), or one built from OpenAI's fields (runner.serve.jobs.openai_fields), with
what the job record shows of each and the uploads to check before it may queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from fastapi import HTTPException, Request

from runner.core.errors import SpecError
from runner.serve.confine import confine_doc, redact, roots_of
from runner.serve.schemas import JobRequest
from runner.serve.uploads import FileStore
from runner.spec.typed import Spec, parse_spec


def spec_text(body: JobRequest, request: Request, base_dir: Path) -> tuple[str, dict[str, Any]]:
    """The job's spec as YAML, checked as `runner validate` checks it (400 with every problem), and
    what the record shows of it: the spec's own seed and training settings."""
    from runner.serve.jobs.openai_fields import file_ids_in, shown_hyperparameters

    if body.spec is None:
        raise HTTPException(400, "give `model` (a served base or adapter id) and `training_file`, or a `spec` "
                                 "(YAML text or a JSON object, in extra_body)")
    text = body.spec if isinstance(body.spec, str) else yaml.safe_dump(body.spec, sort_keys=False)
    problems: list[str] = []
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # parse_spec says where
    if isinstance(doc, dict):
        uploads = FileStore(request.app.state.store)
        resolved = file_ids_in(doc, uploads.path, problems)
        if resolved != doc:  # only then rewritten: a spec's own text keeps its line numbers in problems
            text = yaml.safe_dump(resolved, sort_keys=False)
        _confined(resolved, request, base_dir)
    spec = checked(text, base_dir, problems)
    if spec.export.push is not None and not getattr(request.app.state.jobs, "allow_push", False):
        raise HTTPException(400, "export.push: this server does not push from jobs (the operator's Hub token would "
                                 "publish where the client says); push after the run, or start the server with "
                                 "--allow-push")
    return text, {"seed": spec.seed, "hyperparameters": shown_hyperparameters(spec.as_dict())}


def checked(text: str, base_dir: Path, problems: list[str] | None = None) -> Spec:
    """The spec `text`; 400 listing `problems` and every problem `runner validate` finds in it."""
    problems = list(problems or [])
    try:
        spec = parse_spec(text, source="spec", base_dir=base_dir)
    except SpecError as exc:
        problems += exc.problems
    if problems:
        raise HTTPException(400, "the spec is not valid: " + "; ".join(problems))
    return spec


def from_openai(body: JobRequest, request: Request, base_dir: Path) -> tuple[str, dict[str, Any], list[list[str]]]:
    """The spec OpenAI's fields ask for, checked as a given spec is (its problems said in the fields'
    names), what the job record shows of it, and the chat uploads to check before it queues."""
    from runner.serve.jobs.openai_fields import in_fields, job_fields, mapped

    if not body.model:
        spec_text(body, request, base_dir)  # neither `model` nor `spec`: the 400 that says what to give
    entry = request.app.state.registry.get(body.model)
    if entry is None:
        raise HTTPException(404, f"model {body.model!r} does not exist: give a base or adapter id from /v1/models")
    fields = body.model_dump(exclude_none=True)
    if isinstance(fields.get("evaluation"), dict):  # the client's benchmark paths; the base run's are the operator's
        _confined({"eval": fields["evaluation"]}, request, base_dir)
    uploads = FileStore(request.app.state.store)

    def found(file_id: str) -> tuple[Path, str] | None:
        path, kind = uploads.path(file_id), uploads.kind(file_id)
        return (path, kind) if path is not None and kind is not None else None

    spec, problems = mapped(fields, entry, found)
    if isinstance(spec.get("export"), dict) and not getattr(request.app.state.jobs, "allow_push", False):
        spec["export"]["push"] = None  # the base run's push is the operator's, not the client's job's
    text = yaml.safe_dump(spec, sort_keys=False)
    if not problems:
        try:
            # rows=False: the uploads are checked while the job is `validating_files`, in the rows' terms
            parse_spec(text, source="spec", base_dir=base_dir, rows=False)
        except SpecError as exc:
            problems = [in_fields(p) for p in exc.problems]
    if problems:
        raise HTTPException(400, "the job's fields are not valid: " + "; ".join(problems))
    checks = [[name, str(fields[name])] for name in ("training_file", "validation_file")
              if fields.get(name) and uploads.kind(str(fields[name])) == "jsonl"]
    return text, job_fields(fields, spec), checks


def _confined(doc: Any, request: Request, base_dir: Path) -> None:
    """A 400 before anything reads a path the client named outside the store, its uploads and the
    server's `--data-dir` folders (as the spec routes refuse it; the answer never says if it exists)."""
    store: Path = request.app.state.store
    roots = getattr(request.app.state, "roots", None) or roots_of(store)
    outside = confine_doc(doc, base_dir, roots, store)
    if outside:
        from runner.spec.yamlpos import format_path

        raise HTTPException(400, redact("; ".join(f"{format_path(p)}: {msg}" for p, msg in outside), store))
