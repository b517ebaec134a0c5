"""`runner sweep` over two LoRA ranks of a tiny spec, as a user runs it (real processes, real training):
the model and data stages run once, train/export/eval once per rank; the same sweep again runs
nothing; the comparison report lists both runs with the paired test."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.conftest import TINY, runner

# The integration tests' tiny model, as little training and scoring as shows the machinery.
SPEC = (TINY.replace("name: tiny-test", "name: sweep-test").replace("max_rows: 96", "max_rows: 48")
        .replace("train: {epochs: 2,", "train: {max_steps: 4,").replace("export: {merged: true}\n", "")
        + "  contamination: {check: false}\n")
STAGES = ("model", "data", "train", "export", "eval")


def executed(output: str) -> dict[str, int]:
    """How many times each stage was built ("[runner] train: running <key> (...)" per build)."""
    return {stage: len(re.findall(rf"\] {stage}: running [0-9a-f]{{12}}", output)) for stage in STAGES}


def test_sweep_shares_stages_and_compares_the_variants(tmp_path: Path) -> None:
    spec, store = tmp_path / "sweep.yaml", tmp_path / "store"
    spec.write_text(SPEC)
    planned = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store), "--plan")
    assert planned.returncode == 0, planned.stderr
    assert "cost: 8 stage execution(s) (model 1, data 1, train 2, export 2, eval 2) for 2 variant(s)" in planned.stdout

    first = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store))
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert executed(out) == {"model": 1, "data": 1, "train": 2, "export": 2, "eval": 2}, out[-4000:]
    for stage, count in zip(STAGES, (1, 1, 2, 2, 2)):
        assert len([p for p in (store / stage).iterdir() if (p / "manifest.json").is_file()]) == count, stage

    again = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store), "--jobs", "2")
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2[-4000:]
    assert "cost: 0 stage execution(s)" in out2 and "10 of 10 cached" in out2
    assert executed(out2) == dict.fromkeys(STAGES, 0), out2[-4000:]
    assert "[r4] " in out2 and "[r8] " in out2  # two at once: each line says whose it is

    folder = next((store / "sweeps").iterdir()) / "compare"
    report = (folder / "report.md").read_text()
    assert "sweep-test-r4" in report and "sweep-test-r8" in report and "`lora.r=8`" in report
    assert "McNemar" in report and "Holm" in report
    assert (folder / "loss.png").stat().st_size > 10_000 and (folder / "accuracy.png").stat().st_size > 5_000
    found = json.loads((folder / "comparison.json").read_text())["comparisons"]
    assert len(found) == 1 and found[0]["run"] == "sweep-test-r8" and found[0]["reference"] == "sweep-test-r4"
    test = found[0]["test"]
    assert found[0]["n"] == 24 and 0 <= test["mcnemar_p"] <= 1 and found[0]["holm_p"] == test["mcnemar_p"]
    # The paired counts are the two runs' own predictions, question by question.
    runs = [json.loads(p.read_text()) for p in sorted((store / "runs").glob("*.json"))]
    preds = {}
    for record in runs:
        key = next(s["key"] for s in record["stages"] if s["stage"] == "eval")
        rows = [json.loads(line) for line in (store / "eval" / key / "predictions.jsonl").read_text().splitlines()]
        preds[record["spec"]["name"]] = [r["tuned"] == r["answer"] for r in rows]
    r4, r8 = preds["sweep-test-r4"], preds["sweep-test-r8"]
    assert test["only_base_right"] == sum(a and not b for a, b in zip(r4, r8))
    assert test["only_tuned_right"] == sum(b and not a for a, b in zip(r4, r8))

    compared = runner("compare", *(str(p) for p in sorted(folder.parent.glob("*.yaml"))), "--store", str(store),
                      "--against", "best", "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert (tmp_path / "cmp" / "report.html").is_file() and "Holm p" in compared.stdout


def test_an_interrupted_sweep_run_again_finishes_only_what_is_missing(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    spec, store = tmp_path / "sweep.yaml", tmp_path / "store"
    spec.write_text(SPEC)
    command = [sys.executable, "-m", "runner", "sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store)]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert sweep.stdout is not None
    seen = []
    for line in sweep.stdout:
        seen.append(line)
        if "sweep: starting sweep-test-r8" in line:
            sweep.send_signal(signal.SIGINT)  # to the sweep alone: it passes the signal on to its run
            break
    seen += sweep.stdout.readlines()
    assert sweep.wait(timeout=300) == 130, "".join(seen)[-3000:]
    assert "interrupted by SIGINT" in "".join(seen)
    again = runner("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store))
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    done = executed(out)
    # r4 finished before the signal; r8 had at most begun and stopped with the sweep (a run left going on
    # unsignalled would build r8's stages itself): r8's stages run now, each exactly once in all.
    first = executed("".join(seen))
    assert done["model"] == done["data"] == 0, done
    assert all(first[s] + done[s] == 2 and done[s] == 1 for s in ("train", "export", "eval")), (first, done)
    for stage, count in zip(STAGES, (1, 1, 2, 2, 2)):
        assert len([p for p in (store / stage).iterdir() if (p / "manifest.json").is_file()]) == count, stage
