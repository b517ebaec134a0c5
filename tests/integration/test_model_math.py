"""Numerical promises on the tiny model, in-process: 4-bit gradients stay right after an eval pass,
the merged model computes what base + adapter computed. (Scoring vs a plain reference: test_eval_vs_reference.py.)"""

from __future__ import annotations

import torch

from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.models.loading import load_base
from runner.spec.typed import load_spec
from tests.integration.conftest import Tiny


def _setup(tiny: Tiny):  # type: ignore[no-untyped-def]
    spec = load_spec(tiny.spec)
    return spec, resolve_profile(spec, probe_machine()), tiny.artifacts["model"]


def _lora_grads(model, batch) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_4bit_gradients_after_an_eval_pass_equal_those_before(tiny: Tiny) -> None:
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights on the first no-grad forward and later
    gradients come out wrong (up to 57% off). The loader turns that repack off; this catches a regression."""
    from peft import LoraConfig, get_peft_model

    spec, profile, model_dir = _setup(tiny)
    assert profile.quantization == "nf4"
    torch.manual_seed(0)
    model = get_peft_model(load_base(model_dir, spec, profile),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights="gaussian"))
    ids = torch.randint(10, 1000, (2, 24))
    batch = {"input_ids": ids, "labels": ids.clone()}
    before = _lora_grads(model, batch)
    with torch.inference_mode():
        model(input_ids=ids)  # the eval pass that triggers the repack
    model.generate(input_ids=ids[:1, :4], max_new_tokens=2, do_sample=False)
    after = _lora_grads(model, batch)
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


def test_merged_model_computes_what_base_plus_adapter_computed(tiny: Tiny) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec, profile, model_dir = _setup(tiny)
    export = tiny.artifacts["export"]
    adapted = PeftModel.from_pretrained(load_base(model_dir, spec, profile), str(export / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(export / "merged")).eval()
    naive = PeftModel.from_pretrained(load_base(model_dir, spec, profile, quantized=False),
                                      str(export / "adapter")).merge_and_unload().eval()
    ids = torch.randint(10, 1000, (2, 32))
    with torch.inference_mode():
        want, got, wrong = (m(input_ids=ids).logits for m in (adapted, merged, naive))
    err_merged = (got - want).abs().max().item()
    err_naive = (wrong - want).abs().max().item()
    assert err_merged < 1e-3, err_merged
    assert err_naive > 10 * err_merged  # merging into the full-precision weights is measurably off
