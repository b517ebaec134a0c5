"""Planning: for each stage, its key and whether it is cached, and if not, why it must run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from runner.keys import diff_inputs, file_digest, stage_key
from runner.profile import Profile
from runner.records import RunRecord
from runner.spec import Spec
from runner.stages import Stage
from runner.store import Manifest, Store

Status = Literal["cached", "new", "stale", "missing", "forced", "pending"]


@dataclass(frozen=True)
class Step:
    stage: str
    status: Status
    key: str | None  # None while an upstream stage has still to run
    reasons: tuple[str, ...] = ()
    inputs: dict[str, Any] | None = None
    manifest: Manifest | None = field(default=None, compare=False)

    def line(self) -> str:
        key = self.key[:12] if self.key else "?" * 12
        why = f", {'; '.join(self.reasons)}" if self.reasons else ""
        words = {"cached": "cached", "new": "will run", "stale": "stale", "missing": "will run",
                 "forced": "will run", "pending": "will run"}
        return f"{self.stage:<7} {key}  {words[self.status]}{why}"


def stage_inputs(stage: Stage, spec: Spec, profile: Profile, upstream: dict[str, str]) -> dict[str, Any]:
    """Everything that determines the stage's output; the key is the hash of this."""
    files = {role: file_digest(path) for role, path in sorted(stage.local_files(spec).items())}
    return {"stage": stage.name, "version": stage.version, "spec": stage.spec_slice(spec),
            "profile": profile.key_fields() if stage.uses_profile else {},
            "upstream": upstream, "files": files}


def plan_stage(stage: Stage, spec: Spec, profile: Profile, store: Store,
               done: dict[str, Manifest], previous: RunRecord | None, force: bool, verify: bool = False) -> Step:
    """Decide one stage given the committed manifests of the stages before it (`done`)."""
    upstream: dict[str, str] = {}
    waiting = []
    for ref in stage.upstream:
        name, _, part = ref.partition(":")
        if name in done:
            upstream[ref] = done[name].part(part or None)
        else:
            waiting.append(name)
    if waiting:
        return Step(stage.name, "pending", None, (f"after {', '.join(dict.fromkeys(waiting))}",))
    inputs = stage_inputs(stage, spec, profile, upstream)
    key = stage_key(inputs)
    manifest, problem = store.check(stage.name, key, verify)
    if manifest is not None and not force:
        return Step(stage.name, "cached", key, (), inputs, manifest)
    if force:
        return Step(stage.name, "forced", key, ("--force",), inputs)
    if problem is not None:
        return Step(stage.name, "missing", key, (problem,), inputs)
    before = previous.stage(stage.name) if previous else None
    if before is None or before.get("inputs") is None:
        return Step(stage.name, "new", key, ("no earlier run of this spec",), inputs)
    # Spec fields read best as written in the YAML: "train.learning_rate", not "spec.train...".
    changes = [c.removeprefix("spec.") for c in diff_inputs(before["inputs"], inputs)]
    if not changes:
        return Step(stage.name, "missing", key, ("artifact not in the store",), inputs)
    return Step(stage.name, "stale", key, tuple(changes), inputs)


def plan(stages: tuple[Stage, ...], spec: Spec, profile: Profile, store: Store,
         previous: RunRecord | None, force: frozenset[str] = frozenset(), verify: bool = False) -> list[Step]:
    """The whole plan without running anything: stages after one that will run stay `pending`."""
    done: dict[str, Manifest] = {}
    steps = []
    for stage in stages:
        step = plan_stage(stage, spec, profile, store, done, previous, stage.name in force, verify)
        if step.manifest is not None:
            done[stage.name] = step.manifest
        steps.append(step)
    return steps

