"""Prompts rendered the way the adapter was trained (its record's `data.template` and
`data.system_prompt`), so a served answer to a spec query is the one eval wrote."""

from __future__ import annotations

from typing import Any

from runner.spec.typed import Spec


def render_chat(messages: list[dict[str, str]], tok: Any, spec: Spec) -> str:
    """For one user message this is `render_query` of runner/stages/eval/generation.py exactly."""
    if spec.data.template == "plain":
        # Earlier turns as the question/answer pairs the plain template trains on; a system message
        # has no place in that shape, as training gave it none.
        turns = [m for m in messages if m["role"] != "system"]
        text = ""
        for m in turns:
            text += f"Question: {m['content']}\nAnswer:" if m["role"] == "user" else f" {m['content']}\n\n"
        return text if turns and turns[-1]["role"] == "user" else text + "Question: \nAnswer:"
    if spec.data.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.data.system_prompt}, *messages]
    out: str = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return out


def prompt_ids(prompt: str, tok: Any) -> list[int]:
    # As eval: a chat template may write BOS itself; only add the tokenizer's specials when it did not.
    specials = not (tok.bos_token and prompt.startswith(tok.bos_token))
    ids: list[int] = tok(prompt, add_special_tokens=specials).input_ids
    return ids
