"""The artifact store and the planner, on a real store in a temporary folder (no torch)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runner.core.keys import stage_key
from runner.core.plan import plan, stage_inputs
from runner.core.records import RunRecord
from runner.core.store import Store
from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.spec.typed import Spec, load_spec
from runner.stages import all_stages

CPU = Probe(cpu_count=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")


def commit(store: Store, stage: str, key: str, files: dict[str, str], volatile: tuple[str, ...] = ()) -> Path:
    with store.build(stage, key, {"stage": stage}, volatile) as out:
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
    return store.artifact_dir(stage, key)


def test_build_commits_with_manifest_and_digests(tmp_path: Path) -> None:
    store = Store(tmp_path)
    folder = commit(store, "s", "k1", {"a/x.txt": "x", "b.txt": "b", "log.jsonl": "t=1"}, volatile=("log.jsonl",))
    manifest = store.lookup("s", "k1")
    assert manifest is not None and manifest.path == folder
    assert set(manifest.files) == {"a/x.txt", "b.txt", "log.jsonl"}
    assert set(manifest.parts) == {"a", "b.txt"}  # the volatile log is in no digest
    again = commit(Store(tmp_path / "other"), "s", "k1", {"a/x.txt": "x", "b.txt": "b", "log.jsonl": "t=2"}, ("log.jsonl",))
    assert json.loads((again / "manifest.json").read_text())["digest"] == manifest.digest
    assert not (tmp_path / "s" / ".work" / "k1").exists()


def test_a_failed_build_leaves_nothing_that_counts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.build("s", "k", {}, ()) as out:
        (out / "half.bin").write_text("half")
        raise RuntimeError("killed")
    assert store.lookup("s", "k") is None and not store.artifact_dir("s", "k").exists()
    commit(store, "s", "k", {"whole.bin": "whole"})  # the next attempt starts clean
    assert set(store.lookup("s", "k").files) == {"whole.bin"}  # type: ignore[union-attr]


def test_a_folder_without_manifest_or_with_a_changed_file_is_not_a_result(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "s" / "k").mkdir(parents=True)
    (tmp_path / "s" / "k" / "x").write_text("x")
    assert store.lookup("s", "k") is None
    folder = commit(store, "s", "k2", {"x": "xx"})
    (folder / "x").write_text("truncated"[:1])
    assert store.lookup("s", "k2") is None


def spec_and_profile(root: Path):  # type: ignore[no-untyped-def]
    spec = load_spec(root / "specs" / "smoke.yaml")
    return spec, resolve_profile(spec, CPU)


def test_plan_on_an_empty_store(root: Path, tmp_path: Path) -> None:
    spec, profile = spec_and_profile(root)
    steps = plan(all_stages(), spec, profile, Store(tmp_path), None)
    assert [(s.stage, s.status) for s in steps] == [("model", "new"), ("data", "pending"), ("train", "pending"),
                                                    ("export", "pending"), ("eval", "pending")]
    assert steps[0].key and steps[1].key is None and steps[2].reasons == ("after model, data",)


def _commit_upstream(spec: Spec, profile, store: Store) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    stages = {s.name: s for s in all_stages()}
    model_inputs = stage_inputs(stages["model"], spec, profile, {})
    model_dir = commit(store, "model", stage_key(model_inputs), {"tokenizer/t.json": "{}", "model.json": "{}"})
    tok = json.loads((model_dir / "manifest.json").read_text())["parts"]["tokenizer"]
    data_inputs = stage_inputs(stages["data"], spec, profile, {"model:tokenizer": tok})
    commit(store, "data", stage_key(data_inputs), {"train.arrow": "rows"})
    return {"model": model_inputs, "data": data_inputs}


def test_plan_says_what_changed_since_the_last_run(root: Path, tmp_path: Path) -> None:
    spec, profile = spec_and_profile(root)
    store = Store(tmp_path)
    _commit_upstream(spec, profile, store)
    first = plan(all_stages(), spec, profile, store, None)
    assert [s.status for s in first] == ["cached", "cached", "new", "pending", "pending"]
    record = RunRecord(spec_path="x", spec={}, profile={},
                       stages=[{"stage": s.stage, "inputs": s.inputs} for s in first])
    lower = dataclasses.replace(spec, train=dataclasses.replace(spec.train, learning_rate=spec.train.learning_rate / 2))
    steps = plan(all_stages(), lower, profile, store, record)
    train = steps[2]
    assert train.status == "stale"
    assert train.reasons == (f"train.learning_rate {spec.train.learning_rate} → {spec.train.learning_rate / 2}",)
    assert "stale, train.learning_rate" in train.line()
    assert plan(all_stages(), spec, profile, store, record)[2].status == "missing"  # same inputs, no artifact
    assert plan(all_stages(), spec, profile, store, None, frozenset({"model"}))[0].status == "forced"
