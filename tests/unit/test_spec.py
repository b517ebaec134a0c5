"""The spec loader: every error at once, with path, line and column; numbers read as numbers."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from runner.core.errors import SpecError
from runner.spec.schema import load_schema
from runner.spec.typed import Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = "model: {source: init}\ndata: {train: {path: train.jsonl}}\n"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text('{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n')
    return tmp_path


def problems(text: str, folder: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.yaml", base_dir=folder)
    return info.value.problems


def test_every_spec_in_specs_validates(root: Path) -> None:
    specs = sorted((root / "specs").glob("*.yaml"))
    assert {p.name for p in specs} >= {"smoke.yaml", "medqa.yaml"}
    for path in specs:
        assert isinstance(load_spec(path), Spec)


def test_unknown_key_gets_did_you_mean_with_line_and_column(folder: Path) -> None:
    text = MINIMAL + "train:\n  epochs: 1\n  learnig_rate: 0.1\n"
    assert problems(text, folder) == ["train.learnig_rate: unknown key; did you mean learning_rate? (x.yaml:5:3)"]


def test_all_errors_are_reported_at_once_in_file_order(folder: Path) -> None:
    text = "model: {source: nope}\ndata: {train: {path: train.jsonl}}\ntrain:\n  batch_size: -1\n  epochs: many\n"
    found = problems(text, folder)
    assert len(found) == 3
    assert found[0].startswith("model.source: must be one of")
    assert found[1] == "train.batch_size: must be >= 1, got integer -1 (x.yaml:4:3)"
    assert found[2] == 'train.epochs: must be a number, got string "many" (x.yaml:5:3)'


def test_exponent_floats_are_numbers_and_quoted_ones_a_clear_error(folder: Path) -> None:
    spec = parse_spec(MINIMAL + "train: {learning_rate: 3e-4, warmup: 1E1}\n", base_dir=folder)
    assert spec.train.learning_rate == pytest.approx(3e-4) and isinstance(spec.train.learning_rate, float)
    assert spec.train.warmup == 10.0
    found = problems(MINIMAL + "train: {learning_rate: '3e-4'}\n", folder)
    assert found == ['train.learning_rate: must be a number, got string "3e-4" (x.yaml:3:9)']


def test_duplicate_keys_are_reported(folder: Path) -> None:
    found = problems(MINIMAL + "seed: 1\nseed: 2\n", folder)
    assert found == ["seed: duplicate key, the later one would win (x.yaml:4:1)"]


def test_missing_required_section_and_bad_yaml(folder: Path) -> None:
    assert problems("model: {source: init}\n", folder) == ["data: required, but missing (x.yaml:1:1)"]
    assert problems("model: [unclosed\n", folder)[0].startswith("x.yaml:")


def test_cross_field_rules(folder: Path) -> None:
    text = ("model: {source: hub}\ndata:\n  train: {path: nope.jsonl}\n"
            "train: {batch_size: 16, micro_batch_size: 3}\n"
            "eval: {benchmarks: [{name: a, path: train.jsonl, hub: x/y}, {name: a, path: train.jsonl, ids: no.txt}]}\n")
    found = problems(text, folder)
    assert any(p.startswith("model.id: required when source is hub") for p in found)
    assert any(p.startswith("data.train.path: no such file 'nope.jsonl'") for p in found)
    assert any(p.startswith("train.micro_batch_size: must divide train.batch_size (16), got 3") for p in found)
    assert any(p.startswith("eval.benchmarks[0]: give exactly one of `path`") for p in found)
    assert any(p.startswith("eval.benchmarks[1].name: duplicate benchmark name 'a'") for p in found)
    assert any(p.startswith("eval.benchmarks[1].ids: no such file 'no.txt'") for p in found)


def test_defaults_come_from_the_schema_and_match_the_dataclasses(folder: Path) -> None:
    spec = parse_spec(MINIMAL, base_dir=folder)
    assert spec.train.learning_rate == 2e-4 and spec.lora.r == 16 and spec.model.quantization == "nf4"
    schema = load_schema()

    def walk(cls: type, props: dict, where: str) -> int:
        checked = 0
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("schema") is False:
                continue
            assert f.name in props, f"{where}.{f.name} is not in the schema"
            sub = props[f.name]
            nested = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(t)]
            if nested:  # a section: compare its fields one level down
                inner = sub.get("items", sub)
                checked += walk(nested[0], inner["properties"], f"{where}.{f.name}")
            if f.default is not dataclasses.MISSING:
                assert "default" in sub, f"{where}.{f.name}: dataclass has a default, schema none"
                expected = tuple(sub["default"]) if isinstance(sub["default"], list) else sub["default"]
                if nested and isinstance(expected, tuple):  # a list of sections (train.grpo.rewards): as parsed
                    expected = tuple(nested[0](**item) for item in expected)
                assert f.default == expected, f"{where}.{f.name}: {f.default!r} != {sub['default']!r}"
                checked += 1
            elif f.default_factory is not dataclasses.MISSING:
                assert sub.get("default") == {} or sub.get("default") == [], f"{where}.{f.name}"
            else:
                assert "default" not in sub, f"{where}.{f.name}: required in the dataclass but defaulted in the schema"
        assert set(props) == {f.name for f in dataclasses.fields(cls) if f.metadata.get("schema") is not False}
        return checked

    assert walk(Spec, schema["properties"], "spec") > 60


def test_every_schema_field_is_documented() -> None:
    def walk(node: dict, where: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{name} has no description"
            walk(sub, f"{where}.{name}")
            if "items" in sub:
                walk(sub["items"], f"{where}.{name}[]")
        if node.get("type") == "object" or "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} allows unknown keys"

    walk(load_schema(), "spec")


def test_schema_at_repo_root_is_the_packaged_one(root: Path) -> None:
    assert json.loads((root / "schemas" / "spec.schema.json").read_text()) == load_schema()


def test_relative_paths_resolve_against_the_spec_file(folder: Path) -> None:
    (folder / "specs").mkdir()
    (folder / "specs" / "s.yaml").write_text("model: {source: init}\ndata: {train: {path: ../train.jsonl}}\n")
    spec = load_spec(folder / "specs" / "s.yaml")
    assert spec.resolve(spec.data.train.path or "") == (folder / "train.jsonl").resolve()


def test_packing_and_early_stopping_fields(folder: Path) -> None:
    spec = parse_spec(MINIMAL + "train: {packing: true, early_stopping: {patience: 2}}\n", base_dir=folder)
    assert spec.train.packing is True and spec.train.eval_steps == 50
    assert spec.train.early_stopping is not None and spec.train.early_stopping.patience == 2
    assert spec.train.early_stopping.min_delta == 0.0  # the schema's default, filled inside the mapping
    assert parse_spec(MINIMAL, base_dir=folder).train.early_stopping is None
    # Early stopping with nothing to validate on: one line, at the field, saying what to change.
    found = problems("model: {source: init}\ndata: {train: {path: train.jsonl}, validation_fraction: 0}\n"
                     "train: {early_stopping: {patience: 2}}\n", folder)
    assert found == ["train.early_stopping: needs validation data: set data.validation or a data.validation_fraction "
                     "above 0, or remove early_stopping (x.yaml:3:9)"]
    found = problems(MINIMAL + "train: {early_stopping: {patienc: 2, min_delta: -1}}\n", folder)
    assert any(p.startswith("train.early_stopping.patienc: unknown key; did you mean patience?") for p in found)
    assert any(p.startswith("train.early_stopping.min_delta: must be >= 0, got integer -1") for p in found)


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_a_resolved_spec_validates_again(path: Path) -> None:
    """Run records, sweeps and serve's jobs write `as_dict()` back as a spec: it must be one (the
    one-source form without a mixture's keys, paths made absolute)."""
    from runner.experiments.variants import absolute_paths

    spec = load_spec(path)
    again = parse_spec(yaml.safe_dump(absolute_paths(spec.as_dict(), path.parent.resolve())), "again", path.parent)
    assert again.as_dict() == absolute_paths(spec.as_dict(), path.parent.resolve())
