"""Running a plan: each stage either reused from the store or built, in order, with a run record.

Safe to kill at any moment: a stage is built under a lock in its work folder and appears only when
its manifest is written and the folder renamed; the run record is rewritten after every stage.
"""

from __future__ import annotations

import errno
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.core import locks, signals
from runner.core.errors import RunnerError, StageError, StoreError
from runner.core.plan import Step, plan_stage
from runner.core.records import RunRecord, done_before, latest_record, new_record, save_record, trained_world
from runner.core.stage import Stage, StageContext, upstream_stage
from runner.core.store import Manifest, Store
from runner.machine.profile import Profile
from runner.spec.extras import require_extras
from runner.spec.typed import Spec
from runner.stages import all_stages  # the one registry: nothing else outside runner.stages imports it


def registered_stages() -> tuple[Stage, ...]:
    """The stages in the order they run, for the planner too (the registry is reached from here only)."""
    return all_stages()


@dataclass(frozen=True)
class Outcome:
    stage: str
    action: str  # reused | ran
    key: str | None
    seconds: float
    path: Path | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Options:
    only: str | None = None
    force: frozenset[str] = frozenset()
    verify: bool = False  # rehash every file of a cached artifact before trusting it
    again: bool = False  # repeat side effects (a push) an earlier run already did for the same output
    sets: tuple[str, ...] = ()  # the command line's `--set PATH=VALUE`s, already in `spec`: for the record


def run_spec(spec: Spec, spec_path: Path, profile: Profile, store: Store, log: Callable[[str], None],
             options: Options = Options()) -> tuple[list[Outcome], Path]:
    """Run every stage not already in the store. Returns what happened per stage and the record path."""
    signals.reset()  # a stop that ended an earlier run in this process is not this run's
    require_extras(spec, options.only)  # before the first stage, not in the export stage after training
    spec = _run_chain(spec, store, log, options)
    previous = latest_record(store.root, spec_path)
    record, record_path = new_record(store.root, spec_path, spec.as_dict(), asdict(profile), options.sets)
    save_record(record, record_path)
    done: dict[str, Manifest] = {}
    outcomes: list[Outcome] = []
    current: dict[str, str | None] = {}
    try:
        for stage in registered_stages():
            signals.stop_if_requested()  # one swallowed where it was raised: the next stage does not start
            current = {"stage": stage.name, "key": None}
            step = plan_stage(stage, spec, profile, store, done, previous, stage.name in options.force, options.verify)
            current["key"] = step.key
            if step.status == "pending":  # cannot happen: stages run in order; kept as a guard
                raise StageError(f"{stage.name} needs {step.reasons[0].removeprefix('after ')} first")
            if stage.gate is not None and step.status != "cached":
                # Before the expensive part (the contamination check before training): it may stop the run.
                record.gates[stage.gate.name] = found = stage.gate.check(spec, log)
                save_record(record, record_path)  # what it found is on record even when it stops the run
                stage.gate.stop(spec, found)
            outcome, done[stage.name] = _reuse_or_build(stage, step, spec, profile, store, log, done, options.verify)
            outcomes.append(outcome)
            record.stages.append({"stage": stage.name, "key": step.key, "action": outcome.action,
                                  "seconds": round(outcome.seconds, 3), "reasons": list(step.reasons),
                                  "inputs": step.inputs})
            record.world = trained_world(outcome.path) or record.world
            save_record(record, record_path)
            if stage.name == options.only:
                break  # like `dvc repro STAGE`: the stage and what it needs, nothing after it
        for stage in registered_stages():
            _side_effect(stage, spec, store, done, record, record_path, log, options.again)
    except BaseException as exc:
        _failed(record, record_path, current, exc)
        raise
    record.status, record.finished = "completed", time.time()
    save_record(record, record_path)
    return outcomes, record_path


def _run_chain(spec: Spec, store: Store, log: Callable[[str], None], options: Options) -> Spec:
    """train.init_adapter.spec: that spec's stages up to train first, as its own run (runner.core.chain);
    the spec returned starts from the adapter they made."""
    from runner.core.chain import chained_spec, link_profile, with_adapter

    link = chained_spec(spec)
    if link is None or options.only in ("model", "data"):
        return spec
    linked, path = link
    log(f"chain: {path.name} up to train first (train.init_adapter)")
    outcomes, _ = run_spec(linked, path, link_profile(linked), store, log, Options(only="train", verify=options.verify))
    trained = next(o.path for o in outcomes if o.stage == "train")
    assert trained is not None
    return with_adapter(spec, trained)


