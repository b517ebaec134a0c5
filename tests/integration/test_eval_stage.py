"""The eval stage end to end on the tiny run: built-in formats on real rows, queries, the report.

The spec is the session's tiny spec with another `eval:` section, in the same store: only eval runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import DEMO, Tiny, runner

EVAL = """eval:
  benchmarks:
    - {{name: medqa, format: medqa, path: {data}/medqa/test.jsonl, limit: 16}}
    - {{name: pubmedqa, format: pubmedqa, path: {data}/pubmedqa/test.jsonl, limit: 6}}
    - {{name: seen, path: {demo}/medmc_train.jsonl, limit: 8}}
  queries: ["What is the first-line treatment for anaphylaxis?"]
  generation: {{max_new_tokens: 12}}
  generative: {{enabled: true, max_new_tokens: 6}}
  abstain: {{signal: loglik, threshold: 0.3}}
  batch_size: 4
"""


@pytest.fixture(scope="module")
def evaluated(tiny: Tiny, shared_data: Path) -> tuple[Path, str]:
    spec = tiny.folder / "eval-formats.yaml"
    spec.write_text(tiny.spec.read_text().split("eval:")[0] + EVAL.format(data=shared_data, demo=DEMO))
    done = runner("run", str(spec), "--store", str(tiny.store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"^\s+eval\s+(\S+)$", done.stdout, re.MULTILINE)
    assert found, done.stdout
    return Path(found.group(1)), done.stdout


def test_only_eval_runs_for_a_new_eval_section(evaluated: tuple[Path, str]) -> None:
    assert "ran eval; reused model, data, train, export" in evaluated[1]


def test_metrics_predictions_and_answers(evaluated: tuple[Path, str]) -> None:
    folder = evaluated[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    medqa, pubmedqa = metrics["benchmarks"]["medqa"], metrics["benchmarks"]["pubmedqa"]
    assert medqa["harness_task"] == "medqa_4options" and medqa["tuned"]["n"] == medqa["base"]["n"] == 16
    assert set(medqa["groups"]) == {"step1", "step2&3"}
    assert sum(g["tuned"]["n"] for g in medqa["groups"].values()) == 16
    p = medqa["paired"]
    assert 0 <= p["mcnemar_p"] <= 1 and p["ci95"][0] <= p["delta"] <= p["ci95"][1]
    assert pubmedqa["chance"] == pytest.approx(1 / 3, abs=1e-4) and "groups" not in pubmedqa
    # The demo training questions are not MedQA's: nothing found, and "the rest" is everything.
    assert medqa["contamination"]["exact"] == medqa["contamination"]["near"] == 0
    assert medqa["contamination"]["clean"]["tuned"] == medqa["tuned"]
    seen = metrics["benchmarks"]["seen"]["contamination"]  # questions of the training file itself
    assert seen["exact"] == 8 and seen["clean"]["tuned"]["n"] == 0
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {r["benchmark"] for r in rows} == {"medqa", "pubmedqa", "seen"}
    assert all({"base", "tuned", "answer"} <= set(r) for r in rows)
    assert sum(r["tuned"] == r["answer"] for r in rows if r["benchmark"] == "medqa") == medqa["tuned"]["correct"]
    for name, bench in metrics["benchmarks"].items():  # answers read off generated text too
        g = bench["generative"]
        assert g["max_new_tokens"] == 6 and g["tuned"]["n"] == g["base"]["n"] == bench["tuned"]["n"], name
        assert 0 <= g["tuned"]["unreadable"] <= g["tuned"]["n"] and "delta" in g["paired"]
    assert all(isinstance(r["tuned_generated"], str) and isinstance(r["base_generated"], str) for r in rows)
    # Every answer carries its confidence signals; metrics.json scores them and the spec's rule.
    assert all(set(r["signals"]) == {"base", "tuned"} and set(r["signals"]["tuned"]) == {"loglik", "token_prob"}
               for r in rows)
    assert all(r["signals"]["tuned"]["loglik"]["correct"] == (r["tuned"] == r["answer"]) for r in rows)
    assert all(0 < r["signals"]["base"]["token_prob"]["confidence"] <= 1 for r in rows if r["base_generated"].strip())
    u = medqa["uncertainty"]
    assert u["tuned"]["loglik"]["acc"] == medqa["tuned"]["acc"] and u["tuned"]["loglik"]["n"] == 16
    assert u["tuned"]["token_prob"]["acc"] == medqa["generative"]["tuned"]["acc"]
    assert 0 <= u["base"]["loglik"]["aurc"] <= 1 and u["tuned"]["loglik"]["curve"][-1][0] == 1.0
    rule = u["abstain"]
    assert rule["signal"] == "loglik" and rule["tuned"]["answered"] == sum(
        r["signals"]["tuned"]["loglik"]["confidence"] >= 0.3 for r in rows if r["benchmark"] == "medqa")
    (answer,) = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert set(answer["answers"]) == set(answer["flags"]) == {"base", "tuned"}
    assert answer["prompt"] == "Question: What is the first-line treatment for anaphylaxis?\nAnswer:"
    assert answer["generation"]["decoding"] == "greedy"


def test_the_report_renders_with_tables_and_pictures(evaluated: tuple[Path, str]) -> None:
    folder = evaluated[0]
    md = (folder / "report.md").read_text()
    for heading in ("## Results", "### Generative accuracy", "## By group", "## Calibration and selective accuracy",
                    "## When not to answer: confidence signals", "### The spec's abstention rule", "## Benchmark questions in the training data", "## Training", "## Answers to the spec's queries",
                    "### Safety flags", "## Spec", "## Hardware profile", "## Where everything is"):
        assert heading in md, heading
    assert re.search(r"^\| medqa \| `medqa_4options` \| 16 \| [\d.]+% \[", md, re.MULTILINE)
    for picture in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (folder / picture).stat().st_size > 5000  # loss (from train), accuracy, calibration, risk_coverage
    page = (folder / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "<th>McNemar p</th>" in page


def test_the_report_is_cosmetic_and_a_rerun_reuses_everything(evaluated: tuple[Path, str], tiny: Tiny) -> None:
    manifest = json.loads((evaluated[0] / "manifest.json").read_text())
    stable = [f for f in manifest["files"] if not f.startswith("report.") and not f.endswith(".png")]
    assert {"metrics.json", "predictions.jsonl", "generations.jsonl"} <= set(stable)
    done = runner("run", str(tiny.folder / "eval-formats.yaml"), "--store", str(tiny.store))
    assert "ran nothing" in done.stdout, done.stdout[-2000:]


def test_batched_generation_writes_what_one_question_at_a_time_writes(tiny: Tiny, shared_data: Path) -> None:
    from peft import PeftModel

    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base, load_tokenizer
    from runner.rows.rowfiles import read_local
    from runner.scoring.benchmarks import benchmark_items
    from runner.scoring.loglik import encoder
    from runner.spec.typed import Benchmark, load_spec
    from runner.stages.eval.generation import generate_batch

    spec = load_spec(tiny.spec)
    model_dir = tiny.artifacts["model"]
    model = PeftModel.from_pretrained(load_base(model_dir, spec, resolve_profile(spec, probe_machine())),
                                      str(tiny.artifacts["export"] / "adapter")).eval()
    tok = load_tokenizer(model_dir)
    items, _ = benchmark_items(Benchmark(name="m", format="medqa", limit=6), read_local(shared_data / "medqa" / "test.jsonl"))
    prompts = encoder(tok)([it.prompt for it in items])
    assert len({len(p) for p in prompts}) > 1  # different lengths: the batch really pads
    batched = generate_batch(model, tok, prompts, 6, batch_size=6)
    alone = [generate_batch(model, tok, [p], 6, batch_size=1)[0] for p in prompts]
    assert batched == alone and all(batched)


def test_token_prob_is_the_generated_answers_mean_token_log_softmax(evaluated: tuple[Path, str], tiny: Tiny,
                                                                     shared_data: Path) -> None:
    import math

    import torch
    from peft import PeftModel

    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base, load_tokenizer
    from runner.rows.rowfiles import read_local
    from runner.scoring.benchmarks import benchmark_items
    from runner.scoring.loglik import requests_for
    from runner.spec.typed import Benchmark, load_spec

    spec = load_spec(tiny.spec)
    model = PeftModel.from_pretrained(load_base(tiny.artifacts["model"], spec, resolve_profile(spec, probe_machine())),
                                      str(tiny.artifacts["export"] / "adapter")).eval()
    tok = load_tokenizer(tiny.artifacts["model"])
    items, _ = benchmark_items(Benchmark(name="m", format="medqa", limit=16), read_local(shared_data / "medqa" / "test.jsonl"))
    contexts = {r.item: list(r.context) for r in requests_for(items, tok, lambda prompt: prompt, " ")}
    rows = [json.loads(line) for line in (evaluated[0] / "predictions.jsonl").read_text().splitlines()]
    checked = 0
    for row in (r for r in rows if r["benchmark"] == "medqa" and r["tuned_generated"].strip()):
        answer = tok(row["tuned_generated"].rstrip(), add_special_tokens=False).input_ids
        ids = contexts[row["index"]] + answer
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        start = len(ids) - len(answer)
        mean = sum(float(lp[start - 1 + j, t]) for j, t in enumerate(answer)) / len(answer)
        assert row["signals"]["tuned"]["token_prob"]["confidence"] == pytest.approx(math.exp(mean), abs=1e-4)
        checked += 1
    assert checked >= 3


FREE_ONLY = """eval:
  benchmarks:
    - {{name: demo-qa, format: qa, path: {demo}/medmc_test.jsonl, limit: 4}}
    - {{name: seen-qa, format: qa, path: {demo}/medmc_train.jsonl, limit: 3}}
  generation: {{max_new_tokens: 8}}
  batch_size: 4
