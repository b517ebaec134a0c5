"""Answers to the spec's queries from the base and the fine-tuned model, with their safety flags.

Each query is rendered the way training rendered its prompts (the chat template, or the plain
`Question: ...\nAnswer:` shape), so the fine-tuned model sees what it learned to answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runner.scoring.safety import flags, rules_of
from runner.spec.typed import Spec


def render_query(query: str, tok: Any, spec: Spec) -> str:
    if spec.data.template == "plain":
        return f"Question: {query}\nAnswer:"
    messages = [{"role": "system", "content": spec.data.system_prompt}] if spec.data.system_prompt else []
    messages.append({"role": "user", "content": query})
    text: str = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def answer_queries(model: Any, tok: Any, spec: Spec, labels: tuple[str, ...],
                   adapter_off: Callable[[Any, bool], Any]) -> list[dict[str, Any]]:
    """One row per query: the prompt, each model's answer, and the flags each answer raised."""
    import torch

    gen = spec.eval.generation
    sample = gen.temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "do_sample": sample,
                              "pad_token_id": tok.pad_token_id}
    if sample:
        kwargs |= {"temperature": gen.temperature, "top_p": gen.top_p}
    rules = rules_of(spec.eval.safety)
    device = next(model.parameters()).device
    rows = []
    for query in spec.eval.queries:
        prompt = render_query(query, tok, spec)
        # A chat template may write BOS itself; only add the tokenizer's specials when it did not.
        specials = not (tok.bos_token and prompt.startswith(tok.bos_token))
        ids = torch.tensor([tok(prompt, add_special_tokens=specials).input_ids], device=device)
        answers = {}
        for label in labels:
            torch.manual_seed(spec.seed)  # the same draw for both models, and on every run
            with adapter_off(model, label == "base"), torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            answers[label] = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        rows.append({"query": query, "prompt": prompt, "answers": answers,
                     "flags": {label: flags(text, rules) for label, text in answers.items()},
                     "generation": {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature,
                                    "top_p": gen.top_p if sample else None,
                                    "decoding": "sampled" if sample else "greedy"}})
    return rows


def generate_batch(model: Any, tok: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of already-tokenized prompts, batched with left padding (longest first, so
    a batch pads little), decoded without special tokens."""
    import torch

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T), left-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[b, width - len(prompts[i]):] = 1
        with torch.inference_mode():
            new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad)[:, width:]
        for b, i in enumerate(chunk):
            out[i] = tok.decode(new[b], skip_special_tokens=True)
    return out
