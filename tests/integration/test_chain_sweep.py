"""A sweep over the second stage of a chain (`train.init_adapter: {spec: sft.yaml}`), as a user runs it:
the SFT spec's model, data and train are built once for all variants, each variant trains its own
GRPO from that adapter; the same sweep again builds nothing; the comparison names both variants."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.conftest import DEMO, runner
from tests.integration.test_sweep_run import executed

COMMON = f"""seed: 7
model: {{source: init, init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2,
  vocab_size: 1024}}, quantization: nf4}}
data: {{train: {{path: {DEMO / "medmc_train.jsonl"}}}, template: plain, max_rows: 32, max_length: 256, validation_fraction: 0}}
lora: {{r: 8, alpha: 16, dropout: 0.0}}
export: {{merged: false}}
eval:
  benchmarks: [{{name: demo, path: {DEMO / "medmc_test.jsonl"}, limit: 8}}]
  contamination: {{check: false}}
"""
SFT = COMMON + "name: chain-sft\ntrain: {max_steps: 6, learning_rate: 3e-3, batch_size: 8, save_steps: 100, warmup: 0}\n"
GRPO = COMMON + ("name: chain-grpo\ntrain:\n  method: grpo\n  init_adapter: {spec: sft.yaml}\n  max_steps: 3\n"
                 "  learning_rate: 1e-3\n  batch_size: 8\n  save_steps: 100\n  warmup: 0\n"
                 "  grpo: {num_generations: 4, max_completion_length: 2}\n")


def test_a_sweep_of_the_second_stage_shares_the_first(tmp_path: Path) -> None:
    (tmp_path / "sft.yaml").write_text(SFT)
    spec, store = tmp_path / "grpo.yaml", tmp_path / "store"
    spec.write_text(GRPO)
    sweep = ("sweep", str(spec), "--set", "train.learning_rate=1e-3,1e-2", "--store", str(store))
    planned = runner(*sweep, "--plan")
    assert planned.returncode == 0, planned.stderr
    assert "cost: 9 stage execution(s) (model 1, data 1, train 3, export 2, eval 2) for 2 variant(s)" in planned.stdout

    first = runner(*sweep)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    built = executed(out)
    # One SFT train and one GRPO train per variant; export/eval may be shared too when a short GRPO
    # leaves the adapter as it found it (equal content, equal key), so only "at most" for them.
    assert (built["model"], built["data"], built["train"]) == (1, 1, 3), out[-4000:]
    assert out.count("chain: sft.yaml up to train first") == 2
    trains = [p for p in (store / "train").iterdir() if (p / "manifest.json").is_file()]
    assert len(trains) == 3

    again = runner(*sweep)
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2[-4000:]
    assert executed(out2) == dict.fromkeys(("model", "data", "train", "export", "eval"), 0), out2[-4000:]
    report = (next((store / "sweeps").iterdir()) / "compare" / "report.md").read_text()
    assert "chain-grpo-lr1e-3" in report and "chain-grpo-lr1e-2" in report and "Holm" in report
    assert re.search(r"cost: 0 stage execution\(s\)", out2)
