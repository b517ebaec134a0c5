"""Running a plan: each stage either reused from the store or built, in order, with a run record."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.errors import RunnerError, StageError
from runner.plan import Step, plan_stage
from runner.profile import Profile
from runner.records import RunRecord, latest_record, new_record, save_record
from runner.spec import Spec
from runner.stages import StageContext, all_stages
from runner.store import Manifest, Store


@dataclass(frozen=True)
class Outcome:
    stage: str
    action: str  # reused | ran | skipped
    key: str | None
    seconds: float
    path: Path | None
    reasons: tuple[str, ...]


def run_spec(spec: Spec, spec_path: Path, profile: Profile, store: Store, log: Callable[[str], None],
             only: str | None = None, force: frozenset[str] = frozenset()) -> tuple[list[Outcome], Path]:
    """Run every stage not already in the store. Returns what happened per stage and the record path."""
    previous = latest_record(store.root, spec_path)
    record, record_path = new_record(store.root, spec_path, spec.as_dict(), asdict(profile))
    save_record(record, record_path)
    done: dict[str, Manifest] = {}
    outcomes: list[Outcome] = []
    try:
        for stage in all_stages():
            step = plan_stage(stage, spec, profile, store, done, previous, stage.name in force)
            if step.status == "pending":
                # Only reachable with --only: an upstream stage was not built in this run.
                raise StageError(f"{stage.name} needs {', '.join(r.removeprefix('after ') for r in step.reasons)}"
                                 f" first: run without --only, or with --only on that stage")
            if only is not None and stage.name != only and step.status != "cached":
                outcomes.append(Outcome(stage.name, "skipped", step.key, 0.0, None, step.reasons))
                record.stages.append({"stage": stage.name, "key": step.key, "action": "skipped", "inputs": step.inputs})
                continue
            outcome, manifest = _reuse_or_build(stage, step, spec, profile, store, done, log)
            done[stage.name] = manifest
            outcomes.append(outcome)
            record.stages.append({"stage": stage.name, "key": step.key, "action": outcome.action,
                                  "seconds": outcome.seconds, "reasons": list(step.reasons), "inputs": step.inputs})
            save_record(record, record_path)
            if stage.name == only:
                break  # later stages would need this run's outputs, which --only leaves alone
    except BaseException as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.finished = time.time()
        save_record(record, record_path)
        raise
    record.status, record.finished = "completed", time.time()
    save_record(record, record_path)
    return outcomes, record_path


def _reuse_or_build(stage, step: Step, spec: Spec, profile: Profile, store: Store,  # type: ignore[no-untyped-def]
                    done: dict[str, Manifest], log: Callable[[str], None]) -> tuple[Outcome, Manifest]:
    assert step.key is not None and step.inputs is not None  # not pending: checked by the caller
    if step.status == "cached" and step.manifest is not None:
        log(f"{stage.name}: cached {step.key[:12]}, nothing to do")
        return Outcome(stage.name, "reused", step.key, 0.0, step.manifest.path, ()), step.manifest
    log(f"{stage.name}: running {step.key[:12]} ({'; '.join(step.reasons)})")
    started = time.time()
    upstream = {ref.partition(":")[0]: done[ref.partition(":")[0]].path for ref in stage.upstream}
    try:
        with store.build(stage.name, step.key, step.inputs, stage.volatile) as out:
            ctx = StageContext(spec=spec, profile=profile, out=out, work=store.work_dir(stage.name, step.key),
                               upstream=upstream, files=stage.local_files(spec), log=log)
            stage.run(ctx)
    except (RunnerError, KeyboardInterrupt):
        raise
    except Exception as exc:
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        raise StageError(f"{stage.name} failed: {detail} (nothing of it was kept; --debug shows the traceback)") from exc
    manifest = store.lookup(stage.name, step.key)
    if manifest is None:
        raise StageError(f"{stage.name}: the artifact vanished right after it was written to {store.root}")
    seconds = time.time() - started
    log(f"{stage.name}: done in {seconds:.1f} s")
    return Outcome(stage.name, "ran", step.key, seconds, manifest.path, step.reasons), manifest
