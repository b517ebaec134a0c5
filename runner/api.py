"""The Python API, for notebooks and Colab: the same functions the command line calls.

    from runner import api
    api.validate("specs/smoke.yaml")
    print("\n".join(api.plan("specs/smoke.yaml", store="/content/drive/MyDrive/runner").lines))
    result = api.run("specs/smoke.yaml", store="/content/drive/MyDrive/runner")
    result.outcomes, result.record   # what ran or was reused, and the run record's path
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from runner.profile import Profile
from runner.spec import Spec, load_spec


def _log(message: str) -> None:
    print(f"[runner] {message}", flush=True)


def validate(spec: str | Path) -> Spec:
    """The typed spec; raises SpecError listing every problem."""
    return load_spec(spec)


@dataclass(frozen=True)
class Planned:
    profile: Profile
    lines: list[str]  # one per stage (key, cached / will run / stale and why), then the memory estimate


def plan(spec: str | Path, store: str | Path = "artifacts", force: Iterable[str] = (), verify: bool = False) -> Planned:
    """What `run` would do, without doing it."""
    from runner.execute import registered_stages
    from runner.plan import memory_lines, mixture_lines
    from runner.plan import plan as make_plan
    from runner.probe import probe_machine
    from runner.profile import resolve_profile
    from runner.records import latest_record
    from runner.store import Store

    typed = load_spec(spec)
    profile = resolve_profile(typed, probe_machine())
    steps = make_plan(registered_stages(), typed, profile, Store(Path(store)), latest_record(Path(store), Path(spec)),
                      frozenset(force), verify)
    return Planned(profile, [step.line() for step in steps] + mixture_lines(steps, typed) + memory_lines(steps, typed, profile))


@dataclass(frozen=True)
class Result:
    outcomes: list  # list[runner.execute.Outcome]
    record: Path
    seconds: float


def run(spec: str | Path, store: str | Path = "artifacts", only: str | None = None, force: Iterable[str] = (),
        verify: bool = False, log: Callable[[str], None] = _log) -> Result:
    """Run every stage that is not cached; artifacts go to `store` (a mounted Drive survives a disconnect)."""
    from runner.execute import Options, run_spec
    from runner.probe import probe_machine
    from runner.profile import resolve_profile
    from runner.quiet import quiet_known_warnings
    from runner.store import Store

    quiet_known_warnings()
    started = time.time()
    typed = load_spec(spec)
    profile = resolve_profile(typed, probe_machine())
    log(f"profile: {profile.device} {profile.dtype}, quantization {profile.quantization}")
    outcomes, record = run_spec(typed, Path(spec), profile, Store(Path(store)), log,
                                Options(only=only, force=frozenset(force), verify=verify))
    return Result(outcomes, record, time.time() - started)
