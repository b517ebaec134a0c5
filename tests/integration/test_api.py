"""The Python API as a notebook uses it, on the tiny run: results that show the summary the command line
prints and hold the metrics as data; `sets` recorded and planned like any spec; relative spec paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner import api
from runner.core.errors import SpecError
from tests.integration.conftest import Tiny, runner, statuses

STAGES = ["model", "data", "train", "export", "eval"]


def _quiet(message: str) -> None:
    pass


def test_a_result_shows_the_cli_summary_and_holds_the_metrics(tiny: Tiny) -> None:
    result = api.run(tiny.spec, store=tiny.store, log=_quiet)
    assert [o.action for o in result.outcomes] == ["reused"] * 5
    shown = result.summary()
    assert repr(result) == str(result) == shown and result._repr_html_().startswith("<pre>summary (")
    cli = runner("run", str(tiny.spec), "--store", str(tiny.store))
    printed = cli.stdout[cli.stdout.index("summary ("):].splitlines()
    # the same lines, but for the seconds in the first and the record's file name in the last
    assert [re.sub(r"\(\d+\.\d s\)", "", line) for line in shown.splitlines()[:-1]] == \
           [re.sub(r"\(\d+\.\d s\)", "", line) for line in printed[:-1]]
    assert result.artifacts == tiny.artifacts
    assert result.report == tiny.artifacts["eval"] / "report.html" and result.report.is_file()
    assert result.metrics == json.loads((tiny.artifacts["eval"] / "metrics.json").read_text())
    demo = result.accuracy["demo"]
    assert set(demo) == {"base", "tuned"} and all(0 <= v <= 1 for v in demo.values())  # type: ignore[operator]
    assert f"fine-tuned {100 * demo['tuned']:.1f}% (n=24" in shown  # type: ignore[operator]
    assert result.losses["train_loss_last"] < result.losses["train_loss_first"]
    assert f"{result.losses['train_loss_last']:.3f}" in shown


def test_sets_are_recorded_and_planned_like_an_edited_spec(tiny: Tiny) -> None:
    sets = ["eval.benchmarks.0.limit=8"]
    planned = api.plan(tiny.spec, tiny.store, sets=sets)
    found = statuses(planned.summary())
    assert found.pop("eval") in ("will", "stale") and set(found.values()) == {"cached"}, planned.summary()
    assert repr(planned) == planned.summary() and planned.summary().startswith("profile: ")
    result = api.run(tiny.spec, store=tiny.store, sets=sets, log=_quiet)
    assert [o.action for o in result.outcomes] == ["reused"] * 4 + ["ran"]
    assert result.metrics["benchmarks"]["demo"]["tuned"]["n"] == 8
    record = json.loads(result.record.read_text())
    assert record["sets"] == sets and record["spec"]["eval"]["benchmarks"][0]["limit"] == 8
    again = runner("plan", str(tiny.spec), "--store", str(tiny.store), "--set", sets[0])
    assert again.returncode == 0 and set(statuses(again.stdout).values()) == {"cached"}, again.stdout
    assert json.loads((tiny.artifacts["eval"] / "metrics.json").read_text())["benchmarks"]["demo"]["tuned"]["n"] == 24


def test_a_relative_spec_is_read_from_the_current_directory(tiny: Tiny, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny.folder)
    assert set(statuses(api.plan(tiny.spec.name, tiny.store).summary()).values()) == {"cached"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=rf"tiny.yaml: no such spec file \(relative to the current directory, {tmp_path}\)"):
        api.run(tiny.spec.name, store=tiny.store, log=_quiet)
