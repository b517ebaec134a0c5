"""`runner sweep --search optuna`: Optuna proposes each trial's values within the ranges given, every
trial an ordinary variant spec run as a grid's variants are, its objective read from its outputs.

The study lives in an SQLite file in the search's folder, so a killed search run again goes on where
it stopped: finished trials are not run again, a trial left unfinished (killed, or its run failed) is
run again with the values it was given (the store makes its finished stages free), and only then are
new values asked for. The TPE sampler is seeded per trial from the spec's seed and the trial's number,
so a search stopped and resumed proposes what the same search run through would have. Light: optuna
is imported when a search runs, never torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner.core.errors import ProfileError, SpecError, StoreError
from runner.core.locks import hold
from runner.core.outputs import EvalMetrics, RunRecord, TrainSummary
from runner.experiments.compare import find_run
from runner.experiments.variants import Variant, Written, file_stem, short, write_variants
from runner.spec.extras import install_hint
from runner.spec.fieldpaths import Path_, check_value, dotted, leaves, parse_path, read_value, split_values
from runner.spec.schema import field_schema
from runner.spec.typed import Spec
from runner.spec.yamlpos import clip, decode_spec, read_spec

ENGINES = ("optuna",)
EXTRA = "cluster"  # pyproject's extra that installs optuna
ACCURACY_FORMATS = ("medqa", "medmcqa", "pubmedqa", "multiple_choice")  # the benchmarks scored by accuracy
VALIDATION_LOSS = "validation_loss"
DB = "study.db"


@dataclass(frozen=True)
class Range:
    """One `--range PATH=LOW:HIGH[:log]` (numbers) or `--range PATH=V1,V2,...` (values to choose from)."""

    path: Path_
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[tuple[str, Any], ...] = ()  # (as written, as YAML reads it)

    @property
    def name(self) -> str:
        return dotted(self.path)

    def value(self, proposed: Any) -> Any:
        """The spec value of what Optuna proposed (a choice is proposed as written)."""
        if self.kind == "choice":
            return dict(self.choices)[proposed]
        return int(proposed) if self.kind == "int" else float(proposed)

    def described(self) -> str:
        if self.kind == "choice":
            return f"{self.name} one of {', '.join(raw for raw, _ in self.choices)}"
        return f"{self.name} in [{_number(self.low)}, {_number(self.high)}]{' (log scale)' if self.log else ''}"


def parse_range(text: str) -> Range:
    """`train.learning_rate=1e-4:1e-2:log` or `lora.r=4,8,16` -> Range; anything wrong is one line."""
    where, sep, given = text.partition("=")
    what = f"--range {clip(text, 60)}"
    if not sep or not where.strip() or not given.strip():
        raise SpecError([f"{what}: write PATH=LOW:HIGH[:log] or PATH=V1,V2,..., e.g. --range train.learning_rate=1e-4:1e-2:log"])
    path = parse_path(where.strip(), f"--range {where.strip()}")
    listed = split_values(given)
    if len(listed) > 1:
        return _choices(path, listed)
    parts = [p.strip() for p in given.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise SpecError([f"{what}: write LOW:HIGH or LOW:HIGH:log for numbers, or list two values or more "
                         f"(PATH=V1,V2)"])
    kind = _numeric_kind(path, what)
    low, high = (read_value(p, f"--range {dotted(path)}={clip(p, 40)}") for p in parts[:2])
    for bound, raw in ((low, parts[0]), (high, parts[1])):
        check_value(path, bound, f"--range {dotted(path)}={clip(raw, 40)}")
    if not low < high:
        raise SpecError([f"{what}: LOW must be below HIGH, got {parts[0]} and {parts[1]}"])
    if len(parts) == 3 and low <= 0:
        raise SpecError([f"{what}: a log scale needs LOW above 0, got {parts[0]}"])
    return Range(path, kind, low, high, len(parts) == 3)


def _choices(path: Path_, listed: list[str]) -> Range:
    values = []
    for raw in listed:
        what = f"--range {dotted(path)}={clip(raw, 40)}"
        value = read_value(raw, what)
        check_value(path, value, what)
        values.append((raw, value))
    if len({json.dumps(v, sort_keys=True) for _, v in values}) < len(values):
        raise SpecError([f"--range {dotted(path)}: a value is listed twice"])
    return Range(path, "choice", choices=tuple(values))


def _numeric_kind(path: Path_, what: str) -> Literal["float", "int"]:
    """A LOW:HIGH range's kind from the field's schema type; a field that is no number lists its values."""
    found = field_schema(path)[0] or {}
    types = found.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    if "integer" in types:
        return "int"
    if "number" in types:
        return "float"
    raise SpecError([f"{what}: {dotted(path)} is not a number field; list the values to try instead "
                     f"(--range {dotted(path)}=V1,V2)"])


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Objective:
    """What a trial scores: a benchmark's accuracy (of the fine-tuned model) or the validation loss after training."""

    benchmark: str | None  # None: the validation loss

    @property
    def name(self) -> str:
        return f"{self.benchmark}/accuracy" if self.benchmark is not None else VALIDATION_LOSS

    @property
    def direction(self) -> Literal["max", "min"]:
        return "max" if self.benchmark is not None else "min"


