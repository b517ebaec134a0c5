"""Scoring on the tiny model equals the rule done the slow obvious way, for every built-in format on
real rows; and, where lm-eval is installed, equals lm-evaluation-harness itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from runner.machine.probe import probe_machine
from runner.machine.profile import resolve_profile
from runner.models.loading import load_base, load_tokenizer
from runner.rows.rowfiles import read_local
from runner.scoring.benchmarks import Item, to_items
from runner.scoring.loglik import max_length_of, plan_rows, predictions, requests_for, score, shared_prompts
from runner.spec.typed import Fields, load_spec
from tests.integration.conftest import Tiny


def reference(model: Any, tok: Any, items: list[Item]) -> list[float]:
    """One forward per (question, choice) over the whole vocabulary at every position: the harness's
    rule written plainly (tok_encode with the tokenizer's specials, the _encode_pair cut, left truncation)."""
    limit = model.config.max_position_embeddings
    out = []
    for item in items:
        context = tok.encode(item.prompt)
        for choice in item.choices:
            cont = tok.encode(item.prompt + " " + choice)[len(context):]
            inp = (context + cont)[-(limit + 1):][:-1]
            with torch.inference_mode():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0], dim=-1)
            first = len(inp) - len(cont)
            out.append(sum(logprobs[first + k, t].item() for k, t in enumerate(cont)))
    return out


def slices(shared_data: Path) -> dict[str, list[Item]]:
    medqa = list(read_local(shared_data / "medqa" / "test.jsonl"))[:10]
    pubmed = list(read_local(shared_data / "pubmedqa" / "test.jsonl"))
    # Four short abstracts and two too long for the tiny model's 1024 positions (left truncation).
    lengths = sorted(range(len(pubmed)), key=lambda i: len(str(pubmed[i]["CONTEXTS"])))  # type: ignore[index]
    pubmed = [pubmed[i] for i in lengths[:4] + lengths[-2:]]
    medmcqa = [{"question": r["question"], "opa": r["options"]["A"], "opb": r["options"]["B"],  # type: ignore[index]
                "opc": r["options"]["C"], "opd": r["options"]["D"], "cop": "ABCD".index(r["answer_idx"]),  # type: ignore[index]
                "subject_name": r["meta_info"]} for r in medqa[:6]]  # type: ignore[index]
    return {fmt: to_items(rows, fmt, Fields(), None)[0]  # type: ignore[arg-type]
            for fmt, rows in (("medqa", medqa), ("pubmedqa", pubmed), ("medmcqa", medmcqa))}


@pytest.fixture(scope="module")
def plain_model(tiny: Tiny) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    model_dir = tiny.artifacts["model"]
    return AutoModelForCausalLM.from_pretrained(str(model_dir / "weights")).eval(), load_tokenizer(model_dir)


@pytest.mark.parametrize("fmt", ["medqa", "medmcqa", "pubmedqa"])
def test_scoring_equals_a_plain_reference_on_real_rows(plain_model: tuple[Any, Any], shared_data: Path, fmt: str) -> None:
    model, tok = plain_model
    items = slices(shared_data)[fmt]
    requests = requests_for(items, tok, lambda p: p)
    if fmt == "pubmedqa":
        assert max(len(r.context) for r in requests) > 1024  # the truncation path is exercised
        assert max(len(r.continuation) for r in requests) > 1  # and multi-token choices
        # The four short ones run their prompt once with the choices as branches; the long two, rows.
        limit = max_length_of(model, tok)
        assert sorted(shared_prompts(requests, plan_rows(requests, limit), limit)) == [0, 1, 2, 3]
    fast = score(model, requests, batch_size=3, pad_id=tok.pad_token_id, max_length=max_length_of(model, tok))
    slow = reference(model, tok, items)
    assert fast == pytest.approx(slow, abs=2e-4)
    assert predictions(len(items), requests, fast) == predictions(len(items), requests, slow)


