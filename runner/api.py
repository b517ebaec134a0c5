"""The Python API, for notebooks and Colab: the same functions the command line calls.

    from runner import api
    api.validate("specs/smoke.yaml")
    api.plan("specs/smoke.yaml", store="/content/drive/MyDrive/runner")    # shows what `runner plan` prints
    result = api.run("specs/smoke.yaml", store="/content/drive/MyDrive/runner", sets=["train.epochs=1"])
    result                      # the summary `runner run` prints
    result.metrics, result.accuracy, result.losses, result.artifacts, result.report   # as data

A relative spec path is read from the current directory (a notebook's: `os.getcwd()`).
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.errors import SpecError
from runner.machine.profile import Profile
from runner.machine.world import Nodes
from runner.spec.typed import Spec


def _log(message: str) -> None:
    print(f"[runner] {message}", flush=True)


def spec_file(spec: str | Path) -> Path:
    """The spec's path; a relative one is read from the current directory, and a missing one says which
    directory that is and where the checkout's specs are, when they are there."""
    path = Path(spec)
    if path.is_file():
        return path
    cwd = Path.cwd()
    beside = Path(__file__).resolve().parent.parent / path  # a checkout's specs/, where the package came from
    hint = (f"; did you mean {beside}?" if not path.is_absolute() and beside.is_file()
            else "; give an absolute path, or os.chdir() to the folder the relative path starts from")
    where = f" (relative to the current directory, {cwd})" if not path.is_absolute() else ""
    raise SpecError([f"{spec}: no such spec file{where}{hint}"])


def validate(spec: str | Path, sets: Sequence[str] = ()) -> Spec:
    """The typed spec, with `sets` ("train.epochs=1") applied; raises SpecError listing every problem."""
    from runner.spec.overrides import load_spec_with

    return load_spec_with(spec_file(spec), sets)


