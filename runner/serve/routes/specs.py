"""Specs for the page's editor: validate and plan a spec's text as `runner validate` and `runner plan`
do (the same one-line problems, the same plan lines), and the specs a new one can start from.

A spec given as text is read as a job reads it: relative paths from the job folder (`<store>/jobs`),
where a launched job's spec file is written. The plan is compared with the newest run record of a spec
of the same `name`, so a changed field shows as "stale" with the field that changed."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request

from runner.core.errors import RunnerError, SpecError
from runner.core.records import RunRecord, runs_dir
from runner.serve.confine import confine_doc, redact, roots_of
from runner.serve.schemas import Planned, PlanStep, Problem, SpecCard, SpecList, SpecText, Validated
from runner.spec.typed import MAX_SPEC_BYTES, Spec, parse_spec, spec_of_doc
from runner.spec.yamlpos import format_path, read_spec

router = APIRouter()
SOURCE = "spec"  # the file name problems cite: "train.epochs: ... (spec:12:3)"
# "path: message (spec:LINE:COL)", or for YAML that does not parse "spec:LINE:COL: not valid YAML: ..."
WHERE = re.compile(rf"\({SOURCE}:(\d+):(\d+)\)$|^{SOURCE}:(\d+):(\d+): ")
STATUS = {"cached": "cached", "stale": "stale"}  # new, missing, forced and pending all mean: it will run

# A starting point: the smallest spec that trains (a random-initialised demo model, CPU-sized). Its
# data paths are for the person to fill in; until then the editor shows the one line that says so.
TEMPLATE = """\
name: my-adapter
model:
  source: init
  init: {hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}
data:
  train: {path: /path/to/train.jsonl}
  template: plain
lora: {r: 8, alpha: 16}
train: {epochs: 1, learning_rate: 3e-3, batch_size: 8}
eval:
  queries: ["Which agent is preferred as initial pharmacotherapy for chronic myeloid leukemia?"]
"""


class DigestCache:
    """A file's sha256 kept by (path, size, mtime_ns): the editor plans after each pause in typing, and a
    gigabyte of training data is hashed once, not on every keystroke. A changed file (size or mtime)
    is hashed again; the CLI's plan hashes every time (runner/core/plan.py)."""

    def __init__(self, compute: Callable[[Path], str], size: int = 256) -> None:
        self.compute, self.size = compute, size
        self.known: dict[tuple[str, int, int], str] = {}
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        real = Path(path).resolve()
        facts = real.stat()
        key = (str(real), facts.st_size, facts.st_mtime_ns)
        with self.lock:
            if key in self.known:
                return self.known[key]
        digest = self.compute(path)
        with self.lock:
            if len(self.known) >= self.size:
                self.known.pop(next(iter(self.known)))  # the oldest: a store rarely has this many data files
            self.known[key] = digest
        return digest


def _digests(request: Request) -> DigestCache:
    from runner.core.keys import file_digest

    state = request.app.state
    if getattr(state, "digests", None) is None:
        state.digests = DigestCache(file_digest)
    cache: DigestCache = state.digests
    return cache


def problem(line: str) -> Problem:
    found = WHERE.search(line)
    if found is None:
        return Problem(message=line)
    line_number, column = (int(n) for n in (found.group(1, 2) if found.group(1) else found.group(3, 4)))
    return Problem(message=line, line=line_number, column=column)


def _invalid(lines: list[str], store: Path) -> Validated:
    lines = [redact(line, store) for line in lines]
    return Validated(valid=False, text="error: " + "\n".join(lines), problems=[problem(p) for p in lines])


def _parsed(text: str, request: Request) -> tuple[Spec | None, Validated]:
    """The typed spec, or its problems; a path outside the folders the server reads is a 400 before
    anything looks at it (so no answer says whether it exists)."""
    from runner.spec.describe import valid_line

    store: Path = request.app.state.store
    folder = _folder(request)
    try:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
            parse_spec(text, source=SOURCE)  # its one-line refusal
        doc, positions = read_spec(text, SOURCE)
        outside = confine_doc(doc, folder, _roots(request), store)
        if outside:  # refused as a request the server will not serve, not as a spec to fix in place
            raise HTTPException(400, redact("; ".join(f"{format_path(p)}: {msg} ({SOURCE}:{positions.where(p)})"
                                                      for p, msg in outside), store))
        spec = spec_of_doc(doc, positions, SOURCE, folder)
    except SpecError as exc:
        return None, _invalid(exc.problems, store)
    return spec, Validated(valid=True, text=valid_line(SOURCE, spec), problems=[])


