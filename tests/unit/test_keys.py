"""Stage keys: pinned values (an accidental change to the key rule fails here), cosmetic fields
left out, and each spec field reaching exactly the stages that read it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runner.core.keys import canonical_json, diff_inputs, stage_key
from runner.core.plan import stage_inputs
from runner.machine.probe import Probe
from runner.machine.profile import resolve_profile
from runner.spec.typed import Logging, Spec, load_spec
from runner.stages import all_stages

CPU = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")
UP = "0" * 64  # a stand-in upstream digest, so each stage's key is pinned on its own

# Pinned: if one of these changes, either the key rule changed (bump every stage's version and
# update here on purpose) or something leaked into a key that should not.
PINNED = {
    "model": "d2b49d4d6d2c9c77a13b153e7190fa96187452d9a0a7c57027d81c3a240c4d4c",
    "data": "227ebc5e89f7bc046a6d71127c923b33fd0774189f19a8d7f32f3ea8ca21e055",
    "train": "1d210b9de9a5f6990d93c4c3787f60bb323d9ad77e0a2c4eee179718c1aa9a18",
    "export": "4217098de4e59fe32156dd58034448e9099776d57b5beb9fb74c266f612e12c0",  # v2: metadata.json records every train field
    "eval": "4d5029c9c99541fdb1666c81f8bbb2fdea3b63bb41f8aa40c07bfbcbc60e1f79",
}


def keys(spec: Spec, probe: Probe = CPU) -> dict[str, str]:
    profile = resolve_profile(spec, probe)
    out = {}
    for stage in all_stages():
        upstream = dict.fromkeys(stage.upstream, UP)
        out[stage.name] = stage_key(stage_inputs(stage, spec, profile, upstream))
    return out


# A fixed spec and data file of the test's own, so the pins do not move when specs/ is tuned.
SPEC = """
name: pinned
model: {source: init, init: {hidden_size: 32, intermediate_size: 64}}
data: {train: {path: train.jsonl}, template: plain, max_length: 128}
lora: {r: 8, alpha: 16}
train: {epochs: 2, learning_rate: 3e-3, batch_size: 8}
export: {merged: true}
eval: {benchmarks: [{name: demo, path: test.jsonl}]}
"""
ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


def smoke(tmp_path: Path) -> Spec:
    (tmp_path / "train.jsonl").write_text(ROW * 3)
    (tmp_path / "test.jsonl").write_text(ROW)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return load_spec(tmp_path / "spec.yaml")


def test_canonical_json_is_order_free_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    assert stage_key({"x": 1, "y": 2}) == stage_key({"y": 2, "x": 1})


def test_pinned_keys_of_the_smoke_spec(tmp_path: Path) -> None:
    assert keys(smoke(tmp_path)) == PINNED


def test_cosmetic_fields_change_no_key(tmp_path: Path) -> None:
    base = smoke(tmp_path)
    cosmetic = dataclasses.replace(base, name="other", description="words",
                                   train=dataclasses.replace(base.train, logging_steps=7, save_steps=3),
                                   eval=dataclasses.replace(base.eval, batch_size=3))
    assert keys(cosmetic) == keys(base)


def test_logging_changes_no_key(tmp_path: Path) -> None:
    # Trackers are a side effect: sending the metrics somewhere reruns nothing.
    base = smoke(tmp_path)
    logged = dataclasses.replace(base, logging=Logging(report_to=("tensorboard", "mlflow", "wandb"), dir="elsewhere"))
    assert keys(logged) == keys(base) == PINNED


def test_a_field_reaches_only_the_stages_that_read_it(tmp_path: Path) -> None:
    base = smoke(tmp_path)
    before = keys(base)

    def changed(spec: Spec) -> set[str]:
        after = keys(spec)
        return {name for name in before if before[name] != after[name]}

    # Direct effects only: upstream outputs enter by digest, fixed here, so each stage's own slice is tested.
    assert changed(dataclasses.replace(base, train=dataclasses.replace(base.train, learning_rate=1e-4))) == {"train"}
    assert changed(dataclasses.replace(base, data=dataclasses.replace(base.data, max_length=200))) == {"data"}
    assert changed(dataclasses.replace(base, lora=dataclasses.replace(base.lora, r=4))) == {"train"}
    assert changed(dataclasses.replace(base, export=dataclasses.replace(base.export, merged=False))) == {"export"}
    assert changed(dataclasses.replace(base, seed=1)) == {"model", "data", "train"}
    assert changed(dataclasses.replace(base, model=dataclasses.replace(base.model, quantization="none"))) == {"train", "export", "eval"}
    generative = dataclasses.replace(base.eval.generative, enabled=True)
    assert changed(dataclasses.replace(base, eval=dataclasses.replace(base.eval, generative=generative))) == {"eval"}
    stop = dataclasses.replace(base.eval.contamination, action="stop")  # a gate before training, not an output
    assert changed(dataclasses.replace(base, eval=dataclasses.replace(base.eval, contamination=stop))) == set()


def test_the_cpu_thread_count_reaches_the_stages_that_read_the_profile(tmp_path: Path) -> None:
    # CPU float sums follow the thread count, so one thread and two are different results.
    base = smoke(tmp_path)
    one, two = keys(base, dataclasses.replace(CPU, omp_num_threads="1")), keys(base, dataclasses.replace(CPU, cores=2))
    assert {name for name in one if one[name] != two[name]} == {"train", "export", "eval"}
    assert two == keys(base)  # two cores, no OMP_NUM_THREADS: the pinned profile


def test_diff_names_the_field_and_both_values() -> None:
    old = {"spec": {"train": {"learning_rate": 0.0002}}, "upstream": {"data": "a" * 64}}
    new = {"spec": {"train": {"learning_rate": 0.0001}}, "upstream": {"data": "b" * 64}}
    assert diff_inputs(old, new) == ["spec.train.learning_rate 0.0002 → 0.0001", f"upstream.data {'a' * 12} → {'b' * 12}"]
