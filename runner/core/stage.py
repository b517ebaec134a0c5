"""What a stage is, to the planner and the executor: a small Protocol and the context it runs in.

Light on purpose (no torch, no stage imports): `plan`, `execute`, `gc` and the CLI know stages only
through this interface and the one registry in `runner.stages`, never by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.core.names import STAGE_NAMES as STAGE_NAMES  # the stages in the order they run
from runner.machine.profile import Profile
from runner.spec.typed import Spec

Log = Callable[[str], None]


@dataclass(frozen=True)
class StageContext:
    spec: Spec
    profile: Profile
    out: Path  # empty build folder; becomes the artifact when `run` returns
    work: Path  # survives a failed attempt (checkpoints); removed once the stage commits
    upstream: dict[str, Path]  # upstream stage name -> its committed artifact folder
    files: dict[str, Path]  # local files the stage reads, by role (their digests are in the key)
    log: Log
    digests: dict[str, str] = field(default_factory=dict)  # `files`' sha256 as the key took them


class Gate(Protocol):
    """A check that runs before a stage builds (never when it is cached). What `check` finds goes into
    the run record under `gates[name]` first; then `stop` may end the run by raising a RunnerError."""

    name: str

    def check(self, spec: Spec, log: Log) -> dict[str, Any]: ...

    def stop(self, spec: Spec, found: dict[str, Any]) -> None: ...


class SideEffect(Protocol):
    """Something a run does to the world after its stages (a push to the Hub): in no key, on record under
    `side_effects[name]`, and not repeated for the same stage output and `wanted` unless asked."""

    name: str
    stage: str  # whose output it acts on

    def wanted(self, spec: Spec) -> dict[str, Any] | None: ...  # what identifies it; None: not asked for

    def apply(self, spec: Spec, artifacts: dict[str, Path], log: Log) -> dict[str, Any]: ...


class Stage(Protocol):
    name: str
    version: int  # bump when a code change changes the output: the only way code enters a key
    upstream: tuple[str, ...]  # "model" or "model:tokenizer" (one part of the model's output)
    volatile: tuple[str, ...]  # globs of files (timings, logs) kept out of the output digest
    uses_profile: bool
    gate: Gate | None
    side_effect: SideEffect | None

    def spec_slice(self, spec: Spec) -> dict[str, Any]: ...

    def local_files(self, spec: Spec) -> dict[str, Path]: ...

    def run(self, ctx: StageContext) -> None: ...


def upstream_stage(ref: str) -> str:
    """The stage an upstream reference names: "model:tokenizer" -> "model"."""
    return ref.partition(":")[0]


def upstream_part(ref: str) -> str | None:
    """The part of that stage's output it reads: "model:tokenizer" -> "tokenizer", "model" -> None."""
    return ref.partition(":")[2] or None


# Input file roles: the names under which a stage's local files enter its key and its context.
def benchmark_role(name: str) -> str:
    return f"benchmark/{name}"


def benchmark_ids_role(name: str) -> str:
    return f"benchmark/{name}/ids"


TRAIN_ROLE = "train"
VALIDATION_ROLE = "validation"
