"""Run records: one JSON file per `runner run`, enough to trace any result to what made it."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.core.errors import StoreError
from runner.core.outputs import OutputError
from runner.core.outputs import RunRecord as Written  # the file as read and written; RunRecord below is the run's own
from runner.core.store import write_error

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "tokenizers")
# Recorded only for the runs they train: an optional extra installed or not elsewhere changes nothing else
# (a run in the CPU image, which lacks deepspeed, has the versions of the same run outside it).
SHARDING_LIBRARIES = {"zero2": "deepspeed", "zero3": "deepspeed"}


@dataclass
class RunRecord:
    spec_path: str
    spec: dict[str, Any]
    profile: dict[str, Any]
    started: float = field(default_factory=time.time)
    finished: float | None = None
    status: str = "running"  # running | completed | failed
    error: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)  # what each stage's gate found (contamination: per benchmark)
    side_effects: dict[str, Any] = field(default_factory=dict)  # what the run did outside the store (a push)
    sets: list[str] = field(default_factory=list)  # `--set PATH=VALUE` as given (`spec` holds their result)
    # The world the trainer really used (world_size, nodes, processes_per_node, backend, sharding,
    # device), read back from the train artifact's summary: not what the spec asked for.
    world: dict[str, Any] | None = None

    def stage(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.stages if s["stage"] == name), None)


def runs_dir(store_root: Path) -> Path:
    return store_root / "runs"


def new_record(store_root: Path, spec_path: Path, spec: dict[str, Any], profile: dict[str, Any],
               sets: Sequence[str] = ()) -> tuple[RunRecord, Path]:
    record = RunRecord(spec_path=str(spec_path.resolve()), spec=spec, profile=profile, sets=list(sets),
                       versions=library_versions(profile.get("distributed")), git_commit=git_commit(spec_path.resolve().parent))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.started))
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(spec.get("name", "run")))[:40]
    path = runs_dir(store_root) / f"{stamp}-{os.getpid()}-{name}.json"
    return record, path


def save_record(record: RunRecord, path: Path) -> None:
    """Write-then-rename (outputs.RunRecord.write), so a reader (or a kill) never meets half a record."""
    try:
        Written.parse_at(asdict(record), path).write(path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"disk full while writing the run record to {path.parent}; free some space "
                             "(`runner gc` removes unused artifacts) and run again: finished stages are kept") from exc
        raise write_error(path.parent.parent, exc) from exc


def trained_world(artifact: Path | None) -> dict[str, Any] | None:
    """The world that trained an artifact, as its summary.json says (the train stage writes it)."""
    try:
        world = json.loads((artifact / "summary.json").read_text("utf-8")).get("world") if artifact else None
    except (OSError, ValueError, AttributeError):
        return None
    return world if isinstance(world, dict) else None


def latest_record(store_root: Path, spec_path: Path) -> RunRecord | None:
    """The newest run record of the same spec file, to explain what changed since."""
    folder = runs_dir(store_root)
    try:
        if not folder.is_dir():
            return None
        paths = sorted(folder.glob("*.json"))
    except OSError as exc:  # a store folder this user may not enter: is_dir() raises EACCES
        raise StoreError(f"store {store_root} cannot be read ({exc.strerror or exc}); point --store (or "
                         "RUNNER_STORE) at a folder you can read and write") from None
    wanted = str(spec_path.resolve())
    newest: Written | None = None
    for path in paths:
        try:
            found = Written.read(path)
        except OutputError:
            continue  # a record being written by another run, or damaged: not evidence
        if found.spec_path == wanted and (newest is None or found.started > newest.started):
            newest = found
    return RunRecord(**newest.raw) if newest else None


def done_before(store_root: Path, name: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """A side effect `name` with this identity (stage key included) that an earlier run of any spec did."""
    try:
        paths = sorted(runs_dir(store_root).glob("*.json"))
    except OSError:
        return None
    for path in reversed(paths):
        try:
            done = Written.read(path).side_effect(name)
        except OutputError:
            continue
        if isinstance(done, dict) and done.get("identity") == identity and done.get("result"):
            return dict(done)
    return None


def library_versions(distributed: str | None = None) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    extra = SHARDING_LIBRARIES.get(distributed or "")
    for name in LIBRARIES + ((extra,) if extra else ()):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
