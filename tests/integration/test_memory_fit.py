"""Memory: the estimate against measured peak RSS, and surviving an out-of-memory error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import TrainerCallback

from runner.profile import probe_machine, resolve_profile
from runner.spec import load_spec
from runner.stages.loading import load_base, load_tokenizer
from runner.stages.train import _lora_model, _trainer, train_with_retries
from tests.integration.conftest import Tiny, memory_bench


def test_estimate_is_within_15_percent_of_measured_peak_rss(tmp_path: Path) -> None:
    rows = memory_bench("tiny,medium", tmp_path)
    assert {r["size"] for r in rows} == {"tiny", "medium"} and len(rows) == 4
    for r in rows:
        assert 0.85 <= r["predicted_gib"] / r["measured_gib"] <= 1.15, r
        # the loaded model itself (4-bit weights, their constants, fp32 embeddings, LoRA) is arithmetic
        assert 0.98 <= r["predicted_held_gib"] / r["measured_held_gib"] <= 1.02, r


class OutOfMemoryAt(TrainerCallback):  # type: ignore[misc]
    """A CUDA out-of-memory error cannot happen on this CPU-only machine, so this raises torch's own
    OutOfMemoryError at one step (the test adds it while the micro-batch is above 2); all else is real."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_halves_the_micro_batch_and_resumes_from_the_checkpoint(tiny: Tiny, tmp_path: Path) -> None:
    from datasets import Dataset

    spec = load_spec(tiny.spec)
    profile = resolve_profile(spec, probe_machine())
    model_dir, data_dir = tiny.artifacts["model"], tiny.artifacts["data"]
    model = _lora_model(load_base(model_dir, spec, profile), spec, False)
    rows = Dataset.from_file(str(data_dir / "train.arrow"))
    val = Dataset.from_file(str(data_dir / "validation.arrow"))
    pad = load_tokenizer(model_dir).pad_token_id
    seen: list[tuple[int, int]] = []

    def make_trainer(micro: int, accumulation: int):  # type: ignore[no-untyped-def]
        seen.append((micro, accumulation))
        fitted = dataclasses.replace(profile, micro_batch_size=micro, gradient_accumulation=accumulation)
        trainer = _trainer(model, spec, fitted, tmp_path, rows, val, pad, tmp_path / "metrics.jsonl")
        if micro > 2:
            trainer.add_callback(OutOfMemoryAt(step=12))  # after checkpoint-10 (save_steps 10)
        return trainer

    logs: list[str] = []
    result, before, after = train_with_retries(make_trainer, 8, 8, tmp_path / "checkpoints", logs.append)
    assert seen == [(8, 1), (4, 2), (2, 4)]  # the effective batch stays 8
    assert logs == ["train: out of memory at micro-batch 8: retrying with 4 x 2 accumulation from checkpoint-10",
                    "train: out of memory at micro-batch 4: retrying with 2 x 4 accumulation from checkpoint-10"]
    assert result.global_step == 22 and after is not None and before is not None and after < before
