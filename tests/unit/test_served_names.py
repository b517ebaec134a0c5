"""The server's registry names, over a store of fake run records (no server, no torch): every name a
run gave an export keeps answering, a name stays with the export that first claimed it, and a deleted
adapter stays deleted across a new registry (a restart) until a later run makes it again."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.serve.registry import Registry
from runner.spec.typed import load_spec

ROOT = Path(__file__).resolve().parents[2]
CPU = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")
MODEL = "m" * 64


def record(store: Path, name: str, export: str, started: float) -> None:
    """A completed run record of specs/smoke.yaml named `name` whose export key is `export`."""
    spec = load_spec(ROOT / "specs" / "smoke.yaml")
    data = {"spec_path": str(ROOT / "specs" / "smoke.yaml"), "spec": spec.as_dict() | {"name": name},
            "profile": asdict(resolve_profile(spec, CPU)), "status": "completed", "started": started,
            "finished": started + 1, "stages": [{"stage": "model", "key": MODEL}, {"stage": "export", "key": export}]}
    for folder in (store / "model" / MODEL, store / "export" / export / "adapter"):
        folder.mkdir(parents=True, exist_ok=True)
    (store / "model" / MODEL / "manifest.json").write_text("{}")
    (store / "runs").mkdir(exist_ok=True)
    (store / "runs" / f"{started:.3f}-{name}.json").write_text(json.dumps(data))


def adapters(registry: Registry) -> dict[str, str | None]:
    return {i: e.export_key for i, e in registry.scan().items() if e.kind == "adapter"}


def test_two_names_of_one_export_both_answer_and_the_newest_is_the_jobs(tmp_path: Path) -> None:
    record(tmp_path, "tiny-first", "a" * 64, 100.0)
    assert Registry(tmp_path).adapter_for_export("a" * 64) == "tiny-first"
    record(tmp_path, "tiny-second", "a" * 64, 200.0)  # the same inputs under another name: the same export
    registry = Registry(tmp_path)
    assert adapters(registry) == {"tiny-first": "a" * 64, "tiny-second": "a" * 64}
    assert registry.adapter_for_export("a" * 64) == "tiny-second"


def test_a_name_stays_with_the_export_that_first_claimed_it(tmp_path: Path) -> None:
    record(tmp_path, "tiny", "a" * 64, 100.0)
    record(tmp_path, "tiny", "b" * 64, 200.0)  # other data under the same name
    registry = Registry(tmp_path)
    assert adapters(registry) == {"tiny": "a" * 64, "tiny-bbbbbbbb": "b" * 64}
    assert registry.adapter_for_export("b" * 64) == "tiny-bbbbbbbb"
    found = registry.get("tiny-aaaaaaaa")  # the long form answers for the first too
    assert found is not None and found.id == "tiny" and found.export_key == "a" * 64


def test_a_deleted_adapter_stays_deleted_until_a_later_run_makes_it(tmp_path: Path) -> None:
    record(tmp_path, "tiny", "a" * 64, 100.0)
    record(tmp_path, "other", "a" * 64, 150.0)
    registry = Registry(tmp_path)
    entry = registry.get("tiny")
    assert entry is not None
    registry.delete(entry)
    assert "tiny" not in adapters(registry) and registry.get("tiny") is None
    restarted = Registry(tmp_path)  # the served set is read again
    assert adapters(restarted) == {"other": "a" * 64}
    assert (tmp_path / "export" / ("a" * 64) / "adapter").is_dir()  # artifacts stay until `runner gc`
    record(tmp_path, "tiny", "a" * 64, time.time() + 1)
    assert "tiny" in adapters(Registry(tmp_path))
