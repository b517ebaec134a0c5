"""The memory estimate of each training method (DPO, ORPO, KTO, GRPO): hand-computed cases (pure arithmetic)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from runner.machine.memory import (
    FUSED_TOKENS,
    FUSED_VOCAB,
    GIB,
    Setup,
    Shape,
    estimate,
    fit,
    generation,
    kv_cache_bytes,
    method_fields,
    no_grad_forward,
    setup_for,
)

LLAMA_31_8B = Shape.from_config({"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
                                 "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8})
QLORA = Setup(quantization="nf4", double_quant=True, compute_bytes=2, lora_r=16, lora_dropout=0.05,
              targets="all-linear", eight_bit_optimizer=True, micro_batch=4, seq_len=1024, checkpointing=False,
              fused_attention=True, autocast=True)  # bf16 on a GPU
CPU = replace(QLORA, compute_bytes=4, autocast=False, device="cpu", micro_batch=2, seq_len=256)
SMALL = Shape(vocab=1024, hidden=256, layers=4, intermediate=704, heads=4, kv_heads=2, head_dim=64, tied=False)


def test_dpo_activations_are_sfts_at_twice_the_rows() -> None:
    # Chosen and rejected run in one batch: 2 x micro-batch rows, at the longer one's length.
    dpo = estimate(LLAMA_31_8B, replace(QLORA, method="dpo", reference=True))
    sft_2x = estimate(LLAMA_31_8B, replace(QLORA, micro_batch=8))
    fused_input = 8 * 1024 * 4096 * 4  # the fused head keeps its input (the fp32 stream over a 4-bit base)
    assert dpo.activations == sft_2x.activations + fused_input
    assert (dpo.weights, dpo.lora) == (sft_2x.weights, sft_2x.lora)  # the reference is the base: no second copy
    assert dpo.activations > 1.9 * estimate(LLAMA_31_8B, QLORA).activations
    assert "chosen+rejected 2x rows: 8 of 1024 tokens" in dpo.describe()


def test_the_fused_head_never_makes_the_full_logits() -> None:
    # TRL's fused LM head (DPO, KTO, GRPO): its input's fp32 gradient and one tile of 4096 tokens x 32768
    # vocabulary entries in the compute dtype (CUDA: Triton folds the tile in place).
    dpo = estimate(LLAMA_31_8B, replace(QLORA, method="dpo", reference=True))
    assert dpo.logits == 8 * 1024 * 4096 * 4 + FUSED_TOKENS * FUSED_VOCAB * 2
    full = estimate(LLAMA_31_8B, replace(QLORA, micro_batch=8)).logits  # SFT's scores, log-softmax, gradients
    assert full == 8 * 1024 * 128256 * 14 and dpo.logits < full / 25
    # On the CPU the tile is folded with torch ops: 8 fp32 temporaries beside it in the backward (measured).
    cpu = estimate(SMALL, replace(CPU, method="kto", reference=True))
    tokens = 2 * 256
    assert cpu.logits == tokens * 256 * 4 + tokens * 1024 * (4 + 4 * 8)


def test_orpo_has_twice_the_rows_full_logits_and_no_reference() -> None:
    orpo = estimate(LLAMA_31_8B, replace(QLORA, method="orpo"))
    sft_2x = estimate(LLAMA_31_8B, replace(QLORA, micro_batch=8))
    assert orpo.activations == sft_2x.activations and orpo.logits == sft_2x.logits
    assert orpo.reference == 0 and orpo.total == sft_2x.total
    assert "no reference" in orpo.describe()


def test_the_reference_forward_is_beside_the_activations_but_not_the_logits() -> None:
    # DPO: the reference runs (no grad, adapter off) after the policy's forward and before the loss: the
    # step's activations are held, its logits' backward is not yet running.
    s = replace(QLORA, method="dpo", reference=True)
    dpo = estimate(LLAMA_31_8B, s)
    # one layer's MLP over 8 x 1024 tokens in the fp32 stream is larger than the fused head's tile
    assert dpo.reference == no_grad_forward(LLAMA_31_8B, s, 8, 1024) > dpo.logits
    assert dpo.total == dpo.weights + dpo.lora + dpo.activations + dpo.reference
    without = estimate(LLAMA_31_8B, replace(s, reference=False))
    assert without.total == without.weights + without.lora + without.activations + without.logits < dpo.total


def test_a_no_grad_forward_is_one_layer_or_the_head_whichever_is_larger() -> None:
    tokens = 4 * 2048
    # the fp32 stream's tensors, the (rows, T, T) attention mask, and half of _dequantized's two weights
    layer = tokens * 4 * (3 * 256 + 4 * 704) + tokens * 2048 * 4 + 2 * 256 * 704 * 4 // 2
    head = 3 * tokens * 256 * 4 + FUSED_TOKENS * 1024 * (4 + 4 * 4)  # the tile and 4 fp32 temporaries (CPU)
    assert no_grad_forward(SMALL, CPU, 4, 2048) == max(layer, head)


def test_kto_counts_its_rows_once_and_the_kl_batch_as_a_no_grad_forward() -> None:
    kto = estimate(LLAMA_31_8B, replace(QLORA, method="kto", reference=True))
    sft = estimate(LLAMA_31_8B, QLORA)
    assert kto.activations == sft.activations + 4 * 1024 * 4096 * 4  # 4 rows, not 8
    assert kto.reference == no_grad_forward(LLAMA_31_8B, replace(QLORA, method="kto"), 4, 1024)
    assert "KL batch of 4 (no grad)" in kto.describe()


def test_grpo_rows_are_prompt_plus_completion_and_generation_is_apart() -> None:
    s = replace(QLORA, method="grpo", seq_len=128, completion_len=1408, generated=64, checkpointing=True)
    grpo = estimate(LLAMA_31_8B, s)
    sft = estimate(LLAMA_31_8B, replace(QLORA, seq_len=128 + 1408, checkpointing=True))
    assert grpo.activations == sft.activations + 4 * 1536 * 4096 * 4
    # 64 sequences of 128 + 1408 tokens, and one position's fp32 logits each. Keys and values are 128 KiB a
    # token for Llama 3 8B in bf16, but TRL generates outside autocast and over a 4-bit base the stream
    # is fp32 (peft upcasts the embeddings and norms; a 4-bit linear returns its input's dtype): 256 KiB.
    assert grpo.apart == generation(LLAMA_31_8B, s) == 64 * 1536 * 256 * 1024 + 64 * 128256 * 4
    assert kv_cache_bytes(LLAMA_31_8B, 2, 64, 1536) == 12 * GIB
    plain = replace(s, quantization="none")  # no upcast: the cache in the compute dtype
    assert generation(LLAMA_31_8B, plain) == 12 * GIB + 64 * 128256 * 4
    step = grpo.activations + max(grpo.logits, grpo.recompute + grpo.attention)
    assert grpo.total == grpo.weights + grpo.lora + max(step, grpo.apart)
    assert grpo.apart > step  # here the generation is the peak: shrinking the micro-batch does not help it
    # Long prompts: the prompts' forward (prefill) of all 64 at once, one layer's fp32 MLP and the fp32
    # (no autocast) mask over 64 x 1024 tokens beside their part of the cache, is larger than the whole cache.
    long = replace(s, seq_len=1024, completion_len=512)
    prefill = (64 * 1024 * 4 * (3 * 4096 + 4 * 14336) + 64 * 1024 * 1024 * 4 + 2 * 4096 * 14336 * 2 // 2
               + kv_cache_bytes(LLAMA_31_8B, 4, 64, 1024))
    assert generation(LLAMA_31_8B, long) == prefill > kv_cache_bytes(LLAMA_31_8B, 4, 64, 1536) + 64 * 128256 * 4


def test_grpo_with_beta_adds_the_reference_pass_and_the_adapter_copy() -> None:
    s = replace(CPU, method="grpo", completion_len=64, generated=16)
    off, on = estimate(SMALL, s), estimate(SMALL, replace(s, reference=True))
    copy = 4 * SMALL.layers * 16 * sum(i + o for i, o in SMALL.linears().values())  # TRL's "ref" adapter, fp32
    assert on.lora == off.lora + copy and on.reference == 0
    assert on.apart == max(off.apart, no_grad_forward(SMALL, s, 2, 256 + 64))


def test_fit_halves_the_pairs_not_the_rows(tmp_path: Path) -> None:
    budget = int(24 * GIB * 0.8)
    dpo = fit(LLAMA_31_8B, replace(QLORA, method="dpo", reference=True, micro_batch=8), 16, budget)
    sft = fit(LLAMA_31_8B, replace(QLORA, micro_batch=8), 16, budget)
    assert dpo.fits and dpo.micro_batch * dpo.accumulation == 16
    assert dpo.estimate.counted.startswith(f"dpo: chosen+rejected 2x rows: {2 * dpo.micro_batch} of")
    assert sft.estimate.counted == ""


def test_the_spec_sets_the_method_fields(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from runner.spec.typed import parse_spec

    rows = {"preference": {"prompt": "p", "chosen": "c", "rejected": "r"}, "kto": {"prompt": "p", "completion": "c",
            "label": True}, "multiple_choice": {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}}
    for fmt, row in rows.items():
        (tmp_path / f"{fmt}.jsonl").write_text(json.dumps(row) + "\n")
    profile = SimpleNamespace(quantization="nf4", dtype="bf16", optimizer="paged_adamw_8bit", micro_batch_size=4,
                              gradient_checkpointing=False, device="cuda", attn_implementation="sdpa", processes=2)
    grpo = "{method: grpo, batch_size: 16, grpo: {num_generations: 4, max_completion_length: 64, beta: 0.04}}"
    cases = {"dpo": ("preference", "{method: dpo}", {"method": "dpo", "reference": True}),
             "orpo": ("preference", "{method: orpo}", {"method": "orpo", "reference": False}),
             "kto": ("kto", "{method: kto}", {"method": "kto", "reference": True}),
             # a process generates its share of train.batch_size at once
             "grpo": ("multiple_choice", grpo, {"method": "grpo", "reference": True, "completion_len": 64, "generated": 8}),
             "sft": ("multiple_choice", "{}", {"method": "sft", "reference": False})}
    for method, (fmt, train, fields) in cases.items():
        spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: {fmt}.jsonl}}, format: {fmt}}}\n"
                          f"train: {train}\n", base_dir=tmp_path)
        assert method_fields(spec, profile) == fields, method
        s = setup_for(spec, profile, 300)
        assert {k: getattr(s, k) for k in fields} == fields and s.seq_len == 300, method


def test_orpo_under_checkpointing_keeps_two_logits_beside_the_recomputed_layer() -> None:
    s = replace(CPU, method="orpo", checkpointing=True)
    orpo, sft_2x = estimate(SMALL, s), estimate(SMALL, replace(CPU, micro_batch=4, checkpointing=True))
    assert orpo.recompute == sft_2x.recompute + 2 * (4 * 256) * 1024 * 4  # measured: bench/method_memory.py
    assert estimate(SMALL, replace(s, method="dpo", reference=True)).recompute == sft_2x.recompute


def test_plan_says_what_each_method_counted(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    expected = {"smoke-dpo": r"\[dpo: chosen\+rejected 2x rows: \d+ of \d+ tokens; reference forward \(no grad, adapter off\)",
                "smoke-grpo": r"GiB generating before the step \[grpo: \d+ completions of \d+ \+ \d+ tokens a micro-batch"}
    for spec, pattern in expected.items():
        done = subprocess.run([sys.executable, "-m", "runner", "plan", f"specs/{spec}.yaml", "--store", str(tmp_path)],
                              cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert re.search(r"^memory: .*" + pattern, done.stdout, re.MULTILINE), done.stdout


def test_when_nothing_fits_the_advice_names_what_is_the_peak() -> None:
    from runner.machine.memory import Estimate

    step_peak = Estimate(weights=10, lora=1, activations=50, logits=20, apart=30)
    generation_peak = Estimate(weights=10, lora=1, activations=5, logits=2, apart=30)
    assert step_peak.to_lower() == "lower data.max_length"
    assert generation_peak.to_lower().startswith("lower train.batch_size (completions generated at once)")
    assert Estimate(weights=10, lora=1, activations=5, logits=2).to_lower() == "lower data.max_length"


def test_a_kept_reference_copy_of_the_adapter_is_counted(tmp_path: Path) -> None:
    # DPO/KTO keep TRL's frozen copy of the adapter where the start is not the base (chained, DoRA,
    # orthogonal init): one more fp32 copy of A and B. Llama 3.1 8B, r 16 on all 7 linears a layer:
    # 32 x 16 x (4096+4096 + 4096+1024 + 4096+1024 + 4096+4096 + 4096+14336 + 4096+14336 + 14336+4096) params.
    from types import SimpleNamespace

    from runner.spec.typed import parse_spec

    params = 32 * 16 * (8192 + 5120 + 5120 + 8192 + 18432 + 18432 + 18432)
    fresh = estimate(LLAMA_31_8B, replace(QLORA, method="dpo", reference=True))
    kept = estimate(LLAMA_31_8B, replace(QLORA, method="dpo", reference=True, reference_copy=True))
    assert kept.lora - fresh.lora == 4 * params  # 167.8 MB
    assert kept.total - fresh.total == 4 * params
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    profile = SimpleNamespace(quantization="nf4", dtype="bf16", optimizer="paged_adamw_8bit", processes=1)
    for lora, copied in (("{}", False), ("{use_dora: true}", True), ("{init: orthogonal}", True)):
        spec = parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: p.jsonl}}, format: preference}}\n"
                          f"lora: {lora}\ntrain: {{method: dpo}}\n", base_dir=tmp_path)
        assert method_fields(spec, profile).get("reference_copy", False) is copied, lora
