"""A method's summary and report show what it learned, step by step. DPO: the metrics log keeps TRL's
margin and accuracy (training pairs each step, held-out pairs at each validation), the printed summary
has the training pairs' line, and the report a "Learning signals" section with its picture inlined.
GRPO: a printed line per reward, KL (beta > 0) and completion length, and the same section."""

from __future__ import annotations

import re
from pathlib import Path

from runner.core.outputs import TrainRow
from tests.integration.conftest import DEMO, TINY, runner

MODEL = TINY[TINY.index("model:"):TINY.index("data:")]  # the integration tests' tiny Llama, NF4
SPEC = f"""
name: tiny-dpo-report
seed: 7
{MODEL}data:
  train: {{path: {DEMO}/preference_train.jsonl}}
  format: preference
  template: plain
  max_rows: 96
  validation_fraction: 0.2
  max_length: 256
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{method: dpo, epochs: 2, learning_rate: 3e-3, batch_size: 8, save_steps: 100}}
eval:
  benchmarks: [{{name: demo, path: {DEMO}/medmc_test.jsonl, limit: 16}}]
  compare_base: false
"""


def test_dpo_report_draws_margin_and_accuracy_on_training_and_held_out_pairs(tmp_path: Path) -> None:
    (tmp_path / "dpo.yaml").write_text(SPEC)
    done = runner("run", str(tmp_path / "dpo.yaml"), "--store", str(tmp_path / "store"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folders = dict(re.findall(r"^  (train|eval)\s+(/\S+)$", done.stdout, re.MULTILINE))
    rows = TrainRow.read(Path(folders["train"]) / "metrics.jsonl")
    steps = [r for r in rows if r.loss is not None]
    held = [r for r in rows if r.loss is None]
    assert steps and all(r.reward_margin is not None and r.preference_accuracy is not None for r in steps)
    assert [r.eval_preference_accuracy for r in held][:1] == [0.0]  # before training: every pair a tie
    assert held[-1].eval_reward_margin is not None and held[-1].eval_reward_margin > 0.5
    printed = re.search(r"^  dpo training pairs, first -> last quarter of (\d+) steps: preference accuracy "
                        r"(\d\.\d{3}) -> (\d\.\d{3}), reward margin (-?\d+\.\d{3}) -> (-?\d+\.\d{3})", done.stdout,
                        re.MULTILINE)
    assert printed, done.stdout[-2000:]
    assert int(printed.group(1)) == len(steps) and float(printed.group(5)) > float(printed.group(4))

    report = Path(folders["eval"])
    md = (report / "report.md").read_text()
    section = md[md.index("## Learning signals (dpo)"):]
    section = section[: section.index("\n## ")]
    assert "![dpo learning signals per step](learning.png)" in section
    assert "| reward margin |" in section and "| preference accuracy |" in section
    assert (report / "learning.png").stat().st_size > 20_000  # three panels of curves, not an empty canvas
    assert md.index("## Training") < md.index("## Learning signals (dpo)")
    page = (report / "report.html").read_text()
    assert re.search(r'<img alt="dpo learning signals per step" src="data:image/png;base64,[A-Za-z0-9+/]{1000}', page)


GRPO = f"""
name: tiny-grpo-report
seed: 7
{MODEL}data:
  train: {{path: {DEMO}/medmc_train.jsonl}}
  template: plain
  max_rows: 48
  validation_fraction: 0
  max_length: 256
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train:
  method: grpo
  max_steps: 8
  learning_rate: 1e-3
  batch_size: 8
  save_steps: 100
  grpo:
    num_generations: 4
    max_completion_length: 4
    beta: 0.04
    rewards: [{{name: answer_correct, weight: 1.0}}, {{name: length_penalty, weight: 0.1}}]
eval:
  benchmarks: [{{name: demo, path: {DEMO}/medmc_test.jsonl, limit: 8}}]
  compare_base: false
"""


def test_grpo_summary_and_report_show_each_reward_kl_and_length(tmp_path: Path) -> None:
    (tmp_path / "grpo.yaml").write_text(GRPO)
    done = runner("run", str(tmp_path / "grpo.yaml"), "--store", str(tmp_path / "store"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    at = lines.index("  grpo, first -> last quarter of 8 steps:")
    assert re.fullmatch(r"    reward answer_correct: \S+ -> \S+; correct \S+% -> \S+%, no answer read \S+% -> \S+%",
                        lines[at + 1]), lines[at + 1]
    assert lines[at + 2].startswith("    reward length_penalty: ") and lines[at + 3].startswith("    weighted reward: ")
    assert re.fullmatch(r"    KL to the reference: \d\.\d{3} -> \d\.\d{3}", lines[at + 4]), lines[at + 4]  # beta > 0
    assert re.fullmatch(r"    completion length: \d\.\d -> \d\.\d tokens, cut at the limit .*", lines[at + 5])
    report = Path(dict(re.findall(r"^  (eval)\s+(/\S+)$", done.stdout, re.MULTILINE))["eval"])
    md = (report / "report.md").read_text()
    assert "## Learning signals (grpo)" in md and "![grpo learning signals per step](learning.png)" in md
    assert "| reward `answer_correct`, mean |" in md and "| KL to the reference | " in md
    assert (report / "learning.png").stat().st_size > 20_000