def parse_objective(text: str, spec: Spec) -> Objective:
    """`BENCHMARK/accuracy` (a multiple-choice benchmark the spec evaluates) or `validation_loss`."""
    if text == VALIDATION_LOSS:
        if spec.data.validation is None and spec.data.validation_fraction <= 0:
            raise SpecError([f"--objective {VALIDATION_LOSS}: the spec holds out no validation rows; set "
                             "data.validation_fraction above 0 (or data.validation), or use BENCHMARK/accuracy"])
        return Objective(None)
    bench, sep, measure = text.rpartition("/")
    names = {b.name: b for b in spec.eval.benchmarks}
    scored = [b.name for b in spec.eval.benchmarks if b.format in ACCURACY_FORMATS]
    choices = ", ".join([f"{b}/accuracy" for b in scored] + [VALIDATION_LOSS])
    if not sep or measure != "accuracy" or not bench:
        raise SpecError([f"--objective {clip(text, 60)}: write BENCHMARK/accuracy or {VALIDATION_LOSS} "
                         f"(this spec: {choices})"])
    if bench not in names:
        raise SpecError([f"--objective {clip(text, 60)}: the spec evaluates no benchmark {clip(bench, 40)!r} "
                         f"(this spec: {choices})"])
    if bench not in scored:
        raise SpecError([f"--objective {clip(text, 60)}: {bench} is a {names[bench].format} benchmark, scored by "
                         f"ROUGE-L and BLEU, not accuracy (this spec: {choices})"])
    return Objective(bench)


def read_objective(objective: Objective, record_path: Path) -> float | None:
    """The trial's objective from its run's outputs: the eval stage's metrics.json (the fine-tuned
    model's accuracy) or the train stage's summary.json (the validation loss after training); None
    where the run has none, or the loss is not a number (training diverged)."""
    record = RunRecord.read(record_path)
    store = record_path.resolve().parent.parent
    keys = dict(record.stages)
    if objective.benchmark is not None:
        if "eval" not in keys:
            return None
        entry = EvalMetrics.read(store / "eval" / keys["eval"] / "metrics.json").benchmarks.get(objective.benchmark)
        return entry.tuned.acc if entry is not None else None
    if "train" not in keys:
        return None
    loss = TrainSummary.read(store / "train" / keys["train"] / "summary.json").eval_loss_after
    return loss if loss is not None and math.isfinite(loss) else None


@dataclass(frozen=True)
class Space:
    """What a search is: its ranges, objective and direction, and the seed its sampler starts from."""

    ranges: tuple[Range, ...]
    objective: Objective
    direction: Literal["max", "min"]
    seed: int

    def lines(self, trials: int) -> list[str]:
        return [f"search: optuna TPE (seed {self.seed}), {trials} trial(s), {self.direction}imise {self.objective.name}",
                *(f"  {r.described()}" for r in self.ranges)]


def make_space(ranges: list[str], objective: str, direction: str | None, spec: Spec) -> Space:
    """The ranges (each once), the objective and the direction (its natural one unless given)."""
    if not ranges:
        raise SpecError(["sweep --search: give at least one --range PATH=LOW:HIGH[:log] or PATH=V1,V2"])
    parsed = [parse_range(text) for text in ranges]
    if len({r.path for r in parsed}) < len(parsed):
        raise SpecError(["--range: a field is given twice; give each field one --range"])
    goal = parse_objective(objective, spec)
    if direction not in (None, "max", "min"):
        raise SpecError([f"--direction {clip(str(direction), 20)}: max or min"])
    return Space(tuple(parsed), goal, direction or goal.direction, spec.seed)  # type: ignore[arg-type]