def test_identical_questions_score_as_each_does_alone(plain_model: tuple[Any, Any], shared_data: Path) -> None:
    """Real sets hold duplicates: two items with the same prompt share their rows (one KeyError before),
    and an item with fewer choices than its twin is scored too, not left at 0."""
    model, tok = plain_model
    items = slices(shared_data)["pubmedqa"][:2]
    twin = dataclasses.replace(items[0], choices=items[0].choices[:1], answer=0)
    doubled = [items[0], items[1], items[0], twin]
    limit = max_length_of(model, tok)
    requests = requests_for(doubled, tok, lambda p: p)
    together = score(model, requests, batch_size=3, pad_id=tok.pad_token_id, max_length=limit)
    alone = [score(model, requests_for([item], tok, lambda p: p), batch_size=3, pad_id=tok.pad_token_id,
                   max_length=limit) for item in doubled]
    assert together == pytest.approx([x for scores in alone for x in scores], abs=2e-4)
    assert all(x != 0.0 for x in together)


def test_scoring_the_4bit_model_with_its_adapter_on_and_off(tiny: Tiny, shared_data: Path) -> None:
    """What the eval stage scores: the adapter over the 4-bit base, and the same model with it off."""
    from peft import PeftModel

    from runner.stages.eval import adapter_off

    spec = load_spec(tiny.spec)
    model_dir = tiny.artifacts["model"]
    tok = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(load_base(model_dir, spec, resolve_profile(spec, probe_machine())),
                                      str(tiny.artifacts["export"] / "adapter")).eval()
    items = slices(shared_data)["medqa"][:6]
    requests = requests_for(items, tok, lambda p: p)
    got = {}
    for off in (True, False):
        with adapter_off(model, off):
            fast = score(model, requests, batch_size=4, pad_id=tok.pad_token_id, max_length=max_length_of(model, tok))
            assert fast == pytest.approx(reference(model, tok, items), abs=2e-4)
        got[off] = fast
    assert got[True] != got[False]  # the adapter changes the numbers: "base" really had it off


def test_predictions_equal_lm_evaluation_harness(plain_model: tuple[Any, Any], tiny: Tiny, shared_data: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself (`pip install -e .[bench]`), on the same folder and questions."""
    import bench.eval_speed as bench  # the bench's harness tasks: the harness's own doc_to_text functions

    for var, value in bench.OFFLINE.items():
        monkeypatch.setenv(var, value)
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    monkeypatch.setattr(bench, "LOG", tmp_path / "harness.log")

    model, tok = plain_model
    model_dir = tiny.artifacts["model"]
    lm = HFLM(pretrained=str(model_dir / "weights"), tokenizer=str(model_dir / "tokenizer"), device="cpu",
              batch_size=4, dtype="float32")
    rows = [json.loads(line) for line in (shared_data / "pubmedqa" / "test.jsonl").read_text().splitlines()[:8]]
    files = {"medqa": shared_data / "medqa" / "test.jsonl", "pubmedqa": tmp_path / "pubmedqa.jsonl"}
    files["pubmedqa"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    for fmt, path in files.items():
        harness = bench.run_harness(lm, fmt, path, limit=8)
        ours = bench.run_runner(model, tok, fmt, path, limit=8, batch_size=4)
        assert ours["preds"] == harness["preds"], fmt
        assert [x for q in ours["lls"] for x in q] == pytest.approx([x for q in harness["lls"] for x in q], abs=1e-4)


def test_branches_only_where_every_layer_attends_to_the_whole_prompt() -> None:
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from runner.scoring.loglik import cache_argument, can_branch

    # The branch path follows the forward's cache argument: `cache` from transformers 5.24, before it
    # `past_key_values`; under whatever is installed, Llama must branch (5.24 silently lost it).
    assert cache_argument(LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, vocab_size=64))) is not None
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 64}
    assert can_branch(LlamaForCausalLM(LlamaConfig(**small)))
    assert can_branch(Qwen2ForCausalLM(Qwen2Config(**small)))  # a sliding_window field, all layers full
    assert can_branch(MistralForCausalLM(MistralConfig(**small, sliding_window=None)))
    assert not can_branch(MistralForCausalLM(MistralConfig(**small, sliding_window=8)))
    assert not can_branch(Gemma3ForCausalLM(Gemma3TextConfig(**small, head_dim=8)))  # sliding layers
