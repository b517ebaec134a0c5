"""The Python API, for notebooks and Colab: the same functions the command line calls.

    from runner import api
    api.validate("specs/smoke.yaml")
    print("\n".join(api.plan("specs/smoke.yaml", store="/content/drive/MyDrive/runner").lines))
    result = api.run("specs/smoke.yaml", store="/content/drive/MyDrive/runner")
    result.outcomes, result.record   # what ran or was reused, and the run record's path
"""

from __future__ import annotations

import os
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
        verify: bool = False, log: Callable[[str], None] = _log, again: bool = False) -> Result:
    """Run every stage that is not cached; artifacts go to `store` (a mounted Drive survives a disconnect).
    `again`: repeat a push an earlier run already made of the same export to the same place."""
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
                                Options(only=only, force=frozenset(force), verify=verify, again=again))
    return Result(outcomes, record, time.time() - started)


@dataclass(frozen=True)
class Compared:
    report: Path  # report.html; report.md, the pictures and comparison.json beside it
    lines: list[str]  # what `runner compare` prints


def compare(runs: Iterable[str | Path], store: str | Path = "artifacts", against: str = "baseline",
            out: str | Path | None = None) -> Compared:
    """One report over several runs (run records, or spec files for their newest completed run); the
    first is the baseline, or each is tested against the most accurate (`against="best"`)."""
    import hashlib

    from runner.compare import compare as paired_tests
    from runner.compare import distinct, find_run, load_run, unique_labels, write_report
    from runner.comparedoc import summary_lines

    if against not in ("baseline", "best"):
        raise ValueError(f"against: 'baseline' or 'best', got {against!r}")
    refs = [Path(ref) for ref in runs]
    records = [find_run(ref, Path(store)) for ref in refs]
    distinct(records, refs)
    digest = hashlib.sha256("\n".join(str(r.resolve()) for r in records).encode()).hexdigest()[:12]
    loaded = [load_run(record) for record in records]
    unique_labels(loaded)
    found = paired_tests(loaded, against)  # type: ignore[arg-type]  # checked above
    report = write_report(loaded, found, Path(out) if out else Path(store) / "compare" / digest, against)  # type: ignore[arg-type]
    lines = [f"comparison of {len(loaded)} runs (Holm over {sum(c.holm_p is not None for c in found)} paired tests):",
             *summary_lines(loaded, found), f"  report  {report}"]
    return Compared(report, lines)


@dataclass(frozen=True)
class Swept:
    specs: list[Path]  # the variants' spec files
    plan: list[str]  # per variant and stage: key, status, sharing; then the cost
    codes: dict[str, int]  # variant name -> exit code of its `runner run` (empty when only planned or written)
    compared: Compared | None


def sweep(spec: str | Path, sets: Iterable[str] = (), variants: str | Path | None = None,
          store: str | Path = "artifacts", jobs: int = 1, plan_only: bool = False, write: str | Path | None = None,
          against: str = "baseline", log: Callable[[str], None] = _log, show: Callable[[str], None] = print,
          max_variants: int | None = None) -> Swept:
    """Expand `spec` by a grid (`sets`: "lora.r=8,16") or a variants file, show every variant's plan,
    run them (`jobs` at once) and compare them. `write`: only write the variant specs there."""
    from runner.errors import SpecError
    from runner.sweep import expand, sweep_folder, write_variants

    sets = list(sets)
    if bool(sets) == (variants is not None):
        raise SpecError(["sweep: give --set PATH=V1,V2 (a grid) or --variants FILE, one of the two"])
    if jobs < 1:
        raise SpecError([f"sweep: --jobs {jobs}: run at least 1 variant at a time (--jobs 1, the default)"])
    base = load_spec(spec)
    expanded = expand(sets, Path(variants) if variants is not None else None, base.name, max_variants)
    folder = Path(write) if write else sweep_folder(Path(store), Path(spec), expanded)
    written = write_variants(Path(spec), expanded, folder, write=not plan_only)  # a plan writes nothing
    jobs = min(jobs, len(written))  # more slots than variants would hold nothing (and --jobs 2**70 no memory)
    if write:
        return Swept([w.path for w in written], [], {}, None)
    from runner.execute import registered_stages
    from runner.probe import probe_machine
    from runner.store import Store
    from runner.sweeprun import device_slots, plan_lines, plan_variants, run_variants, visible_gpus

    probe = probe_machine()
    slots = device_slots(jobs, visible_gpus(dict(os.environ), probe))
    planned = plan_lines(plan_variants(registered_stages(), written, Store(Path(store)), probe, slots[0]))
    for line in planned:
        show(line)
    if plan_only:
        return Swept([w.path for w in written], planned, {}, None)
    codes = run_variants(written, Path(store), jobs, slots, log)
    done = [w.path for w in written if codes.get(w.variant.name) == 0]
    compared = compare(done, store, against, folder / "compare") if done else None
    for line in compared.lines if compared else []:
        show(line)
    return Swept([w.path for w in written], planned, codes, compared)
