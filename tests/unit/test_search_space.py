"""A search without training: --range parsing and its errors, the objective checked against the spec
and read from hand-made output files, and the Optuna driver over runs faked by writing those files
(the best trial, a resumed search that runs nothing twice and proposes what an unbroken one would)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.core.errors import ProfileError, SpecError
from runner.experiments.search import (
    Objective,
    make_space,
    optuna_module,
    parse_objective,
    parse_range,
    read_objective,
    search,
    search_folder,
    trial_variant,
)
from runner.experiments.variants import Written
from runner.spec.typed import load_spec

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "specs" / "smoke.yaml"


def test_a_range_is_numbers_typed_by_the_schema_or_values_to_choose_from() -> None:
    lr = parse_range("train.learning_rate=1e-4:1e-2:log")
    assert (lr.path, lr.kind, lr.low, lr.high, lr.log) == (("train", "learning_rate"), "float", 1e-4, 1e-2, True)
    r = parse_range("lora.r=4:64")
    assert (r.kind, r.low, r.high, r.log) == ("int", 4, 64, False)
    assert parse_range("train.max_steps=2:8").kind == "int"  # an integer-or-null field
    assert parse_range("lora.dropout=0:0.2").kind == "float"
    ranks = parse_range("lora.r=4,8,16")
    assert ranks.kind == "choice" and ranks.choices == (("4", 4), ("8", 8), ("16", 16)) and ranks.value("8") == 8
    modules = parse_range("lora.target_modules=all-linear,[q_proj,v_proj]")
    assert modules.value("[q_proj,v_proj]") == ["q_proj", "v_proj"]  # any YAML value, proposed as written
    assert lr.value(0.001) == 0.001 and r.value(8.0) == 8 and isinstance(r.value(8.0), int)


@pytest.mark.parametrize(("given", "message"), [
    ("train.learning_rate=1e-4:1e-2:lg", "--range train.learning_rate=1e-4:1e-2:lg: write LOW:HIGH or LOW:HIGH:log "
     "for numbers, or list two values or more (PATH=V1,V2)"),
    ("lora.r=8", "--range lora.r=8: write LOW:HIGH or LOW:HIGH:log for numbers, or list two values or more (PATH=V1,V2)"),
    ("train.learnig_rate=1e-4:1e-2", "--range train.learnig_rate: no such spec field; did you mean train.learning_rate?"),
    ("train.learning_rate=1e-2:1e-4", "--range train.learning_rate=1e-2:1e-4: LOW must be below HIGH, got 1e-2 and 1e-4"),
    ("train.learning_rate=0:1e-2:log", "--range train.learning_rate=0: must be > 0, got integer 0"),
    ("lora.dropout=0:0.5:log", "--range lora.dropout=0:0.5:log: a log scale needs LOW above 0, got 0"),
    ("lora.r=4.5:8", "--range lora.r=4.5: must be an integer, got number 4.5"),
    ("lora.r=abc:8", '--range lora.r=abc: must be an integer, got string "abc"'),
    ("data.template=1:3", "--range data.template=1:3: data.template is not a number field; list the values to try "
     "instead (--range data.template=V1,V2)"),
    ("lora.r=4,8,4", "--range lora.r: a value is listed twice"),
    ("lora.r=0,8", "--range lora.r=0: must be >= 1, got integer 0"),
    ("name=a,b", "--range name: variants are named by the sweep; set a field that changes a result"),
    ("lora.r", "--range lora.r: write PATH=LOW:HIGH[:log] or PATH=V1,V2,..., e.g. --range train.learning_rate=1e-4:1e-2:log"),
])
def test_a_wrong_range_is_one_line_naming_it(given: str, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_range(given)
    assert raised.value.problems == [message]


def test_the_objective_is_a_benchmark_the_spec_scores_by_accuracy_or_the_validation_loss() -> None:
    spec = load_spec(SMOKE)
    assert parse_objective("demo-medmc/accuracy", spec) == Objective("demo-medmc")
    assert parse_objective("validation_loss", spec).direction == "min"
    assert parse_objective("demo-seen/accuracy", spec).direction == "max"
    listed = "(this spec: demo-medmc/accuracy, demo-seen/accuracy, validation_loss)"
    for given, said in (("medqa/accuracy", f"the spec evaluates no benchmark 'medqa' {listed}"),
                        ("demo-qa/accuracy", f"demo-qa is a qa benchmark, scored by ROUGE-L and BLEU, not accuracy {listed}"),
                        ("demo-medmc/f1", f"write BENCHMARK/accuracy or validation_loss {listed}"),
                        ("accuracy", f"write BENCHMARK/accuracy or validation_loss {listed}")):
        with pytest.raises(SpecError) as raised:
            parse_objective(given, spec)
        assert raised.value.problems == [f"--objective {given}: {said}"]


def test_validation_loss_needs_validation_rows(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SMOKE.read_text().replace("validation_fraction: 0.1", "validation_fraction: 0")
                    .replace("../data/", f"{ROOT}/data/"))
    with pytest.raises(SpecError, match="holds out no validation rows; set data.validation_fraction above 0"):
        parse_objective("validation_loss", load_spec(spec))


def test_the_space_gives_each_field_once_and_its_direction() -> None:
    spec = load_spec(SMOKE)
    space = make_space(["lora.r=4,8"], "validation_loss", None, spec)
    assert (space.direction, space.seed) == ("min", 42)
    assert make_space(["lora.r=4,8"], "validation_loss", "max", spec).direction == "max"
    with pytest.raises(SpecError, match="a field is given twice"):
        make_space(["lora.r=4,8", "lora.r=2:9"], "validation_loss", None, spec)
    with pytest.raises(SpecError, match="at least one --range"):
        make_space([], "validation_loss", None, spec)


def write_run(store: Path, spec_path: Path, name: str, acc: float | None = None, loss: float | None = None,
              bench: str = "demo-medmc") -> Path:
    """A completed run's record and the outputs the objective is read from, as the stages write them."""
    eval_key, train_key = f"e{abs(hash((name, acc))) % 10**8}", f"t{abs(hash((name, loss))) % 10**8}"
    (store / "eval" / eval_key).mkdir(parents=True, exist_ok=True)
    (store / "train" / train_key).mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"benchmarks": {}}
    if acc is not None:
        metrics["benchmarks"][bench] = {"tuned": {"n": 20, "correct": round(acc * 20), "acc": acc,
                                                  "ci95": [max(acc - 0.2, 0.0), min(acc + 0.2, 1.0)]}}
    (store / "eval" / eval_key / "metrics.json").write_text(json.dumps(metrics))
    (store / "train" / train_key / "summary.json").write_text(json.dumps({"steps": 4, "eval_loss_after": loss}))
    (store / "runs").mkdir(parents=True, exist_ok=True)
    record = store / "runs" / f"{time.time_ns()}-{name}.json"
    record.write_text(json.dumps({"spec": {"name": name}, "spec_path": str(spec_path.resolve()), "status": "completed",
                                  "started": time.time(), "stages": [{"stage": "train", "key": train_key},
                                                                     {"stage": "eval", "key": eval_key}]}))
    return record


