"""A mixture through the real data stage: three sources in three formats (multiple choice, qa, raw
text), per-source stats, the epochs artifact against the spec's shares, and the `source` column in
both Arrow files. Then a data stage killed mid-way rebuilds to byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from tests.integration.conftest import DEMO, ROOT, Tiny, only_artifact, runner

NOTE = ("Scurvy is caused by a lack of vitamin C. It presents with bleeding gums, poor wound healing "
        "and perifollicular haemorrhages. Treatment is oral ascorbic acid. ") * 6


def _mixture_spec(tiny: Tiny, folder: Path) -> Path:
    qa = [{"question": f"What treats deficiency number {i}?", "answer": f"Supplement {i}."} for i in range(30)]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa) + "{broken\n")
    (folder / "notes").mkdir()
    for i in range(3):
        (folder / "notes" / f"note{i}.md").write_text(f"# Note {i}\n\n{NOTE}")
    text = tiny.spec.read_text()
    start = text.index("  train: {path:")
    mixture = (f"  train:\n    - {{name: mcq, path: {DEMO / 'medmc_train.jsonl'}, weight: 3}}\n"
               f"    - {{name: qa, path: {folder / 'qa.jsonl'}, format: qa, weight: 1}}\n"
               f"    - {{name: notes, path: {folder / 'notes'}, format: text, rows: 5}}\n")
    spec = folder / "mix.yaml"
    spec.write_text(text[:start] + mixture + text[text.index("\n", start) + 1:].replace("max_rows: 96", "max_rows: 40"))
    return spec


def _table(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_stream(source).read_all()


def test_a_three_source_mixture(tiny: Tiny, tmp_path: Path) -> None:
    spec = _mixture_spec(tiny, tmp_path)
    done = runner("run", str(spec), "--store", str(tiny.store), "--only", "data")
    assert done.returncode == 0, done.stderr[-2000:]
    out = sorted((tiny.store / "data").glob("*/epochs.jsonl"), key=lambda p: p.stat().st_mtime)[-1].parent
    stats = json.loads((out / "stats.json").read_text())
    src = stats["sources"]
    assert src["qa"]["read"] == 31 and src["qa"]["dropped"] == {"not valid JSON": 1} and src["qa"]["kept"] == 30
    assert src["mcq"]["read"] == 40 and src["notes"]["read"] == 3
    assert src["notes"]["train"] > 3  # each note is longer than max_length: several blocks
    # The weighted sources share their rows 3:1; the text source gives 5 rows an epoch.
    pool = src["mcq"]["train"] + src["qa"]["train"]
    quota = {"mcq": round(pool * 3 / 4), "qa": round(pool / 4), "notes": 5}
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]  # the tiny spec trains 2 epochs
    assert all(e["by_source"] == quota for e in epochs) and epochs[0]["order"] != epochs[1]["order"]
    assert all(len(e["order"]) == sum(quota.values()) for e in epochs)
    # Without replacement a source repeats no row before every row came once.
    qa_rows = [tuple(o[1:]) for o in epochs[0]["order"] if o[0] == "qa"]
    assert len(set(qa_rows)) == min(len(qa_rows), src["qa"]["train"])
    train, validation = _table(out / "train.arrow"), _table(out / "validation.arrow")
    assert train.num_rows == stats["rows"]["train"] == 2 * sum(quota.values())
    assert train.column("source").to_pylist() == [o[0] for e in epochs for o in e["order"]]
    assert set(validation.column("source").to_pylist()) <= {"mcq", "qa", "notes"} and validation.num_rows > 0
    notes = [r for r in train.to_pylist() if r["source"] == "notes"]
    assert all(r["labels"] == r["input_ids"] and len(r["input_ids"]) <= 256 for r in notes)  # loss on every token
    assert not (out / ".parts").exists()
    plan = runner("plan", str(spec), "--store", str(tiny.store))
    assert "  qa: qa, weight 1, " in plan.stdout and "  notes: text, 5 rows an epoch" in plan.stdout, plan.stdout


def test_a_data_stage_killed_mid_way_rebuilds_byte_identical(tiny: Tiny, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DEMO / "medmc_train.jsonl").read_text().splitlines()]
    big = tmp_path / "big.jsonl"
    with open(big, "w") as handle:
        for i in range(6000):  # a few seconds of tokenizing: long enough to be killed in the middle
            handle.write(json.dumps({**rows[i % len(rows)], "question": f"{i}: {rows[i % len(rows)]['question']}"}) + "\n")
    text = tiny.spec.read_text()
    start = text.index("  train: {path:")
    spec = tmp_path / "big.yaml"
    spec.write_text(text[:start] + f"  train: {{path: {big}}}\n" + text[text.index("\n", start) + 1:].replace("  max_rows: 96\n", ""))
    store = tmp_path / "store"
    shutil_copy_model(tiny, store)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store), "--only", "data"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = store / "data" / ".work"
    deadline = time.time() + 120
    while sum(p.stat().st_size for p in out.glob("*/out/train.arrow")) < 50_000:
        assert proc.poll() is None and time.time() < deadline, "the stage ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in (store / "data").iterdir() if (p / "manifest.json").is_file()]  # nothing committed
    done = runner("run", str(spec), "--store", str(store), "--only", "data")
    assert done.returncode == 0, done.stderr[-2000:]
    again = runner("run", str(spec), "--store", str(tmp_path / "clean"), "--only", "data")
    assert again.returncode == 0, again.stderr[-2000:]
    first = json.loads((only_artifact(store, "data") / "manifest.json").read_text())
    clean = json.loads((only_artifact(tmp_path / "clean", "data") / "manifest.json").read_text())
    assert first["digest"] == clean["digest"] and first["files"] == clean["files"]


def shutil_copy_model(tiny: Tiny, store: Path) -> None:
    """The tiny run's model artifact in a fresh store, so the killed run starts at the data stage."""
    import shutil

    model = tiny.artifacts["model"]
    shutil.copytree(model, store / "model" / model.name)


def test_a_source_that_keeps_no_rows_stops_the_stage_naming_it(tiny: Tiny, tmp_path: Path) -> None:
    """Its weight would otherwise take a share from the others while it silently trains on nothing."""
    spec = _mixture_spec(tiny, tmp_path)
    # Columns validate can see, values no row can use (validate reads only the columns of the first rows).
    empty = [{"question": f"What treats deficiency number {i}?", "answer": " "} for i in range(31)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in empty))
    done = runner("run", str(spec), "--store", str(tmp_path / "store"), "--only", "data")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "training source qa kept no rows of 31" in last and "check its format and fields" in last, done.stderr[-1000:]
