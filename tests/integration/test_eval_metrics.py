"""The clinical metrics on a real tiny run of its own (conftest's `tracked`, a fresh store, 6 steps):
calibration, free-text scores and perplexity in metrics.json, the summary and the report; the
perplexity checked against transformers' own loss.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.integration.conftest import DEMO


def test_clinical_metrics_in_metrics_json_summary_and_report(tracked: dict[str, object]) -> None:
    folder = tracked["eval"]
    assert isinstance(folder, Path)
    metrics = json.loads((folder / "metrics.json").read_text())
    cal = metrics["benchmarks"]["demo"]["calibration"]
    assert cal["bins"] == 10 and "softmax" in cal["probabilities"]
    for label in ("base", "tuned"):
        m = cal[label]
        assert m["n"] == 24 and 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 2 and 0.25 <= m["confidence"] <= 1
        assert set(m["selective_acc"]) == {"100", "80", "60", "40", "20"}  # coverage in percent
        assert m["selective_acc"]["100"] == metrics["benchmarks"]["demo"][label]["acc"]  # all answered: plain accuracy
        assert sum(b["n"] for b in m["reliability"]) == 24
    assert "demo-qa" not in metrics["benchmarks"]  # free text is scored apart
    qa = metrics["free_text"]["demo-qa"]
    assert qa["n"] == 6 and qa["format"] == "qa"
    assert all(0 <= qa[label][k] <= 100 for label in ("base", "tuned") for k in ("rougeL", "bleu"))
    rows = [json.loads(line) for line in (folder / "free_text.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["reference"] == "imatinib" and isinstance(rows[0]["tuned"], str)
    ppl = metrics["perplexity"]
    assert ppl["texts"] == 10 and ppl["tuned"]["ppl"] == pytest.approx(math.exp(ppl["tuned"]["nll"]), rel=1e-4)
    out = str(tracked["stdout"])
    assert re.search(r"demo calibration: ECE base [\d.]+ -> fine-tuned [\d.]+; Brier", out), out[-2000:]
    assert "demo-qa (free text, n=6): ROUGE-L base" in out and "perplexity (" in out
    md = (folder / "report.md").read_text()
    for heading in ("## Calibration and selective accuracy", "## Free-text answers", "## Perplexity on a held-out corpus"):
        assert heading in md
    assert "![reliability diagrams, base vs fine-tuned](calibration.png)" in md
    assert (folder / "calibration.png").stat().st_size > 5000
    assert "## When not to answer: confidence signals" in md
    # loss (from train), accuracy, reliability diagrams, risk-coverage curves: each embedded in the page
    assert (folder / "report.html").read_text().count('src="data:image/png;base64,') == 4


def test_perplexity_is_the_training_losss_count(tracked: dict[str, object]) -> None:
    import torch
    from peft import PeftModel

    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base, load_tokenizer
    from runner.spec.typed import load_spec

    folder = tracked["folder"]
    assert isinstance(folder, Path)
    spec = load_spec(folder / "spec.yaml")
    store = folder / "store"
    model_dir = next(p for p in (store / "model").iterdir() if (p / "manifest.json").is_file())
    export_dir = next(p for p in (store / "export").iterdir() if (p / "manifest.json").is_file())
    model = PeftModel.from_pretrained(load_base(model_dir, spec, resolve_profile(spec, probe_machine())),
                                      str(export_dir / "adapter")).eval()
    tok = load_tokenizer(model_dir)
    texts = [json.loads(line)["question"] for line in (DEMO / "medmc_test.jsonl").read_text().splitlines()[:10]]
    metrics = json.loads((tracked["eval"] / "metrics.json").read_text())  # type: ignore[operator]
    for label in ("tuned", "base"):
        total, count = 0.0, 0
        with torch.inference_mode(), (model.disable_adapter() if label == "base" else torch.inference_mode()):
            for text in texts:  # one at a time, no padding: transformers' own shifted cross-entropy
                ids = torch.tensor([tok(text).input_ids])
                loss = model(input_ids=ids, labels=ids).loss
                total += float(loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
        assert metrics["perplexity"][label]["tokens"] == count
        assert metrics["perplexity"][label]["nll"] == pytest.approx(total / count, abs=2e-4)