def search_folder(store: Path, spec_path: Path, space: Space) -> Path:
    """`<store>/sweeps/<spec>-search-<digest>`: the same search (spec, ranges, objective) again finds its
    study there, whatever --trials says, so a larger --trials goes on with it; an edited spec starts anew
    (its old trials' objectives were measured on another spec)."""
    if store.exists() and not store.is_dir():
        raise StoreError(f"sweep: --store {clip(str(store), 120)} is not a folder: give the artifact store's folder")
    doc, _ = read_spec(decode_spec(spec_path.read_bytes(), str(spec_path)), str(spec_path))
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "description"}
    what = json.dumps([str(spec_path.resolve()), doc, [repr(r) for r in space.ranges], space.objective.name,
                       space.direction, space.seed], sort_keys=True, default=str)
    return store / "sweeps" / f"{file_stem(spec_path.stem)[:100]}-search-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def trial_variant(base_name: str, number: int, ranges: tuple[Range, ...], params: dict[str, Any]) -> Variant:
    """Trial `number` as a variant: `<base>-t3-lr0.00123-r8`, the values as Optuna proposed them."""
    values = [(r, r.value(params[r.name])) for r in ranges]
    label = "-".join([f"t{number}", *(_label(r, params[r.name], v) for r, v in values)])
    overrides = tuple(leaf for r, v in values for leaf in leaves(r.path, v))
    origin = f"trial {number}: " + " ".join(f"{r.name}={_shown(r, params[r.name], v)}" for r, v in values)
    return Variant(f"{base_name}-{file_stem(label)}", file_stem(label), overrides, origin)


def _label(r: Range, proposed: Any, value: Any) -> str:
    return file_stem(f"{short(r.path)}{_shown(r, proposed, value)}")


def _shown(r: Range, proposed: Any, value: Any) -> str:
    return str(proposed) if r.kind == "choice" else f"{value:.3g}" if r.kind == "float" else str(value)


def check_corners(spec_path: Path, space: Space, base_name: str) -> None:
    """Every bound and choice, through the whole spec check (cross-field rules too), before any trial runs:
    the lows together, the highs together (a choice's first and last value)."""
    low = {r.name: r.choices[0][0] if r.kind == "choice" else r.low for r in space.ranges}
    high = {r.name: r.choices[-1][0] if r.kind == "choice" else r.high for r in space.ranges}
    corners = [trial_variant(base_name, 0, space.ranges, low), trial_variant(base_name, 1, space.ranges, high)]
    write_variants(spec_path, corners, spec_path.parent, write=False)


