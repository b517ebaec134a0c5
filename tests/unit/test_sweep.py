"""Sweeps without running anything: --set parsing and its errors, the grid, variant files and specs,
GPU slots, the plan's sharing and cost, and Holm's correction against a case worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.core.store import Store
from runner.experiments.sweep import device_slots, plan_lines, plan_variants, visible_gpus
from runner.experiments.variants import grid, parse_setting, read_variants, variant_doc, write_variants
from runner.machine.probe import Gpu, Probe
from runner.scoring.significance import holm

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "specs" / "smoke.yaml"


def test_values_are_yaml_scalars_typed_by_the_schema() -> None:
    assert parse_setting("lora.r=8,16,64").values == (("8", 8), ("16", 16), ("64", 64))
    assert parse_setting("train.learning_rate=1e-4, 2e-4").values == (("1e-4", 1e-4), ("2e-4", 2e-4))
    assert parse_setting("lora.target_modules=all-linear,[q_proj,v_proj]").values[1] == (
        "[q_proj,v_proj]", ["q_proj", "v_proj"])
    assert parse_setting("eval.benchmarks.1.limit=5").path == ("eval", "benchmarks", 1, "limit")


@pytest.mark.parametrize(("given", "message"), [
    ("lora.rank=8", "--set lora.rank: no such spec field; lora has alpha, dropout, init, modules_to_save, r, target_modules, use_dora, use_rslora"),
    ("train.learnig_rate=1e-4", "--set train.learnig_rate: no such spec field; did you mean train.learning_rate?"),
    ("lora.r=abc", '--set lora.r=abc: must be an integer, got string "abc"'),
    ("lora.r=8.0", "--set lora.r=8.0: must be an integer, got number 8.0"),
    ("lora.r=0", "--set lora.r=0: must be >= 1, got integer 0"),
    ("hardware.device=tpu", '--set hardware.device=tpu: must be one of "auto", "cuda", "mps", "cpu", got string "tpu"'),
    ("lora.r", "--set lora.r: write PATH=VALUE[,VALUE...], e.g. --set lora.r=8,16"),
    ("lora.r=8,,16", "--set lora.r=: an empty value"),
    ("lora.r=8,8", "--set lora.r: a value is listed twice"),
    ("name=x", "--set name: variants are named by the sweep; set a field that changes a result"),
    ("lora..r=8", "--set lora..r: not a dotted field path such as lora.r"),
])
def test_a_wrong_path_or_value_is_one_line_naming_it(given: str, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_setting(given)
    assert raised.value.problems == [message]


def test_the_grid_is_every_combination_named_by_its_values() -> None:
    variants = grid([parse_setting("lora.r=8,16"), parse_setting("train.learning_rate=1e-4,2e-4")], "smoke")
    assert [v.name for v in variants] == ["smoke-r8-lr1e-4", "smoke-r8-lr2e-4", "smoke-r16-lr1e-4", "smoke-r16-lr2e-4"]
    assert variants[2].overrides == ((("lora", "r"), 16), (("train", "learning_rate"), 1e-4))
    with pytest.raises(SpecError, match="set twice"):
        grid([parse_setting("lora.r=8"), parse_setting("lora.r=16")], "smoke")


def test_variant_names_stay_apart_and_a_clash_is_refused(tmp_path: Path) -> None:
    # Long values are cut short with a digest of the whole: three lists, three names, three files.
    lists = "[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj],[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
    variants = grid([parse_setting(f"lora.target_modules={lists}")], "smoke")
    assert len({v.name for v in variants}) == 3 and variants[1].name == "smoke-target_modulesq_proj_k_proj_v-034ef35"
    written = write_variants(SMOKE, variants, tmp_path / "v")
    assert len({w.path for w in written}) == 3 and len(list((tmp_path / "v").glob("*.yaml"))) == 3
    assert [w.spec.lora.target_modules for w in written][2][-1] == "down_proj"
    with pytest.raises(SpecError) as raised:  # values that differ only where a file name cannot
        grid([parse_setting("data.train.path=x y.jsonl,x_y.jsonl")], "smoke")
    assert raised.value.problems == ["--set: x y.jsonl and x_y.jsonl make the same variant name 'pathx_y.jsonl'; "
                                     "list values that differ"]
    twice = grid([parse_setting("lora.r=8")], "smoke") * 2
    with pytest.raises(SpecError, match="the name smoke-r8 is used twice"):
        write_variants(SMOKE, twice, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_mapping_value_sets_its_fields_and_keeps_the_rest(tmp_path: Path) -> None:
    variants = grid([parse_setting("lora={r: 4},{r: 8, alpha: 8}")], "smoke")
    assert [(v.label, v.overrides) for v in variants] == [
        ("r4", ((("lora", "r"), 4),)), ("r8-alpha8", ((("lora", "r"), 8), (("lora", "alpha"), 8)))]
    written = write_variants(SMOKE, variants, tmp_path / "v")
    assert [(w.spec.lora.r, w.spec.lora.alpha, w.spec.lora.target_modules) for w in written] == [
        (4, 32, "all-linear"), (8, 8, "all-linear")]  # alpha and target_modules as the smoke spec has them
    file = tmp_path / "v.yaml"
    file.write_text("- {name: small, set: {lora: {r: 4}, train: {learning_rate: 1e-4}}}\n")
    assert read_variants(file, "smoke")[0].overrides == ((("lora", "r"), 4), (("train", "learning_rate"), 1e-4))
    with pytest.raises(SpecError, match=r"--set lora=\{\}: sets no field"):
        grid([parse_setting("lora={}")], "smoke")


def test_a_variant_is_the_base_spec_with_its_fields_set_and_paths_made_absolute(tmp_path: Path) -> None:
    variant = grid([parse_setting("lora.r=4"), parse_setting("data.validation.path=val.jsonl")], "x")[0]
    base = {"name": "x", "model": {"source": "init"}, "data": {"train": {"path": "../d/train.jsonl"}, "validation": None},
            "eval": {"benchmarks": [{"name": "b", "path": "b.jsonl", "ids": "ids.txt"}]}}
    doc = variant_doc(base, variant, tmp_path)
    assert doc["name"] == "x-r4-pathval.jsonl" and doc["lora"] == {"r": 4}
    assert doc["data"]["train"]["path"] == str((tmp_path / "../d/train.jsonl").resolve())
    assert doc["data"]["validation"] == {"path": str(tmp_path / "val.jsonl")}
    assert doc["eval"]["benchmarks"][0] == {"name": "b", "path": str(tmp_path / "b.jsonl"), "ids": str(tmp_path / "ids.txt")}
    assert base["data"]["train"]["path"] == "../d/train.jsonl"  # the base document is left as it was


def test_variant_specs_are_checked_whole_before_anything_is_written(tmp_path: Path) -> None:
    # lora.r=8 is valid alone; the cross-field rules still see the whole variant (here: fine).
    written = write_variants(SMOKE, grid([parse_setting("lora.r=8,32")], "smoke"), tmp_path / "v")
    assert [w.spec.lora.r for w in written] == [8, 32] and written[0].spec.name == "smoke-r8"
    assert written[0].spec.data.train.path == str((ROOT / "data" / "demo" / "medmc_train.jsonl").resolve())
    with pytest.raises(SpecError) as raised:  # an index past the spec's list: named, nothing written
        write_variants(SMOKE, grid([parse_setting("eval.benchmarks.5.limit=3")], "smoke"), tmp_path / "w")
    assert raised.value.problems == ["variant limit3: eval.benchmarks.5: the spec has no such item (it lists 3)"]
    assert not (tmp_path / "w").exists()


def test_a_variants_file_lists_variants_by_hand(tmp_path: Path) -> None:
    file = tmp_path / "v.yaml"
    file.write_text("- {name: small, set: {lora.r: 4}}\n- name: big-slow\n  set: {lora.r: 64, train.learning_rate: 1e-4}\n")
    variants = read_variants(file, "smoke")
    assert [(v.name, v.overrides) for v in variants] == [
        ("smoke-small", ((("lora", "r"), 4),)),
        ("smoke-big-slow", ((("lora", "r"), 64), (("train", "learning_rate"), 1e-4)))]
    file.write_text("- {name: a, set: {lora.r: 4}}\n- {name: b, set: {lora.r: x}}\n")
    with pytest.raises(SpecError) as raised:
        read_variants(file, "smoke")
    assert raised.value.problems == [f'{file}:2:3: lora.r="x": must be an integer, got string "x"']


def test_messages_name_the_variant_and_what_to_change(tmp_path: Path) -> None:
    from runner import api

    def problems(call) -> list[str]:  # type: ignore[no-untyped-def]
        with pytest.raises(SpecError) as raised:
            call()
        return raised.value.problems

    file = tmp_path / "v.yaml"
    file.write_text("- {name: a, set: {1: 4}}\n")
    assert problems(lambda: read_variants(file, "smoke")) == [f"{file}:1:19: a key must be a string, got integer 1"]
    file.write_text("- {name: null, set: {lora.r: 4}}\n")
    assert problems(lambda: read_variants(file, "smoke")) == [
        f"{file}:1:3: name must be a word such as r8 (it names the variant), got null"]
    # A cross-field problem names the variant and what made it, not a line of the generated YAML.
    missing = str((SMOKE.parent / "nope.jsonl").resolve())
    assert problems(lambda: write_variants(SMOKE, grid([parse_setting("data.train.path=nope.jsonl"),
                                                        parse_setting("lora.r=4")], "smoke"), tmp_path / "w")) == [
        f"data.train.path: no such file '{missing}' (resolved to {missing}; paths are relative to the spec file) "
        "(variant pathnope.jsonl-r4: --set data.train.path=nope.jsonl --set lora.r=4)"]
    file.write_text("- {name: a, set: {data.train.path: nope.jsonl}}\n")
    assert problems(lambda: write_variants(SMOKE, read_variants(file, "smoke"), tmp_path / "w"))[0].endswith(
        f"(variant a: {file}:1:3)")
    assert problems(lambda: api.sweep(SMOKE, ["lora.r=8"], jobs=0, store=tmp_path)) == [
        "sweep: --jobs 0: run at least 1 variant at a time (--jobs 1, the default)"]


def test_gpu_slots() -> None:
    assert device_slots(2, []) == [None, None]
    assert device_slots(2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert device_slots(3, ["0", "1", "2", "3"]) == ["0", "1", "2"]  # one left over: unused, never shared
    assert device_slots(4, ["0", "1"]) == ["0", "1", "0", "1"]  # more jobs than GPUs: they share
    gpu = Gpu("A100", (8, 0), 81920, 80000)
    assert visible_gpus({}, Probe(gpus=(gpu, gpu))) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, Probe(gpus=(gpu,) * 8)) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, Probe(gpus=(gpu,))) == []


def test_the_plan_says_what_variants_share_and_what_the_sweep_costs(tmp_path: Path) -> None:
    from runner.core.execute import registered_stages

    written = write_variants(SMOKE, grid([parse_setting("lora.r=8,16,32")], "smoke"), tmp_path / "v")
    plans = plan_variants(registered_stages(), written, Store(tmp_path / "store"), Probe(cores=2, ram_mib=8000), None)
    lines = plan_lines(plans)
    assert lines[-1].startswith("cost: 11 stage execution(s) (model 1, data 1, train 3, export 3, eval 3) for "
                                "3 variant(s); 15 without sharing; 0 of 15 cached")
    data = [line for line in lines if line.strip().startswith("data")]
    train = [line for line in lines if line.strip().startswith("train")]
    assert all(line.endswith("shared by all 3") for line in data) and all(line.endswith("own") for line in train)
    # Variants that differ only in a field no key reads (how often a checkpoint is saved) share everything.
    same = write_variants(SMOKE, grid([parse_setting("train.save_steps=20,40")], "smoke"), tmp_path / "d")
    lines = plan_lines(plan_variants(registered_stages(), same, Store(tmp_path / "store"), Probe(cores=2), None))
    assert lines[-1].startswith("cost: 5 stage execution(s) (model 1, data 1, train 1, export 1, eval 1) for "
                                "2 variant(s); 10 without sharing")


def test_a_chained_specs_stages_are_planned_once_for_the_whole_sweep(tmp_path: Path) -> None:
    """smoke-grpo starts from smoke.yaml's adapter: each variant's file lives in the sweep folder, so the
    chained spec's path must be made absolute like a data path (it was not: every variant failed with
    'no spec file smoke.yaml'), and smoke's model, data and train count once in the cost."""
    from runner.core.execute import registered_stages

    grpo = ROOT / "specs" / "smoke-grpo.yaml"
    written = write_variants(grpo, grid([parse_setting("train.learning_rate=1e-3,1e-2")], "g"), tmp_path / "v")
    assert {w.spec.train.init_adapter.spec for w in written} == {str(ROOT / "specs" / "smoke.yaml")}  # type: ignore[union-attr]
    lines = plan_lines(plan_variants(registered_stages(), written, Store(tmp_path / "store"), Probe(cores=2), None))
    assert lines[-1].startswith("cost: 9 stage execution(s) (model 1, data 1, train 3, export 2, eval 2) for "
                                "2 variant(s); 16 without sharing; 0 of 16 cached")
    chained = [line for line in lines if line.startswith("  smoke.yaml: ")]
    assert len(chained) == 6 and all(line.endswith("shared by all 2") for line in chained)