"""


def test_a_free_text_only_report_shows_sample_answers_and_the_contamination_finding(tiny: Tiny) -> None:
    spec = tiny.folder / "free-only.yaml"
    spec.write_text(tiny.spec.read_text().split("eval:")[0] + FREE_ONLY.format(demo=DEMO))
    done = runner("run", str(spec), "--store", str(tiny.store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ran eval; reused model, data, train, export" in done.stdout
    folder = Path(re.findall(r"^\s+eval\s+(\S+)$", done.stdout, re.MULTILINE)[0])
    md = (folder / "report.md").read_text()
    assert "No multiple-choice benchmarks" not in md and "the free-text scores follow" in md
    assert "## Sample answers" in md and "### demo-qa (free text, the first 3)" in md and "### seen-qa (free text" in md
    assert "| question | reference | base | fine-tuned |" in md
    first = json.loads((folder / "free_text.jsonl").read_text().splitlines()[0])
    assert first["reference"] in md
    assert "## Benchmark questions in the training data" in md
    assert re.search(r"^\| seen-qa \| 3 \| \d+ \| \d+ \| [\d.]+% \|", md, re.MULTILINE), md
    page = (folder / "report.html").read_text()
    assert "<h2>Sample answers</h2>" in page and "<h2>Benchmark questions in the training data</h2>" in page
    assert "<th>free-text benchmark</th>" in page