class _Shown:
    """Results that show in a notebook as the command line prints them (repr, Markdown, HTML)."""

    def summary(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.summary()

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"


@dataclass(frozen=True, repr=False)
class Planned(_Shown):
    profile: Profile
    lines: list[str]  # one per stage (key, cached / will run / stale and why), then the memory estimate

    def summary(self) -> str:
        """What `runner plan` prints: the profile and why, then the stages."""
        from runner.core.recap import plan_lines

        return "\n".join(plan_lines(self.profile, self.lines))


def plan(spec: str | Path, store: str | Path = "artifacts", force: Iterable[str] = (), verify: bool = False,
         sets: Sequence[str] = ()) -> Planned:
    """What `run` would do, without doing it (with `sets` applied, as `run` would apply them)."""
    from runner.core.execute import registered_stages
    from runner.core.plan import chain_lines, memory_lines, mixture_lines
    from runner.core.plan import plan as make_plan
    from runner.core.records import latest_record
    from runner.core.store import Store
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile

    path = spec_file(spec)
    typed = validate(path, sets)
    profile = resolve_profile(typed, probe_machine())
    steps = make_plan(registered_stages(), typed, profile, Store(Path(store)), latest_record(Path(store), path),
                      frozenset(force), verify)
    chain = chain_lines(registered_stages(), typed, Store(Path(store)))  # train.init_adapter's spec, if any
    return Planned(profile, chain + [step.line() for step in steps] + mixture_lines(steps, typed)
                   + memory_lines(steps, typed, profile))


@dataclass(frozen=True, repr=False)
class Result(_Shown):
    outcomes: list  # list[runner.core.execute.Outcome]
    record: Path
    seconds: float

    def summary(self) -> str:
        """What `runner run` prints at the end."""
        from runner.core.recap import summary_lines

        return "\n".join(summary_lines(self.outcomes, self.record, self.seconds))

    @property
    def artifacts(self) -> dict[str, Path]:
        """Each stage's artifact folder (this run's or the one it reused)."""
        return {o.stage: o.path for o in self.outcomes if o.path is not None}

    @property
    def report(self) -> Path | None:
        """The evaluation report (report.html; report.md beside it), when eval ran or was reused."""
        found = self.artifacts.get("eval")
        return found / "report.html" if found is not None and (found / "report.html").is_file() else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The eval stage's metrics.json: per benchmark accuracy, intervals, paired test, calibration,
        free-text scores, perplexity ({} when eval did not run)."""
        return self._json("eval", "metrics.json")

    @property
    def losses(self) -> dict[str, Any]:
        """The train stage's summary.json: first and last training loss, validation loss before and
        after, steps, time ({} when train did not run)."""
        return self._json("train", "summary.json")

    @property
    def accuracy(self) -> dict[str, dict[str, float | None]]:
        """{benchmark: {"base": acc, "tuned": acc}} for the multiple-choice benchmarks, fractions of 1."""
        return {name: {label: r[label]["acc"] for label in ("base", "tuned") if label in r}
                for name, r in self.metrics.get("benchmarks", {}).items()}

    def _json(self, stage: str, name: str) -> dict[str, Any]:
        folder = self.artifacts.get(stage)
        if folder is None or not (folder / name).is_file():
            return {}
        data: dict[str, Any] = json.loads((folder / name).read_text("utf-8"))
        return data


def run(spec: str | Path, store: str | Path = "artifacts", only: str | None = None, force: Iterable[str] = (),
        verify: bool = False, log: Callable[[str], None] = _log, again: bool = False,
        sets: Sequence[str] = ()) -> Result:
    """Run every stage that is not cached; artifacts go to `store` (a mounted Drive survives a disconnect).
    `again`: repeat a push an earlier run already made of the same export to the same place.
    `sets`: fields to set as if the YAML said them ("train.epochs=1"), recorded in the run record."""
    from runner.core.execute import Options, run_spec
    from runner.core.quiet import quiet_known_warnings
    from runner.core.store import Store
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.machine.world import nodes_from_environment

    quiet_known_warnings()
    started = time.time()
    path = spec_file(spec)
    typed = validate(path, sets)
    nodes = nodes_from_environment()
    profile = resolve_profile(typed, nodes.cluster_probe(probe_machine()))
    nodes.per_node(profile.processes)  # a world that cannot be split over the nodes: one line before any stage
    log(f"profile: {profile.device} {profile.dtype}, quantization {profile.quantization}")
    outcomes, record = run_spec(typed, path, profile, Store(Path(store)), log,
                                Options(only=only, force=frozenset(force), verify=verify, again=again, sets=tuple(sets)))
    return Result(outcomes, record, time.time() - started)


def follow(spec: str | Path, store: str | Path, nodes: Nodes, log: Callable[[str], None] = _log,
           sets: Sequence[str] = ()) -> str:
    """`runner run --node-rank R` (R > 0): join node 0's training of this spec; node 0 writes the store."""
    from runner.core.follow import follow as join
    from runner.core.store import Store
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile

    typed = validate(spec_file(spec), sets)
    profile = resolve_profile(typed, nodes.cluster_probe(probe_machine()))
    nodes.per_node(profile.processes)  # the same line node 0 stops with, before waiting for it
    return join(typed, profile, Store(Path(store)), nodes, log)


def _run_on(on: str, written: list[Any], store: Path, jobs: int, slots: list[str | None], address: str | None,
            folder: Path, gpus: int, log: Callable[[str], None]) -> dict[str, int]:
    """Each variant's exit code, run here (`jobs` at once) or through a cluster's engine."""
    from runner.experiments import cluster
    from runner.experiments.sweep import run_variants

    if on == "ray":
        return cluster.run_on_ray(written, store, address, log)
    if on == "slurm":
        return cluster.run_on_slurm(written, store, folder, min(gpus, 1), log)
    return run_variants(written, store, jobs, slots, log)


@dataclass(frozen=True)
class Compared:
    report: Path  # report.html; report.md, the pictures and comparison.json beside it
    lines: list[str]  # what `runner compare` prints


def compare(runs: Iterable[str | Path], store: str | Path = "artifacts", against: str = "baseline",
            out: str | Path | None = None) -> Compared:
    """One report over several runs (run records, or spec files for their newest completed run); the
    first is the baseline, or each is tested against the most accurate (`against="best"`)."""
    import hashlib

    from runner.experiments.compare import compare as paired_tests
    from runner.experiments.compare import distinct, find_run, load_run, summary_lines, unique_labels, write_report

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
    best: str | None = None  # a search's line naming its best trial and its values


def sweep(spec: str | Path, sets: Iterable[str] = (), variants: str | Path | None = None,
          store: str | Path = "artifacts", jobs: int = 1, plan_only: bool = False, write: str | Path | None = None,
          against: str = "baseline", log: Callable[[str], None] = _log, show: Callable[[str], None] = print,
          max_variants: int | None = None, on: str = "local", address: str | None = None) -> Swept:
    """Expand `spec` by a grid (`sets`: "lora.r=8,16") or a variants file, show every variant's plan,
    run them (`jobs` at once; `on` "ray" or "slurm": all at once on a cluster, docs/scale-out.md) and
    compare them. `write`: only write the variant specs there."""
    from runner.core.errors import SpecError
    from runner.experiments.variants import expand, sweep_folder, write_variants

    sets = list(sets)
    if bool(sets) == (variants is not None):
        raise SpecError(["sweep: give --set PATH=V1,V2 (a grid) or --variants FILE, one of the two"])
    if jobs < 1:
        raise SpecError([f"sweep: --jobs {jobs}: run at least 1 variant at a time (--jobs 1, the default)"])
    if address is not None and on != "ray":
        raise SpecError([f"sweep: --address is a Ray cluster's: add --on ray (or leave --address out for --on {on})"])
    base = validate(spec)
    expanded = expand(sets, Path(variants) if variants is not None else None, base.name, max_variants)
    folder = Path(write) if write else sweep_folder(Path(store), Path(spec), expanded)
    written = write_variants(Path(spec), expanded, folder, write=not plan_only)  # a plan writes nothing
    jobs = min(jobs, len(written))  # more slots than variants would hold nothing (and --jobs 2**70 no memory)
    if write:
        return Swept([w.path for w in written], [], {}, None)
    from runner.core.execute import registered_stages
    from runner.core.store import Store
    from runner.experiments.sweep import device_slots, plan_lines, plan_variants, visible_gpus
    from runner.machine.probe import probe_machine

    probe = probe_machine()
    slots = device_slots(jobs, visible_gpus(dict(os.environ), probe))
    planned = plan_lines(plan_variants(registered_stages(), written, Store(Path(store)), probe, slots[0]))
    for line in planned:
        show(line)
    if plan_only:
        return Swept([w.path for w in written], planned, {}, None)
    codes = _run_on(on, written, Path(store), jobs, slots, address, folder, len(probe.gpus), log)
    done = [w.path for w in written if codes.get(w.variant.name) == 0]
    compared = compare(done, store, against, folder / "compare") if done else None
    for line in compared.lines if compared else []:
        show(line)
    return Swept([w.path for w in written], planned, codes, compared)


def search(spec: str | Path, ranges: Iterable[str], objective: str, trials: int, direction: str | None = None,
           store: str | Path = "artifacts", jobs: int = 1, plan_only: bool = False, against: str = "baseline",
           log: Callable[[str], None] = _log, show: Callable[[str], None] = print, max_variants: int | None = None,
           on: str = "local", address: str | None = None) -> Swept:
    """`runner sweep --search optuna`: Optuna proposes `trials` variants within `ranges` ("lora.r=4,8,16",
    "train.learning_rate=1e-4:1e-2:log"), each run as a sweep's variant and scored by `objective`
    ("BENCH/accuracy" or "validation_loss"); then the same comparison as a sweep's, and the best trial."""
    from runner.experiments.search import check_corners, make_space, search_folder
    from runner.experiments.search import search as run_search
    from runner.experiments.variants import MAX_VARIANTS

    limit = MAX_VARIANTS if max_variants is None else max_variants
    if not 1 <= trials <= limit:
        raise SpecError([f"sweep --search: --trials {trials}: run 1 to {limit:,} trials (raise the limit with "
                         f"--max-variants {min(max(trials, 1), 10**6)})"])
    if jobs < 1:
        raise SpecError([f"sweep: --jobs {jobs}: run at least 1 variant at a time (--jobs 1, the default)"])
    if address is not None and on != "ray":
        raise SpecError([f"sweep: --address is a Ray cluster's: add --on ray (or leave --address out for --on {on})"])
    base = validate(spec)
    space = make_space(list(ranges), objective, direction, base)
    check_corners(spec_file(spec), space, base.name)  # a bound the spec cannot take, before --plan says all is well
    lines = [*space.lines(trials), f"search: study in {search_folder(Path(store), spec_file(spec), space)}"]
    for line in lines:
        show(line)
    if plan_only:
        return Swept([], lines, {}, None)
    found = run_search(spec_file(spec), base, space, Path(store), trials, jobs,
                       _trial_runner(on, Path(store), jobs, address, show, log), log)
    compared = compare(found.done, store, against, found.specs[0].parent / "compare") if found.done else None
    for line in (compared.lines if compared else []) + ([found.best] if found.best else []):
        show(line)
    return Swept(found.specs, lines, found.codes, compared, found.best)


def _trial_runner(on: str, store: Path, jobs: int, address: str | None, show: Callable[[str], None],
                  log: Callable[[str], None]) -> Callable[[list[Any]], dict[str, int]]:
    """Run a batch of a search's trials as a sweep runs its variants: each one's plan shown, then run."""
    from runner.core.execute import registered_stages
    from runner.core.store import Store
    from runner.experiments.sweep import device_slots, plan_lines, plan_variants, visible_gpus
    from runner.machine.probe import probe_machine

    probe = probe_machine()
    slots = device_slots(jobs, visible_gpus(dict(os.environ), probe))

    def run(written: list[Any]) -> dict[str, int]:
        for line in plan_lines(plan_variants(registered_stages(), written, Store(store), probe, slots[0])):
            show(line)
        folder = written[0].path.parent  # the search's: a SLURM array's logs go there, as a sweep's do
        return _run_on(on, written, store, min(jobs, len(written)), slots, address, folder, len(probe.gpus), log)

    return run
