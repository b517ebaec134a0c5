"""Packing changes nothing but speed: a packed micro-batch has the loss and gradients of the padded one,
training packed reaches the weights training padded reaches, and validation is the same number either
way (overall and per source). The tiny Llama in fp32 (no 4-bit), SDPA as the profile sets it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.models.loading import load_base, load_tokenizer
from runner.spec.typed import Spec, load_spec
from runner.stages.train.batches import PackCollator, PadCollator
from runner.stages.train.trainer import attach_lora, build_trainer
from runner.stages.train.validation import validation_loss
from tests.integration.conftest import Tiny


def fp32_spec(tiny: Tiny, packing: bool = False) -> Spec:
    spec = load_spec(tiny.spec)
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, quantization="none"),
                               train=dataclasses.replace(spec.train, packing=packing))


def lora_model(tiny: Tiny, spec: Spec) -> Any:
    """The tiny base with adapters whose B matrices are random too (peft starts them at zero, where the
    gradient of every A is zero and a comparison of A's gradients would prove nothing)."""
    profile = resolve_profile(spec, probe_machine())
    torch.manual_seed(0)
    model = attach_lora(load_base(tiny.artifacts["model"], spec, profile, quantized=False), spec, False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def rows_of(tiny: Tiny, part: str) -> Dataset:
    return Dataset.from_file(str(tiny.artifacts["data"] / f"{part}.arrow"))


def loss_and_grads(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(tiny: Tiny) -> None:
    spec = fp32_spec(tiny)
    model = lora_model(tiny, spec)
    pad = load_tokenizer(tiny.artifacts["model"]).pad_token_id
    examples = [rows_of(tiny, "train")[i] for i in range(8)]
    padded, packed = PadCollator(pad)(examples), PackCollator(pad, 256)(examples)
    # It packs: fewer rows, and fewer positions computed than padding to the longest example.
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    # The same targets: the losses are per-token means over the same tokens (the Trainer's count of
    # them, labels[..., 1:] != -100, is equal too, so accumulation scales both alike).
    assert int(packed["labels"][:, 1:].ne(-100).sum()) == int(padded["labels"][:, 1:].ne(-100).sum())
    loss_pad, grads_pad = loss_and_grads(model, padded)
    loss_pack, grads_pack = loss_and_grads(model, packed)
    assert loss_pack == pytest.approx(loss_pad, rel=1e-5)
    assert grads_pad.keys() == grads_pack.keys() and len(grads_pad) > 0
    for name, g in grads_pad.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_pack[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # The check can fail: the same packed rows with positions running on across examples (so they
    # attend to each other and sit at later positions) give another loss.
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    model.zero_grad()
    assert abs(model(**leaky).loss.item() - loss_pad) > 1e-3


def test_training_packed_reaches_the_weights_training_padded_reaches(tiny: Tiny, tmp_path: Path) -> None:
    rows, val = rows_of(tiny, "train"), rows_of(tiny, "validation")
    pad = load_tokenizer(tiny.artifacts["model"]).pad_token_id
    weights, losses = {}, {}
    for packing in (False, True):
        spec = fp32_spec(tiny, packing)
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, max_steps=4))
        profile = dataclasses.replace(resolve_profile(spec, probe_machine()), micro_batch_size=4, gradient_accumulation=2)
        model = lora_model(tiny, spec)
        work = tmp_path / f"packing-{packing}"
        trainer = build_trainer(model, spec, profile, work, rows, val, pad, work / "metrics.jsonl")
        assert type(trainer.data_collator).__name__ == ("PackCollator" if packing else "PadCollator")
        trainer.train()
        losses[packing] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights[packing] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(losses[True]) == 4 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=1e-4, atol=1e-5, msg=name)


def test_validation_is_computed_alike_packed_or_not_and_per_source(tiny: Tiny, tmp_path: Path) -> None:
    val = rows_of(tiny, "validation")
    pad = load_tokenizer(tiny.artifacts["model"]).pad_token_id
    spec = fp32_spec(tiny)
    model = lora_model(tiny, spec)
    profile = resolve_profile(spec, probe_machine())
    measured = {}
    for packing in (False, True):
        s = dataclasses.replace(spec, train=dataclasses.replace(spec.train, packing=packing))
        measured[packing] = build_trainer(model, s, profile, tmp_path, val, val, pad, tmp_path / "m.jsonl").measure()
    assert measured[True] == measured[False] and list(measured[True]) == ["eval_loss"]
    # The definition: the mean cross-entropy per answer token over the whole set, which one forward
    # of all rows packed (no micro-batches at all) also gives.
    with torch.no_grad():
        whole = model(**PackCollator(pad, 10**6)([val[i] for i in range(len(val))])).loss.item()
    assert measured[True]["eval_loss"] == pytest.approx(whole, rel=1e-5)
    # Rows that name their source (the data stage's `source` column, for mixtures): a loss per source,
    # the overall one unchanged, and the token-weighted mean of the sources'.
    names = ["medmcqa" if i % 3 else "notes" for i in range(len(val))]
    sourced = val.remove_columns("source").add_column("source", names)  # the data stage names one: `train`
    per = validation_loss(model, sourced, pad, 4)
    assert set(per) == {"eval_loss", "eval_loss/medmcqa", "eval_loss/notes"}
    assert per["eval_loss"] == pytest.approx(measured[False]["eval_loss"], rel=1e-6)
    tokens = {n: sum(sum(1 for x in r["labels"][1:] if x != -100) for r, s in zip(val, names) if s == n)
              for n in ("medmcqa", "notes")}
    mixed = sum(per[f"eval_loss/{n}"] * tokens[n] for n in tokens) / sum(tokens.values())
    assert per["eval_loss"] == pytest.approx(mixed, rel=1e-6)
    assert per["eval_loss/medmcqa"] != pytest.approx(per["eval_loss/notes"], rel=1e-3)


def test_rows_hold_every_example_once_within_max_length_and_pad_less() -> None:
    import random

    from runner.stages.train.batches import pack_rows

    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(5, 500) for _ in range(rng.randint(1, 32))]
        bins = pack_rows(lengths, 512)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        width = max(sum(lengths[i] for i in b) for b in bins)
        assert width <= 512
        assert len(bins) * width <= len(lengths) * max(lengths)  # never more positions than padding computes
    assert pack_rows([3, 3, 3], 6) == [[0], [1], [2]]  # three level rows beat two with a hole
    assert pack_rows([700], 512) == [[0]]  # longer than max_length (the data stage prevents it): a row of its own
