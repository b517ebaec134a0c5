"""`runner sweep --search optuna` over the learning rate of a tiny spec, as a user runs it (real processes,
real training): three trials, each an ordinary variant; the model and data stages built once; the best
trial the one whose outputs hold the best objective; the same search again runs nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from runner.experiments.search import Objective, read_objective
from tests.integration.conftest import runner
from tests.integration.test_sweep_run import SPEC, STAGES, executed

SEARCH = ("--search", "optuna", "--range", "train.learning_rate=1e-4:3e-2:log", "--trials", "3",
          "--objective", "validation_loss")


def test_a_search_runs_its_trials_as_variants_and_resumes_without_rerunning(tmp_path: Path) -> None:
    spec, store = tmp_path / "search.yaml", tmp_path / "store"
    spec.write_text(SPEC)
    first = runner("sweep", str(spec), "--store", str(store), *SEARCH)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    started = re.findall(r"sweep: starting (\S+)", out)
    assert len(started) == 3 == len(set(started)), out[-4000:]
    assert executed(out) == {"model": 1, "data": 1, "train": 3, "export": 3, "eval": 3}, out[-4000:]

    folder = next((store / "sweeps").iterdir())
    assert folder.name.startswith("search-search-") and (folder / "study.db").is_file()
    rates = {name: yaml.safe_load((folder / f"{name}.yaml").read_text())["train"]["learning_rate"] for name in started}
    assert len(set(rates.values())) == 3 and all(1e-4 <= lr <= 3e-2 for lr in rates.values()), rates

    # Each trial's objective, read here from its run's own outputs (record -> train summary).
    records = {json.loads(p.read_text())["spec"]["name"]: p for p in (store / "runs").glob("*.json")}
    assert set(records) == set(started)
    losses = {}
    for name, record in records.items():
        keys = {s["stage"]: s["key"] for s in json.loads(record.read_text())["stages"]}
        losses[name] = json.loads((store / "train" / keys["train"] / "summary.json").read_text())["eval_loss_after"]
        metrics = json.loads((store / "eval" / keys["eval"] / "metrics.json").read_text())
        assert read_objective(Objective("demo"), record) == metrics["benchmarks"]["demo"]["tuned"]["acc"]
        assert read_objective(Objective(None), record) == losses[name]
    best = min(losses, key=lambda name: losses[name])
    line = next(line for line in first.stdout.splitlines() if line.startswith("search: best of 3 trial(s)"))
    assert f"({best}), validation_loss {losses[best]:.4g} (min); train.learning_rate=" in line, (line, losses)
    assert json.loads((folder / "search.json").read_text())["best"] == int(re.findall(r"-t(\d+)-lr", best)[0])

    report = (folder / "compare" / "report.md").read_text()
    assert all(name in report for name in started) and "Holm" in report
    found = json.loads((folder / "compare" / "comparison.json").read_text())["comparisons"]
    assert len(found) == 2 and all(c["reference"] == started[0] for c in found)  # trial 0 is the baseline

    again = runner("sweep", str(spec), "--store", str(store), *SEARCH)
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2[-4000:]
    assert "3 trial(s) so far" in out2 and "sweep: starting" not in out2
    assert executed(out2) == dict.fromkeys(STAGES, 0), out2[-4000:]
    assert line in again.stdout  # the same best trial, from the study
    assert len(list((store / "runs").glob("*.json"))) == 3  # no run at all, not even a cached one
