"""Preference tuning (train.method dpo, orpo, kto) on the tiny model, through `runner run` as a user
runs it: each method must move its held-out figures the way it promises, or the test fails."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from tests.integration.conftest import DEMO, runner

SPEC = f"""
name: tiny-{{method}}
seed: 7
model:
  source: init
  init: {{{{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}}}
  quantization: nf4
data:
  train: {{{{path: {DEMO}/{{file}}}}}}
  format: {{format}}
  template: plain
  max_rows: 120
  validation_fraction: 0.2
  max_length: 256
lora: {{{{r: 8, alpha: 16, dropout: 0.0}}}}
train: {{{{method: {{method}}, epochs: {{epochs}}, learning_rate: 3e-3, batch_size: 8, save_steps: 6}}}}
"""
FILES = {"dpo": ("preference_train.jsonl", "preference"), "orpo": ("preference_train.jsonl", "preference"),
         "kto": ("kto_train.jsonl", "kto")}


def write_spec(folder: Path, method: str, epochs: int = 2) -> Path:
    file, fmt = FILES[method]
    spec = folder / f"{method}.yaml"
    spec.write_text(SPEC.format(method=method, file=file, format=fmt, epochs=epochs))
    return spec


def train(folder: Path, method: str, *sets: str) -> tuple[dict, Path, str]:
    """(the train summary, the train artifact, the printed summary) of the method's tiny run."""
    flags = [arg for value in sets for arg in ("--set", value)]
    done = runner("run", str(write_spec(folder, method)), "--store", str(folder / "store"), "--only", "train", *flags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    artifact = Path(re.findall(r"^  train\s+(/\S+)$", done.stdout, re.MULTILINE)[0])
    return json.loads((artifact / "summary.json").read_text()), artifact, done.stdout


def test_dpo_raises_held_out_preference_accuracy_and_margin(tmp_path: Path) -> None:
    summary, artifact, printed = train(tmp_path, "dpo")
    held = summary["held_out"]
    # The untrained adapter is the reference itself: every reward is 0, no pair is won.
    assert held["reward_margin"]["before"] == pytest.approx(0.0, abs=1e-6)
    assert held["preference_accuracy"]["before"] == 0.0
    assert held["preference_accuracy"]["after"] >= 0.75, held
    assert held["reward_margin"]["after"] > 0.5, held
    assert summary["eval_loss_after"] < summary["eval_loss_before"] == pytest.approx(0.6931, abs=1e-3)
    assert summary["method"] == "dpo" and summary["validation_rows"] == 24
    # The reference is the base with the adapter off: no copy of the adapter is saved beside it.
    adapter = artifact / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert re.search(r"^  dpo held-out pairs: preference accuracy 0\.000 -> \d\.\d{3}, reward margin", printed,
                     re.MULTILINE), printed[-2000:]


def test_lora_variants_train_from_exactly_the_base(tmp_path: Path) -> None:
    """rsLoRA, a Gaussian init and a trained copy of the embeddings, under DPO: PEFT gets each, and the
    start is the reference (the base, adapter off) exactly: TRL's bf16 rounding of the trainable weights
    once moved the modules_to_save copy off the base (margin -0.001 before any step). (DoRA keeps TRL's
    adapter copy as its reference: docs/preference-tuning.md.)"""
    summary, artifact, _ = train(tmp_path, "dpo", "lora.use_rslora=true", "lora.init=gaussian",
                                 "lora.modules_to_save=[embed_tokens]", "train.max_steps=3")
    config = json.loads((artifact / "adapter" / "adapter_config.json").read_text())
    assert config["use_rslora"] and config["init_lora_weights"] == "gaussian"
    assert config["modules_to_save"] == ["embed_tokens"]
    assert summary["held_out"]["reward_margin"]["before"] == 0.0
    assert summary["held_out"]["preference_accuracy"]["before"] == 0.0
    assert summary["eval_loss_before"] == pytest.approx(0.693147, abs=1e-6)


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_orpo_and_kto_lower_their_loss(tmp_path: Path, method: str) -> None:
    summary, artifact, _ = train(tmp_path, method)
    assert summary["method"] == method
    assert summary["train_loss_last"] < summary["train_loss_first"], summary
    assert summary["eval_loss_after"] < summary["eval_loss_before"], summary
    assert (artifact / "adapter" / "adapter_model.safetensors").is_file()


def test_sigkill_mid_dpo_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    """Killed (SIGKILL) after a checkpoint, run again: the adapter is byte for byte the uninterrupted one's."""
    from tests.integration.test_crash import rows_in, start, wait_for

    whole, _, _ = train(tmp_path, "dpo")
    reference = (tmp_path / "store").glob("train/*/adapter/adapter_model.safetensors")
    want = next(reference).read_bytes()
    spec, store = write_spec(tmp_path, "dpo"), tmp_path / "killed"
    proc = start(spec, store)
    assert wait_for(proc, rows_in(store, 8, checkpoint=True)), "the run ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resuming from checkpoint-" in done.stdout + done.stderr
    got = next(store.glob("train/*/adapter/adapter_model.safetensors")).read_bytes()
    assert got == want
    assert whole["steps"] == json.loads(next(store.glob("train/*/summary.json")).read_text())["steps"]


CHAINED_SFT = """
name: chained-sft
seed: 7
model:
  source: init
  init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}
  quantization: nf4
data: {{train: {{path: {demo}/medmc_train.jsonl}}, template: plain, max_rows: 48, max_length: 256}}
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{max_steps: 4, learning_rate: 3e-3, batch_size: 8, save_steps: 100}}
"""


class Weights(TrainerCallback):  # type: ignore[misc]
    """The adapter's trainable weights as each attempt begins training and at each checkpoint it saves."""

    def __init__(self, model: Any) -> None:
        self.model, self.begin, self.saved = model, dict[str, Any](), dict[int, dict[str, Any]]()

    def _now(self) -> dict[str, Any]:
        return {n.replace(".default.", "."): p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.begin = self._now()

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.saved[state.global_step] = self._now()


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return bool(a) and a.keys() <= b.keys() and all(torch.equal(t.float(), b[n].float()) for n, t in a.items())


@pytest.mark.parametrize(("oom_step", "resume"), [(4, "checkpoint-3"), (2, "the start")])
def test_out_of_memory_in_a_chained_dpo_retries_with_a_smaller_micro_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oom_step: int, resume: str) -> None:
    """DPO from an SFT adapter (train.init_adapter) keeps TRL's copy of the start as its reference ("ref").
    An out-of-memory error (raised at `oom_step`, after checkpoint-3 or before any: a CUDA one cannot
    happen on this CPU) rebuilds the trainer over the same model, where TRL's add_adapter("ref") once
    failed on the copy the first trainer made. The retry must train at half the micro-batch from where
    it says (the checkpoint's weights, or the start's, not the failed attempt's), against the same
    reference: the starting adapter's weights."""
    from safetensors.torch import load_file

    from runner import api
    from runner.stages.train import loop
    from tests.integration.test_memory_fit import OutOfMemoryAt

    (tmp_path / "sft.yaml").write_text(CHAINED_SFT.format(demo=DEMO))
    spec = write_spec(tmp_path, "dpo")
    spec.write_text(spec.read_text().replace("train: {method: dpo, epochs: 2,",
                                             "train: {method: dpo, init_adapter: {spec: sft.yaml}, max_steps: 8,"
                                             " save_steps: 3, micro_batch_size: 8,").replace(", save_steps: 6}", "}"))
    built: list[tuple[int, int]] = []
    references: list[dict[str, Any]] = []
    weights: list[Weights] = []
    real = loop.build_preference_trainer

    def build(ctx, ready, profile):  # type: ignore[no-untyped-def]
        built.append((profile.micro_batch_size, profile.gradient_accumulation))
        trainer = real(ctx, ready, profile)
        references.append({n.replace(".ref.", "."): p.detach().clone() for n, p in ready.model.named_parameters()
                           if ".ref." in n})
        weights.append(Weights(ready.model))
        trainer.add_callback(weights[-1])
        if len(built) == 1:
            trainer.add_callback(OutOfMemoryAt(step=oom_step))
        return trainer

    monkeypatch.setattr(loop, "build_preference_trainer", build)
    logs: list[str] = []
    api.run(spec, store=tmp_path / "store", only="train", log=logs.append)
    assert built == [(8, 1), (4, 2)]  # the effective batch stays 8
    assert f"train: out of memory at micro-batch 8: retrying with 4 x 2 accumulation from {resume}" in logs
    [sft_adapter] = [p for p in (tmp_path / "store" / "train").glob("*/adapter")
                     if json.loads((p.parent / "summary.json").read_text()).get("method") is None]
    start = load_file(str(sft_adapter / "adapter_model.safetensors"))
    for reference in references:  # the first trainer's reference and the rebuilt one's: the start, exactly
        assert same(reference, start)
    assert same(weights[0].begin, start)
    assert same(weights[1].begin, weights[0].saved[3] if resume == "checkpoint-3" else start)
    [train] = [p for p in (tmp_path / "store" / "train").iterdir()
               if (p / "summary.json").is_file() and json.loads((p / "summary.json").read_text()).get("method") == "dpo"]
    assert json.loads((train / "summary.json").read_text())["steps"] == 8
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert not (train / "adapter" / "ref").exists()
