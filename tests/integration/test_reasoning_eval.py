"""Generative evaluation with sampled answers and a vote on the tiny run: the same numbers twice, and a
kill -9 in the middle of generating resumes to identical predictions.

The spec is the session's tiny spec with another `eval:` section, in the same store: only eval runs.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import DEMO, Tiny, runner
from tests.integration.test_crash import start, wait_for

EVAL = """eval:
  benchmarks: [{{name: demo, path: {demo}/medmc_test.jsonl, limit: {limit}}}]
  batch_size: 2
  generative: {{enabled: true, samples: 3, temperature: 0.9, max_new_tokens: {tokens}, extract: last-answer,
               stop: ["Question:"]{extra}}}
"""


def spec_of(tiny: Tiny, name: str, limit: int, tokens: int, extra: str = "") -> Path:
    spec = tiny.folder / name
    spec.write_text(tiny.spec.read_text().split("eval:")[0]
                    + EVAL.format(demo=DEMO, limit=limit, tokens=tokens, extra=extra))
    return spec


def eval_folder(stdout: str) -> Path:
    found = re.search(r"^\s+eval\s+(\S+)$", stdout, re.MULTILINE)
    assert found, stdout[-2000:]
    return Path(found.group(1))


def outputs(folder: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return metrics, rows


def test_sampled_vote_is_scored_and_the_same_twice(tiny: Tiny) -> None:
    spec = spec_of(tiny, "reasoning-twice.yaml", limit=8, tokens=10)
    first = runner("run", str(spec), "--store", str(tiny.store))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    metrics, rows = outputs(eval_folder(first.stdout))
    g = metrics["benchmarks"]["demo"]["generative"]
    assert g["samples"] == 3 and g["decoding"] == "sampled"
    for label in ("base", "tuned"):
        c = g["consistency"][label]
        assert c["vote"]["n"] == 8 and set(c["pass_at_k"]) == {"1", "2", "3"}
        assert g[label]["acc"] == c["vote"]["acc"] and g[label]["unreadable"] == c["failed_votes"]
        assert 0 <= c["failed_samples"] <= 24
    assert all(len(r["tuned_samples"]) == 3 and len(r["tuned_answers"]) == 3 for r in rows)
    assert all(r["tuned_generated"] == r["tuned_samples"][0] for r in rows)
    assert len({t for r in rows for t in r["tuned_samples"]}) > 8  # sampled: the texts differ
    again = runner("run", str(spec), "--store", str(tiny.store), "--force", "eval")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" not in again.stdout + again.stderr  # regenerated from nothing, not read back
    assert outputs(eval_folder(again.stdout)) == (metrics, rows)


def test_kill_9_mid_generation_resumes_to_identical_predictions(tiny: Tiny) -> None:
    spec = spec_of(tiny, "reasoning-kill.yaml", limit=24, tokens=24, extra=", thinking_budget: 8")
    proc = start(spec, tiny.store)

    def some_written() -> bool:
        return any(p.read_text().count("\n") >= 2 for p in tiny.store.glob("eval/.work/*/generations/*.jsonl"))

    hit = wait_for(proc, some_written)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    if not hit:
        pytest.fail(f"the eval finished before the kill point\n{output[-2000:]}")
    assert proc.returncode == -signal.SIGKILL
    resumed = runner("run", str(spec), "--store", str(tiny.store))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    fresh = runner("run", str(spec), "--store", str(tiny.store), "--force", "eval")
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert "resuming" not in fresh.stdout + fresh.stderr
    assert outputs(eval_folder(resumed.stdout)) == outputs(eval_folder(fresh.stdout))
