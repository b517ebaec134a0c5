"""Planning: for each stage, its key and whether it is cached, and if not, why it must run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.core.keys import diff_inputs, file_digest, stage_key
from runner.core.outputs import DataStats
from runner.core.records import RunRecord
from runner.core.stage import Stage, upstream_part, upstream_stage
from runner.core.store import Manifest, Store
from runner.machine.profile import Profile
from runner.spec.extras import require_extras
from runner.spec.typed import Spec

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


Digest = Callable[[Path], str]  # a file's sha256: `file_digest`, or a cache of it (the server's, runner/serve/routes/specs.py)


def stage_inputs(stage: Stage, spec: Spec, profile: Profile, upstream: dict[str, str],
                 digest: Digest = file_digest) -> dict[str, Any]:
    """Everything that determines the stage's output; the key is the hash of this."""
    files = {role: digest(path) for role, path in sorted(stage.local_files(spec).items())}
    return {"stage": stage.name, "version": stage.version, "spec": stage.spec_slice(spec),
            "profile": profile.key_fields() if stage.uses_profile else {},
            "upstream": upstream, "files": files}


def plan_stage(stage: Stage, spec: Spec, profile: Profile, store: Store,
               done: dict[str, Manifest], previous: RunRecord | None, force: bool, verify: bool = False,
               digest: Digest = file_digest) -> Step:
    """Decide one stage given the committed manifests of the stages before it (`done`)."""
    upstream: dict[str, str] = {}
    waiting = []
    for ref in stage.upstream:
        name = upstream_stage(ref)
        if name in done:
            upstream[ref] = done[name].part(upstream_part(ref))
        else:
            waiting.append(name)
    if waiting:
        return Step(stage.name, "pending", None, (f"after {', '.join(dict.fromkeys(waiting))}",))
    inputs = stage_inputs(stage, spec, profile, upstream, digest)
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
         previous: RunRecord | None, force: frozenset[str] = frozenset(), verify: bool = False,
         digest: Digest = file_digest) -> list[Step]:
    """The whole plan without running anything: stages after one that will run stay `pending`. `digest`
    hashes the local files (a server planning on each edit passes a cache of it)."""
    require_extras(spec)  # a package the spec asks for and lacks: one line now, not a failed stage later
    spec, waiting = _resolve_chain(stages, spec, store, verify, digest)
    done: dict[str, Manifest] = {}
    steps = []
    for stage in stages:
        if waiting is not None and stage.name == "train":  # the chained spec's adapter is not built yet
            steps.append(Step(stage.name, "pending", None, (waiting,)))
            continue
        step = plan_stage(stage, spec, profile, store, done, previous, stage.name in force, verify, digest)
        if step.manifest is not None:
            done[stage.name] = step.manifest
        steps.append(step)
    return steps


def _resolve_chain(stages: tuple[Stage, ...], spec: Spec, store: Store, verify: bool,
                   digest: Digest) -> tuple[Spec, str | None]:
    """train.init_adapter.spec (runner.core.chain): the spec with the chained adapter's folder when that
    spec's train stage is in the store, else the spec and why its train stage must wait."""
    from runner.core.chain import chained_spec, link_profile, waiting_reason, with_adapter
    from runner.core.records import latest_record

    link = chained_spec(spec)
    if link is None:
        return spec, None
    linked, path = link
    steps = plan(stages, linked, link_profile(linked), store, latest_record(store.root, path), verify=verify,
                 digest=digest)
    train = next(s for s in steps if s.stage == "train")
    if train.manifest is None:
        return spec, waiting_reason(path)
    return with_adapter(spec, train.manifest.path), None


