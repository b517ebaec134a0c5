"""A reasoning source through the real data stage and the tiny model's tokenizer, in a mixture beside a
multiple-choice one: traces too long for max_length cut and counted per source, the trained tokens the
trace and the answer (samples.txt), the prompt masked."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from tests.integration.conftest import DEMO, Tiny, runner


def _spec(tiny: Tiny, folder: Path) -> Path:
    rows = [{"q": f"Which drug treats condition {i}?", "why": "Condition {i} is treated first with metformin. " * (1 + 40 * (i % 3 == 0)),
             "a": "Metformin."} for i in range(24)]
    (folder / "thoughts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"q": "no trace", "a": "x"}) + "\n")
    text = tiny.spec.read_text()
    start = text.index("  train: {path:")
    mixture = (f"  train:\n    - {{name: mcq, path: {DEMO / 'medmc_train.jsonl'}}}\n"
               f"    - {{name: thoughts, path: {folder / 'thoughts.jsonl'}, format: reasoning, "
               f"fields: {{question: q, trace: why, answer: a}}}}\n"
               f"  reasoning: {{too_long: truncate}}\n")
    spec = folder / "reasoning.yaml"
    spec.write_text(text[:start] + mixture + text[text.index("\n", start) + 1:])
    return spec


def test_a_reasoning_source_in_a_mixture(tiny: Tiny, tmp_path: Path) -> None:
    spec = _spec(tiny, tmp_path)
    done = runner("run", str(spec), "--store", str(tiny.store), "--only", "data")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "with the trace cut to data.max_length" in done.stderr + done.stdout
    out = sorted((tiny.store / "data").glob("*/epochs.jsonl"), key=lambda p: p.stat().st_mtime)[-1].parent
    stats = json.loads((out / "stats.json").read_text())
    thoughts = stats["sources"]["thoughts"]
    assert thoughts["read"] == 25 and thoughts["dropped"] == {"missing reasoning trace (why)": 1}
    assert thoughts["truncated"] == 8 and stats["truncated"] == {"thoughts": 8}  # rows 0, 3, ..., 21
    with pa.OSFile(str(out / "train.arrow"), "rb") as source:
        table = pa.ipc.open_stream(source).read_all()
    mine = [r for r in table.to_pylist() if r["source"] == "thoughts"]
    assert mine and all(len(r["input_ids"]) <= 256 for r in mine)  # the tiny spec's max_length
    # The loss starts at the trace's opening delimiter and runs to the end: the prompt is masked.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sorted((tiny.store / "model").glob("*/tokenizer"))[0]))
    for r in mine:
        first = next(i for i, x in enumerate(r["labels"]) if x != -100)
        assert r["labels"][first:] == r["input_ids"][first:]
        trained = tok.decode(r["input_ids"][first:])
        assert "<think>\n" in trained and "\n</think>\n\nMetformin." in trained and "Which drug" not in trained