def optuna_module() -> Any:
    """optuna, or one line naming the extra that installs it."""
    try:
        import optuna
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in ("optuna", "sqlalchemy", "alembic"):
            raise
        raise ProfileError(f"runner sweep --search optuna needs the `{EXTRA}` extra ({exc.name} not installed): "
                           f"{install_hint(EXTRA)}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search says what it does itself
    return optuna


def distributions(optuna: Any, space: Space) -> dict[str, Any]:
    """Each range as the Optuna distribution it is drawn from (a choice by the text as written)."""
    dist = optuna.distributions
    return {r.name: dist.CategoricalDistribution([raw for raw, _ in r.choices]) if r.kind == "choice"
            else dist.IntDistribution(int(r.low), int(r.high), log=r.log) if r.kind == "int"
            else dist.FloatDistribution(float(r.low), float(r.high), log=r.log) for r in space.ranges}


def open_study(optuna: Any, folder: Path, space: Space) -> Any:
    """The search's study in `<folder>/study.db`, made on the first run, found again on the next."""
    from sqlalchemy.exc import SQLAlchemyError  # optuna's own dependency, for its SQLite storage

    db = folder / DB
    try:
        folder.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
        return optuna.create_study(storage=storage, study_name="search", load_if_exists=True,
                                   direction="maximize" if space.direction == "max" else "minimize")
    except (OSError, optuna.exceptions.OptunaError, SQLAlchemyError) as exc:
        why = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StoreError(f"sweep --search: cannot keep the study in {clip(str(db), 120)} ({clip(why, 80)}): remove "
                         "the file to start the search anew, or give another --store") from None


def trial_seed(seed: int, number: int) -> int:
    """Trial `number`'s sampler seed: the same trial draws the same values in a resumed search."""
    return int(hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Searched:
    specs: list[Path]  # every trial's spec file, in trial order
    codes: dict[str, int]  # variant name -> exit code, for the trials run by this invocation
    done: list[Path]  # the spec files of the trials with an objective, in trial order
    best: str | None  # the line naming the best trial and its values


Runner = Callable[[list[Written]], dict[str, int]]


@dataclass
class Search:
    """One invocation of a search: trials left unfinished first, then new ones until the study holds `trials`."""

    optuna: Any
    study: Any
    space: Space
    spec_path: Path
    base_name: str
    folder: Path
    store: Path
    log: Callable[[str], None]

    def run(self, trials: int, jobs: int, run: Runner) -> dict[str, int]:
        codes: dict[str, int] = {}
        unfinished = self.trials(self.optuna.trial.TrialState.RUNNING)
        if unfinished:
            self.log(f"search: {len(unfinished)} unfinished trial(s) from before, run again with their values")
        while unfinished or len(self.trials()) < trials:
            batch = unfinished[:jobs] or [self.ask() for _ in range(min(jobs, trials - len(self.trials())))]
            unfinished = unfinished[len(batch):] if unfinished else []
            written = write_variants(self.spec_path, [self.variant(t) for t in batch], self.folder)
            ran = run(written)
            codes |= ran
            for trial, w in zip(batch, written):
                if ran.get(w.variant.name) == 0:
                    self.tell(trial.number, w)
        return codes

    def trials(self, *states: Any) -> list[Any]:
        return list(self.study.get_trials(deepcopy=False, states=states or None))

    def ask(self) -> Any:
        number = len(self.trials())
        self.study.sampler = self.optuna.samplers.TPESampler(seed=trial_seed(self.space.seed, number))
        trial = self.study.ask(distributions(self.optuna, self.space))
        trial.set_user_attr("variant", self.variant(trial).name)
        return trial

    def variant(self, trial: Any) -> Variant:
        return trial_variant(self.base_name, trial.number, self.space.ranges, trial.params)

    def tell(self, number: int, w: Written) -> None:
        """The trial's objective, read from its run's outputs; a run without one is a failed trial."""
        value = read_objective(self.space.objective, find_run(w.path, self.store))
        if value is None:
            self.log(f"search: trial {number} ({w.variant.name}) has no {self.space.objective.name} (no such "
                     "figure in its outputs, or not a number): a failed trial")
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
            return
        self.log(f"search: trial {number} ({w.variant.name}): {self.space.objective.name} {value:.4g}")
        self.study.tell(number, value)

    def results(self) -> Searched:
        """Every trial's spec, the finished ones, the best line; and search.json beside the study."""
        every = self.trials()
        done = [t for t in every if t.state == self.optuna.trial.TrialState.COMPLETE]
        best = best_trial(done, self.space.direction)
        line = None
        if best is not None:
            values = ", ".join(f"{r.name}={_shown(r, best.params[r.name], r.value(best.params[r.name]))}"
                               for r in self.space.ranges)
            line = (f"search: best of {len(done)} trial(s): trial {best.number} ({best.user_attrs.get('variant')}), "
                    f"{self.space.objective.name} {best.value:.4g} ({self.space.direction}); {values}")
        self.write_summary(every, best)
        return Searched([self.spec_file(t) for t in every], {}, [self.spec_file(t) for t in done], line)

    def spec_file(self, trial: Any) -> Path:
        return self.folder / f"{file_stem(str(trial.user_attrs.get('variant', '')))}.yaml"

    def write_summary(self, every: list[Any], best: Any) -> None:
        rows = [{"number": t.number, "variant": t.user_attrs.get("variant"), "state": t.state.name, "value": t.value,
                 "values": {r.name: r.value(t.params[r.name]) for r in self.space.ranges}} for t in every]
        summary = {"objective": self.space.objective.name, "direction": self.space.direction, "seed": self.space.seed,
                   "best": best.number if best is not None else None, "trials": rows}
        (self.folder / "search.json").write_text(json.dumps(summary, indent=1), "utf-8")


def best_trial(done: list[Any], direction: str) -> Any:
    """The finished trial with the best objective; of equal ones, the first (Optuna's own tie is not pinned)."""
    if not done:
        return None
    sign = 1 if direction == "max" else -1
    return max(sorted(done, key=lambda t: t.number), key=lambda t: sign * t.value)


def search(spec_path: Path, spec: Spec, space: Space, store: Path, trials: int, jobs: int, run: Runner,
           log: Callable[[str], None]) -> Searched:
    """Run the search: the study opened (or found again), held by one invocation at a time, its trials
    run through `run` (a batch of `jobs` written variants -> each one's exit code)."""
    optuna = optuna_module()
    check_corners(spec_path, space, spec.name)
    folder = search_folder(store, spec_path, space)
    with hold(folder / "search.lock", f"search {folder}", log):
        study = open_study(optuna, folder, space)
        driver = Search(optuna, study, space, spec_path, spec.name, folder, store, log)
        log(f"search: study {folder / DB}, {len(driver.trials())} trial(s) so far")
        codes = driver.run(trials, jobs, run)
        found = driver.results()
    return Searched(found.specs, codes, found.done, found.best)
