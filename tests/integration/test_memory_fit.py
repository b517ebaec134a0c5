"""Memory: the estimate against measured peak RSS, and surviving an out-of-memory error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.models.loading import load_base, load_tokenizer
from runner.spec.typed import load_spec
from runner.stages.train.loop import train_with_retries
from runner.stages.train.trainer import attach_lora, build_trainer
from tests.integration.conftest import Tiny, memory_bench


def test_estimate_is_within_15_percent_of_measured_peak_rss(tmp_path: Path) -> None:
    rows = memory_bench("tiny,medium", tmp_path)
    assert {r["size"] for r in rows} == {"tiny", "medium"} and len(rows) == 4
    for r in rows:
        assert 0.85 <= r["predicted_gib"] / r["measured_gib"] <= 1.15, r
        # the loaded model itself (4-bit weights, their constants, fp32 embeddings, LoRA) is arithmetic
        assert 0.98 <= r["predicted_held_gib"] / r["measured_held_gib"] <= 1.02, r


def test_estimate_of_packed_rows_is_within_15_percent_of_measured_peak_rss(tmp_path: Path) -> None:
    # train.packing: rows of exactly data.max_length, three examples of about a third of it in each (the
    # widest rows packing makes, which the estimate counts on). SDPA on the tiny model; eager attention
    # on a wide one, where the (rows, heads, T, T) probabilities are most of the peak: counted over the
    # longest example instead of the packed row, the estimate ran 3x low on them.
    for size, attention in (("tiny", "sdpa"), ("wide", "eager")):
        rows: list[dict[str, Any]] = memory_bench(size, tmp_path, "--packed", "--attention", attention)
        assert len(rows) == 2  # checkpointing off and on
        for r in rows:
            assert r["packed"] and r["attention"] == attention and r["examples"] == 3 * r["rows"], r
            assert r["width"] > 2 * r["longest"], r  # a row is max_length wide, not the longest example
            assert 0.85 <= r["predicted_gib"] / r["measured_gib"] <= 1.15, r


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
    model = attach_lora(load_base(model_dir, spec, profile), spec, False)
    rows = Dataset.from_file(str(data_dir / "train.arrow"))
    val = Dataset.from_file(str(data_dir / "validation.arrow"))
    pad = load_tokenizer(model_dir).pad_token_id
    seen: list[tuple[int, int]] = []

    def make_trainer(micro: int, accumulation: int):  # type: ignore[no-untyped-def]
        seen.append((micro, accumulation))
        fitted = dataclasses.replace(profile, micro_batch_size=micro, gradient_accumulation=accumulation)
        trainer = build_trainer(model, spec, fitted, tmp_path, rows, val, pad, tmp_path / "metrics.jsonl")
        if micro > 2:
            trainer.add_callback(OutOfMemoryAt(step=12))  # after checkpoint-10 (save_steps 10)
        return trainer

    logs: list[str] = []
    trained = train_with_retries(make_trainer, 8, 8, tmp_path / "checkpoints", logs.append)
    before, after = trained.eval_loss_before, trained.eval_loss_after
    assert seen == [(8, 1), (4, 2), (2, 4)]  # the effective batch stays 8
    assert logs == ["train: out of memory at micro-batch 8: retrying with 4 x 2 accumulation from checkpoint-10",
                    "train: out of memory at micro-batch 4: retrying with 2 x 4 accumulation from checkpoint-10"]
    assert trained.result.global_step == 22 and trained.trainer.state.global_step == 22
    assert after is not None and before is not None and after < before


def _saved_bytes_per_token(layers: int, dropout: float, autocast: bool, tmp_path: Path) -> float:
    """Bytes autograd keeps for backward per token (parameters aside), for a 4-bit LoRA Llama loaded
    as the train stage loads it, on a padded batch; under bf16 autocast as the Trainer runs mixed
    precision (here on CPU, which casts the same operations)."""
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from runner.spec.typed import parse_spec

    folder = tmp_path / f"l{layers}"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1408, num_hidden_layers=layers,
                                 num_attention_heads=8, num_key_value_heads=2, head_dim=80)).save_pretrained(folder)
    dtype = torch.bfloat16 if autocast else torch.float32
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa", quantization_config=
                                             BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype))
    (tmp_path / "t.jsonl").write_text("{}\n")
    spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}}}\nlora: {{r: 16, dropout: {dropout}}}\n",
                      base_dir=tmp_path)
    model = attach_lora(model, spec, False)  # as the train stage wraps it
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, 1000, (2, 128))
    mask = torch.ones_like(ids)
    mask[-1, 96:] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    return sum(saved.values()) / ids.numel()


def test_estimated_activations_per_layer_match_what_autograd_saves(tmp_path: Path) -> None:
    from runner.machine.memory import Setup, Shape, estimate

    shape = Shape(vocab=1000, hidden=512, layers=1, intermediate=1408, heads=8, kv_heads=2, head_dim=80, tied=False)
    for dropout in (0.0, 0.05):
        for autocast in (False, True):
            # one decoder layer: the difference between a two-layer and a one-layer model
            measured = (_saved_bytes_per_token(2, dropout, autocast, tmp_path)
                        - _saved_bytes_per_token(1, dropout, autocast, tmp_path))
            act = 2 if autocast else 4
            est = estimate(shape, Setup(quantization="nf4", double_quant=True, compute_bytes=act, lora_r=16,
                                        lora_dropout=dropout, targets="all-linear", eight_bit_optimizer=False,
                                        micro_batch=2, seq_len=128, checkpointing=False, fused_attention=True,
                                        autocast=autocast, device="cpu"))
            predicted = (est.activations - 2 * 512 * 1408 * act) / 256  # less the transient dequantized weight
            assert 0.9 <= predicted / measured <= 1.1, (dropout, autocast, predicted, measured)