def _roots(request: Request) -> list[Path]:
    roots: list[Path] = getattr(request.app.state, "roots", None) or roots_of(request.app.state.store)
    return roots


def _folder(request: Request) -> Path:
    folder: Path = request.app.state.store / "jobs"
    return folder


@router.post("/v1/specs/validate")
def validate(body: SpecText, request: Request) -> Validated:
    return _parsed(body.spec, request)[1]


def _records(store: Path) -> list[dict[str, Any]]:
    """Every readable run record, oldest first."""
    folder = runs_dir(store)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue  # being written by a run: the next request sees it
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            found.append(data)
    return sorted(found, key=lambda d: float(d.get("started") or 0))


def _previous(store: Path, name: str) -> RunRecord | None:
    same = [d for d in _records(store) if d["spec"].get("name") == name]
    try:
        return RunRecord(**same[-1]) if same else None
    except TypeError:
        return None  # a record of another version of the runner: no comparison, every stage "will run"


@router.post("/v1/specs/plan")
def plan(body: SpecText, request: Request) -> Planned:
    from runner.core.execute import registered_stages
    from runner.core.plan import memory_lines
    from runner.core.plan import plan as make_plan
    from runner.core.recap import profile_line
    from runner.core.store import Store
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile

    store: Path = request.app.state.store
    spec, checked = _parsed(body.spec, request)
    if spec is None:
        return Planned(**checked.model_dump())
    try:
        profile = resolve_profile(spec, probe_machine())
        steps = make_plan(registered_stages(), spec, profile, Store(store), _previous(store, spec.name),
                          digest=_digests(request))
        memory = memory_lines(steps, spec, profile)
    except (RunnerError, OSError) as exc:  # the machine cannot do what the spec asks, or a file cannot be read
        said = redact(str(exc) or type(exc).__name__, store)  # the whole message, as `runner plan` prints it
        return Planned(valid=False, text=f"error: {said}", problems=[problem(line) for line in said.splitlines()])
    return Planned(valid=True, text=checked.text, problems=[],
                   profile=profile_line(profile),
                   profile_reasons=list(profile.reasons), memory=memory,
                   steps=[PlanStep(stage=s.stage, status=STATUS.get(s.status, "run"), key=s.key,  # type: ignore[arg-type]
                                   reasons=list(s.reasons), line=s.line()) for s in steps])


def _text(data: dict[str, Any]) -> str | None:
    """The record's resolved spec as YAML, its relative paths made absolute (a job's spec lives elsewhere)."""
    from runner.serve.jobs.openai_fields import plain_spec
    from runner.serve.registry import spec_of

    try:
        plain = plain_spec(spec_of(data))
        first = {k: plain.pop(k) for k in ("name", "description", "seed")}  # as a person writes a spec: name on top
        return yaml.safe_dump(first | plain, sort_keys=False, allow_unicode=True)
    except (KeyError, TypeError, ValueError):
        return None  # a record of another version of the runner


@router.get("/v1/specs")
def list_specs(request: Request) -> SpecList:
    """The template, then the newest spec of each name in the store's run records, newest first."""
    newest: dict[str, dict[str, Any]] = {}
    for data in _records(request.app.state.store):
        newest[str(data["spec"].get("name"))] = data
    cards = [SpecCard(name="template", origin="template", created=0, text=TEMPLATE)]
    for name, data in sorted(newest.items(), key=lambda kv: -float(kv[1].get("started") or 0)):
        text = _text(data)
        if text is not None:
            cards.append(SpecCard(name=name, origin=str(data.get("spec_path")), created=int(data.get("started") or 0),
                                  text=text))
    return SpecList(data=cards)
