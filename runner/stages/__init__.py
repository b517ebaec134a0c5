"""The five stages. Each is a module that satisfies `Stage`; heavy libraries are imported inside
`run` (or in helper modules that `run` imports), so planning never loads torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.profile import Profile
from runner.spec import Spec


@dataclass(frozen=True)
class StageContext:
    spec: Spec
    profile: Profile
    out: Path  # empty build folder; becomes the artifact when `run` returns
    work: Path  # survives a failed attempt (checkpoints); removed once the stage commits
    upstream: dict[str, Path]  # upstream stage name -> its committed artifact folder
    files: dict[str, Path]  # local files the stage reads, by role (their digests are in the key)
    log: Callable[[str], None]


class Stage(Protocol):
    name: str
    version: int  # bump when a code change changes the output: the only way code enters a key
    upstream: tuple[str, ...]  # "model" or "model:tokenizer" (one part of the model's output)
    volatile: tuple[str, ...]  # globs of files (timings, logs) kept out of the output digest
    uses_profile: bool

    def spec_slice(self, spec: Spec) -> dict[str, Any]: ...

    def local_files(self, spec: Spec) -> dict[str, Path]: ...

    def run(self, ctx: StageContext) -> None: ...


def all_stages() -> tuple[Stage, ...]:
    from runner.stages import data, eval, export, model, train

    stages: tuple[Stage, ...] = (model, data, train, export, eval)  # type: ignore[assignment]
    return stages


STAGE_NAMES = ("model", "data", "train", "export", "eval")
