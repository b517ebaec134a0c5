"""The five stages, and the one registry the executor reaches them through.

Each stage is a module (or a package, when it has helpers) satisfying `runner.core.stage.Stage`; heavy
libraries are imported inside `run` (or in the helper modules `run` imports), so planning never
loads torch. Nothing outside this package imports from it but `runner.core.execute` (a test checks).
"""

from __future__ import annotations

from runner.core.stage import Stage


def all_stages() -> tuple[Stage, ...]:
    from runner.stages import data, eval, export, model, train

    stages: tuple[Stage, ...] = (model, data, train, export, eval)  # type: ignore[assignment]
    return stages