def test_the_objective_is_read_from_the_runs_outputs(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    record = write_run(tmp_path, spec, "a", acc=0.45, loss=1.25)
    assert read_objective(Objective("demo-medmc"), record) == 0.45
    assert read_objective(Objective(None), record) == 1.25
    assert read_objective(Objective("demo-seen"), record) is None  # no such benchmark in this run's metrics
    diverged = write_run(tmp_path, spec, "b", acc=0.25, loss=float("nan"))
    assert read_objective(Objective(None), diverged) is None
    not_scored = write_run(tmp_path, spec, "c", acc=None, loss=None)
    assert read_objective(Objective(None), not_scored) is None


def test_a_trial_is_a_variant_named_by_its_number_and_values() -> None:
    ranges = (parse_range("train.learning_rate=1e-4:1e-2:log"), parse_range("lora.r=4,8,16"))
    variant = trial_variant("smoke", 3, ranges, {"train.learning_rate": 0.00123456, "lora.r": "8"})
    assert (variant.name, variant.label) == ("smoke-t3-lr0.00123-r8", "t3-lr0.00123-r8")
    assert variant.overrides == ((("train", "learning_rate"), 0.00123456), (("lora", "r"), 8))  # the value, not its name
    assert variant.origin == "trial 3: train.learning_rate=0.00123 lora.r=8"


def test_the_search_folder_is_the_same_search_whatever_the_trials(tmp_path: Path) -> None:
    spec = load_spec(SMOKE)
    space = make_space(["train.learning_rate=1e-4:1e-2:log"], "demo-medmc/accuracy", None, spec)
    folder = search_folder(tmp_path, SMOKE, space)
    assert folder.parent == tmp_path / "sweeps" and folder.name.startswith("smoke-search-")
    assert search_folder(tmp_path, SMOKE, make_space(["train.learning_rate=1e-4:1e-2:log"], "demo-medmc/accuracy",
                                                     None, spec)) == folder
    for other in (make_space(["train.learning_rate=1e-4:1e-1:log"], "demo-medmc/accuracy", None, spec),
                  make_space(["train.learning_rate=1e-4:1e-2:log"], "demo-seen/accuracy", None, spec),
                  make_space(["train.learning_rate=1e-4:1e-2:log"], "demo-medmc/accuracy", "min", spec)):
        assert search_folder(tmp_path, SMOKE, other) != folder
    copy = tmp_path / "smoke.yaml"  # an edited spec is another search (its trials scored another spec)
    copy.write_text(SMOKE.read_text())
    before = search_folder(tmp_path, copy, space)
    copy.write_text(SMOKE.read_text().replace("description: Tiny", "description: A tiny"))
    assert search_folder(tmp_path, copy, space) == before  # a description changes no result
    copy.write_text(SMOKE.read_text().replace("epochs: 30", "epochs: 31"))
    assert search_folder(tmp_path, copy, space) != before


def test_without_optuna_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # an import of it now fails as a missing module does
    with pytest.raises(ProfileError) as raised:
        optuna_module()
    assert str(raised.value).startswith("runner sweep --search optuna needs the `cluster` extra (optuna not installed): ")
    assert "qlora-runner[cluster]" in str(raised.value)


class FakeRuns:
    """Runs each trial by writing its outputs: accuracy peaks at learning rate 1e-3 (on a log scale)."""

    def __init__(self, store: Path, stop_at: int | None = None) -> None:
        self.store, self.stop_at = store, stop_at
        self.ran: list[str] = []

    @staticmethod
    def accuracy(lr: float) -> float:
        import math

        return round(max(0.0, 0.9 - 0.2 * abs(math.log10(lr) + 3)), 6)

    def __call__(self, written: list[Written]) -> dict[str, int]:
        for w in written:
            if self.stop_at is not None and len(self.ran) == self.stop_at:
                raise KeyboardInterrupt  # Ctrl-C while this trial runs
            self.ran.append(w.variant.name)
            lr = w.spec.train.learning_rate
            write_run(self.store, w.path, w.variant.name, acc=self.accuracy(lr), loss=lr)
        return {w.variant.name: 0 for w in written}


def run_search(spec: Path, store: Path, runs: FakeRuns, trials: int, jobs: int = 1) -> Any:
    space = make_space(["train.learning_rate=1e-5:1e-1:log", "lora.r=4,8"], "demo-medmc/accuracy", None, load_spec(spec))
    return search(spec, load_spec(spec), space, store, trials, jobs, runs, log=lambda line: None)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "smoke.yaml"
    path.write_text(SMOKE.read_text().replace("../data/", f"{ROOT}/data/"))
    return path


def test_the_search_runs_its_trials_and_names_the_best(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    store, runs = tmp_path / "store", FakeRuns(tmp_path / "store")
    found = run_search(spec, store, runs, trials=4)
    assert len(runs.ran) == 4 == len(set(runs.ran)) and [p.stem for p in found.specs] == runs.ran
    assert all(p.is_file() and p.parent.name.startswith("smoke-search-") for p in found.specs)
    summary = json.loads((found.specs[0].parent / "search.json").read_text())
    scores = {t["variant"]: FakeRuns.accuracy(t["values"]["train.learning_rate"]) for t in summary["trials"]}
    assert {t["variant"]: t["value"] for t in summary["trials"]} == scores
    best = max(summary["trials"], key=lambda t: (t["value"], -t["number"]))
    assert summary["best"] == best["number"]
    assert found.best.startswith(f"search: best of 4 trial(s): trial {best['number']} ({best['variant']}), "
                                 f"demo-medmc/accuracy {best['value']:.4g} (max); train.learning_rate=")
    again = run_search(spec, store, runs, trials=4)  # the same search again: nothing runs
    assert len(runs.ran) == 4 and again.best == found.best and again.codes == {}
    more = run_search(spec, store, runs, trials=6)  # more trials: the study goes on
    assert len(runs.ran) == 6 and len(more.done) == 6 and more.specs[:4] == found.specs


def test_a_killed_search_resumes_and_proposes_what_an_unbroken_one_would(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    whole = FakeRuns(tmp_path / "a")
    run_search(spec, tmp_path / "a", whole, trials=5)
    broken = FakeRuns(tmp_path / "b", stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, tmp_path / "b", broken, trials=5)
    assert len(broken.ran) == 2
    broken.stop_at = None
    resumed = run_search(spec, tmp_path / "b", broken, trials=5)
    assert broken.ran == whole.ran  # trial 2 again with its values, then the same proposals; nothing twice
    assert len(resumed.done) == 5


def test_a_failed_trial_is_run_again_by_the_next_invocation(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    store = tmp_path / "store"

    class Failing(FakeRuns):
        def __call__(self, written: list[Written]) -> dict[str, int]:
            if len(self.ran) == 1 and self.stop_at == 1:
                self.stop_at = None
                return {w.variant.name: 1 for w in written}  # its run failed: no objective, told nothing
            return super().__call__(written)

    runs = Failing(store, stop_at=1)
    first = run_search(spec, store, runs, trials=3)
    assert list(first.codes.values()) == [0, 1, 0] and len(first.done) == 2
    second = run_search(spec, store, runs, trials=3)
    failed = next(name for name, code in first.codes.items() if code)
    assert list(second.codes) == [failed] and runs.ran[-1] == failed and len(second.done) == 3


def test_a_range_the_spec_cannot_take_is_refused_before_any_trial(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    runs = FakeRuns(tmp_path / "store")
    space = make_space(["eval.benchmarks.7.limit=1,2"], "demo-medmc/accuracy", None, load_spec(spec))
    with pytest.raises(SpecError) as raised:
        search(spec, load_spec(spec), space, tmp_path / "store", 2, 1, runs, log=lambda line: None)
    assert raised.value.problems == ["variant t0-limit1: eval.benchmarks.7: the spec has no such item (it lists 3)"]
    assert runs.ran == [] and not (tmp_path / "store").exists()


def test_a_damaged_study_is_one_line(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from runner.core.errors import StoreError

    space = make_space(["lora.r=4,8"], "validation_loss", None, load_spec(spec))
    folder = search_folder(tmp_path / "store", spec, space)
    folder.mkdir(parents=True)
    (folder / "study.db").write_text("not a database")
    with pytest.raises(StoreError) as raised:
        search(spec, load_spec(spec), space, tmp_path / "store", 2, 1, FakeRuns(tmp_path / "store"), log=lambda line: None)
    assert str(raised.value) == (f"sweep --search: cannot keep the study in {folder / 'study.db'} (file is not a "
                                 "database): remove the file to start the search anew, or give another --store")


def test_jobs_ask_for_trials_in_batches(spec: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    batches: list[int] = []

    class Counted(FakeRuns):
        def __call__(self, written: list[Written]) -> dict[str, int]:
            batches.append(len(written))
            return super().__call__(written)

    runs = Counted(tmp_path / "store")
    found = run_search(spec, tmp_path / "store", runs, trials=5, jobs=2)
    assert batches == [2, 2, 1] and len(set(runs.ran)) == 5 and len(found.done) == 5