def _side_effect(stage: Stage, spec: Spec, store: Store, done: dict[str, Manifest], record: RunRecord,
                 record_path: Path, log: Callable[[str], None], again: bool) -> None:
    """After every stage: what the spec asks done outside the store, once per output and place."""
    effect = stage.side_effect
    wanted = effect.wanted(spec) if effect is not None else None
    if effect is None or wanted is None or effect.stage not in done:
        return
    identity = {**wanted, "key": done[effect.stage].path.name}
    before = done_before(store.root, effect.name, identity)
    if before is not None and not again:
        log(f"{effect.name}: already done by an earlier run (commit {before['result'].get('commit')}); `runner run --push` does it again")
        record.side_effects[effect.name] = {"identity": identity, "skipped": True, "earlier": before["result"]}
    else:
        result = effect.apply(spec, {name: m.path for name, m in done.items()}, log)
        record.side_effects[effect.name] = {"identity": identity, "result": result, "at": time.time()}
    save_record(record, record_path)


def _failed(record: RunRecord, record_path: Path, current: dict[str, str | None], exc: BaseException) -> None:
    record.status, record.error, record.finished = "failed", f"{type(exc).__name__}: {exc}", time.time()
    if current and not any(s["stage"] == current["stage"] for s in record.stages):
        # The key stays on record so `gc` keeps the stage's checkpoints for the next attempt.
        record.stages.append({**current, "action": "failed", "error": str(exc)})
    try:
        save_record(record, record_path)
    except (OSError, StoreError):
        pass  # a full disk can refuse the record too; the error being raised matters more


def _reuse_or_build(stage: Stage, step: Step, spec: Spec, profile: Profile, store: Store,
                    log: Callable[[str], None], done: dict[str, Manifest], verify: bool) -> tuple[Outcome, Manifest]:
    assert step.key is not None and step.inputs is not None  # not pending: checked by the caller
    if step.status == "cached" and step.manifest is not None:
        log(f"{stage.name}: cached {step.key[:12]}, nothing to do")
        return Outcome(stage.name, "reused", step.key, 0.0, step.manifest.path, ()), step.manifest
    store.make_folder(store.lock_path(stage.name, step.key).parent)  # an unwritable store: its own error
    with locks.hold(store.lock_path(stage.name, step.key), f"{stage.name} {step.key[:12]}", log):
        if step.status != "forced":
            manifest = store.lookup(stage.name, step.key, verify)
            if manifest is not None:  # another process built it while we waited for the lock
                log(f"{stage.name}: built meanwhile by another run, reusing {step.key[:12]}")
                return Outcome(stage.name, "reused", step.key, 0.0, manifest.path, ()), manifest
        log(f"{stage.name}: running {step.key[:12]} ({'; '.join(step.reasons)})")
        started = time.time()
        _build(stage, step, spec, profile, store, log, done)
    manifest = store.lookup(stage.name, step.key)
    if manifest is None:
        raise StageError(f"{stage.name}: the artifact vanished right after it was written to {store.root}")
    seconds = time.time() - started
    log(f"{stage.name}: done in {seconds:.1f} s")
    return Outcome(stage.name, "ran", step.key, seconds, manifest.path, step.reasons), manifest


def _build(stage: Stage, step: Step, spec: Spec, profile: Profile, store: Store,
           log: Callable[[str], None], done: dict[str, Manifest]) -> None:
    assert step.key is not None and step.inputs is not None
    upstream = {upstream_stage(ref): done[upstream_stage(ref)].path for ref in stage.upstream}
    try:
        with store.build(stage.name, step.key, step.inputs, stage.volatile) as out:
            ctx = StageContext(spec=spec, profile=profile, out=out, work=store.work_dir(stage.name, step.key),
                               upstream=upstream, files=stage.local_files(spec), log=log,
                               digests=step.inputs.get("files", {}))
            stage.run(ctx)
    except (RunnerError, KeyboardInterrupt):
        raise
    except Exception as exc:
        signum = signals.requested()
        if signum is not None:  # a signal raised inside library code, which turned it into its own error
            raise signals.Interrupted(signum) from exc
        # Libraries wrap a full disk in their own errors (torch.save raises a RuntimeError: "unexpected
        # pos 576 vs 534", with no errno), so the free space decides, not the exception's type.
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _nearly_full(store.root):
            raise StoreError(f"{stage.name}: disk full while writing to {store.root} ({_short(exc)}); free some "
                             f"space (`runner gc` removes unused artifacts) and run again: finished stages are kept") from exc
        raise _stage_error(stage.name, exc) from exc


def _short(exc: Exception) -> str:
    """An OSError's own words ("No space left on device"), else the first line of what was raised."""
    strerror = getattr(exc, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def _stage_error(name: str, exc: BaseException) -> StageError:
    detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return StageError(f"{name} failed: {detail} (nothing of it was kept; --debug shows the traceback)")
