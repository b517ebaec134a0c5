"""OpenAI's `logprobs` from `runner serve`, read by the official client, equal to the served model's own
log-softmax computed here, step by step, on the same weights (base, and base + adapter)."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
from conftest import KEY, Server

torch = pytest.importorskip("torch")

QUESTION = "What treats gout?"


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def entries(server: Server) -> dict[str, Any]:
    from runner.serve.registry import Registry

    return Registry(server.store).scan()


def model_of(entry: Any) -> tuple[Any, Any]:
    """The model the server answers with, loaded here as its worker loads it."""
    from peft import PeftModel

    from runner.models.loading import load_base, load_tokenizer

    model = load_base(entry.model_dir, entry.spec, entry.profile)
    if entry.kind == "adapter":
        model = PeftModel.from_pretrained(model, str(entry.adapter_dir))
    return model.eval(), load_tokenizer(entry.model_dir)


def greedy_steps(model: Any, tok: Any, ids: list[int], steps: int, k: int) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """(token, its log-probability, the k likeliest) per greedy step, from full forward passes."""
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            token = int(lp.argmax())
            top = lp.topk(k)
            out.append((tok.decode([token]), float(lp[token]),
                        [(tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]))
            ids = ids + [token]
    return out


def test_chat_logprobs_equal_the_adapters_log_softmax(server: Server, client: openai.OpenAI) -> None:
    from runner.serve.prompts import prompt_ids, render_chat

    messages = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model="serve-tiny", messages=messages,  # type: ignore[arg-type]
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    got = r.choices[0].logprobs
    assert got is not None and got.content is not None and 1 <= len(got.content) <= 8
    entry = entries(server)["serve-tiny"]
    model, tok = model_of(entry)
    want = greedy_steps(model, tok, prompt_ids(render_chat(messages, tok, entry.spec), tok), len(got.content), 3)
    for item, (token, lp, top) in zip(got.content, want):
        assert item.token == token and item.bytes == list(token.encode("utf-8"))
        assert item.logprob == pytest.approx(lp, abs=1e-4)
        assert [t.token for t in item.top_logprobs] == [t for t, _ in top]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx([v for _, v in top], abs=1e-4)
        assert item.top_logprobs[0].token == item.token  # greedy takes the likeliest
    assert sum(math.exp(t.logprob) for t in got.content[0].top_logprobs) <= 1 + 1e-6


def test_completion_logprobs_equal_the_bases_log_softmax(server: Server, client: openai.OpenAI) -> None:
    from runner.serve.prompts import prompt_ids

    (base,) = [e for e in entries(server).values() if e.kind == "base"]
    prompt = f"Question: {QUESTION}\nAnswer:"
    r = client.completions.create(model=base.id, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    got = r.choices[0].logprobs
    assert got is not None and got.tokens and got.token_logprobs and got.top_logprobs and got.text_offset is not None
    model, tok = model_of(base)
    want = greedy_steps(model, tok, prompt_ids(prompt, tok), len(got.tokens), 2)
    assert got.tokens == [t for t, _, _ in want]
    assert got.token_logprobs == pytest.approx([lp for _, lp, _ in want], abs=1e-4)
    assert [list(d) for d in got.top_logprobs] == [[t for t, _ in top] for _, _, top in want]
    assert got.text_offset == [sum(len(t) for t in got.tokens[:i]) for i in range(len(got.tokens))]


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="serve-tiny", messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None
    c = client.completions.create(model="serve-tiny", prompt=QUESTION, max_tokens=4, temperature=0)
    assert c.choices[0].logprobs is None