def test_holm_against_a_case_worked_by_hand() -> None:
    # m = 4, sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept at 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_planning_a_sweep_never_imports_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.unit.test_light import CHECK

    argv = ["sweep", str(SMOKE), "--set", "lora.r=8,16", "--plan", "--store", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "HEAVY: \n" in done.stdout and "cost: 8 stage execution(s)" in done.stdout, done.stdout
    assert not (tmp_path / "sweeps").exists()  # a plan writes nothing into the store


PARENT = """
import os, signal, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # as the sweep starts a run
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=os.environ | {"RUNNER_SWEEP_PID": str(os.getpid())})
print(child.pid, flush=True)
__import__("time").sleep(60)
"""
CHILD = """
import sys, time
from runner.core import signals
signals.install()
try:
    print("ready", flush=True)
    time.sleep(60)
except signals.Interrupted as exc:
    open(sys.argv[1], "w").write(str(exc.signum))
"""


def test_a_variant_stops_when_its_sweep_is_killed_outright(tmp_path: Path) -> None:
    # Real processes: a parent started as the sweep starts a variant (stop signals blocked around the
    # start, RUNNER_SWEEP_PID set), then SIGKILLed: the variant takes SIGTERM (a checkpoint, then stop).
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "stopped"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(marker)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait()
        deadline = time.time() + 20
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists() and marker.read_text() == str(int(signal.SIGTERM))
    finally:
        try:
            os.kill(child, signal.SIGKILL)  # only if the test failed: the orphan it started
        except ProcessLookupError:
            pass


def test_a_field_of_a_list_of_sources_names_an_item_instead_of_crashing() -> None:
    from runner.spec.fieldpaths import set_fields

    doc = {"data": {"train": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}}
    with pytest.raises(SpecError) as caught:
        set_fields(doc, [(("data", "train", "path"), "x.jsonl")], "--set in spec.yaml")
    assert caught.value.problems == ["--set in spec.yaml: data.train is a list in this spec: name an item, "
                                     "e.g. data.train.0.path"]
    assert set_fields(doc, [(("data", "train", 1, "path"), "x.jsonl")], "--set")["data"]["train"][1] == {"path": "x.jsonl"}