def chain_lines(stages: tuple[Stage, ...], spec: Spec, store: Store) -> list[str]:
    """For `runner plan`: each spec of the chain this one starts from, and its stages up to train."""
    from runner.core.chain import chained_spec, link_profile
    from runner.core.records import latest_record

    lines: list[str] = []
    link = chained_spec(spec)
    while link is not None:
        linked, path = link
        steps = plan(stages, linked, link_profile(linked), store, latest_record(store.root, path))
        shown = [s for s in steps if s.stage in ("model", "data", "train")]
        lines = [f"chain: train.init_adapter starts from {path} ({linked.name}):"] + [f"  {s.line()}" for s in shown] + lines
        link = chained_spec(linked)
    return lines


def mixture_lines(steps: list[Step], spec: Spec) -> list[str]:
    """A mixture, one line per source: its format and share, with the data stage's counts once it ran."""
    from runner.rows.mixture import describe, is_mixture, resolved

    if not is_mixture(spec):
        return []
    data = {s.stage: s for s in steps}["data"].manifest
    stats = DataStats.read(data.path / "stats.json") if data is not None else None
    return [f"mixture: {len(resolved(spec, 'train'))} sources, sampled {'with' if spec.data.replacement else 'without'} "
            "replacement, a new draw each epoch"] + describe(spec, stats)


def memory_lines(steps: list[Step], spec: Spec, profile: Profile) -> list[str]:
    """The training memory estimate for `plan`: from the model's config.json once the model stage
    has run (or the spec's init shape), and the longest tokenized example once data has run."""
    from runner.machine.memory import GIB, MEMORY_BUDGET, fit_profile

    by_stage = {s.stage: s for s in steps}
    model, data = by_stage["model"].manifest, by_stage["data"].manifest
    config = _model_config(model.path if model is not None else None, spec)
    if config is None:
        return ["memory: estimated once the model stage has run (it needs the model's config.json)"]
    seq_len = spec.data.max_length
    if data is not None:
        longest = DataStats.read(data.path / "stats.json").train_tokens.max
        seq_len = longest if longest is not None else seq_len
    prompt_len = seq_len  # grpo: the estimate adds max_completion_length to each row (memory.method_fields)
    fitted = fit_profile(spec, profile, config, seq_len)
    budget = profile.memory_mib * 2**20 * MEMORY_BUDGET / GIB
    lines = [f"memory: {fitted.estimate.describe()} at micro-batch {fitted.micro_batch}, {seq_len} tokens; "
             f"budget {budget:.1f} GiB" + ("" if fitted.fits else ": DOES NOT FIT, training would stop")]
    lines += [f"  - {note}" for note in fitted.notes]
    if spec.train.method == "grpo":
        from runner.machine.grpomemory import grpo_memory_line

        lines.append(grpo_memory_line(spec, profile, config, prompt_len))
    return lines


def local_weights(model_dir: Path) -> Path | None:
    """The folder of a built model's weights when it is on this machine without a download: inside
    the artifact (init) or the user's own folder (local); None for a Hub model (its snapshot).
    Here, light, because `plan` reads it too; the model stage's loader adds the Hub download."""
    import json

    info = json.loads((model_dir / "model.json").read_text("utf-8"))
    if info["source"] == "init":
        return model_dir / "weights"
    if info["source"] == "local":
        return Path(info["path"])
    return None


def _model_config(model_dir: Path | None, spec: Spec) -> dict[str, Any] | None:
    """config.json of the built model (init weights or a local folder), else the spec's init shape.
    A Hub model's config is in its snapshot, which plan does not download."""
    import json

    if model_dir is not None:
        folder = local_weights(model_dir)
        if folder is not None and (folder / "config.json").is_file():
            config: dict[str, Any] = json.loads((folder / "config.json").read_text("utf-8"))
            return config
    if spec.model.source == "init":
        i = spec.model.init
        return {"vocab_size": i.vocab_size, "hidden_size": i.hidden_size, "num_hidden_layers": i.num_layers,
                "intermediate_size": i.intermediate_size, "num_attention_heads": i.num_heads,
                "num_key_value_heads": i.num_kv_heads}
    return None
