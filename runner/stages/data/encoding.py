"""Examples to token ids and labels. Instruction formats: labels are -100 except on the assistant's
tokens. Text documents: blocks of at most `max_length` tokens with the loss on every token; a block
never spans two documents (each document ends with EOS, and its last block is shorter).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runner.rows.formats import Dropped, Example, chat_messages, split_thought, thought
from runner.rows.pairs import Labelled, Pair
from runner.rows.templates import takes_reasoning_content, template_of
from runner.spec.typed import Reasoning

Row = dict[str, list[int]]

# Characters of a document tokenized in one call: a fast tokenizer holds ~200 bytes per character while
# it works (a 40 MB document took 8 GB and aborted the process where memory was bounded), so a longer
# document goes in pieces cut after a newline. Shorter documents tokenize whole, as they always have.
PIECE_CHARS = 1 << 20


def encode(example: Example, tok: Any, template: str, system_prompt: str | None,
           thinking: Reasoning | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are -100 except on the assistant's tokens. `thinking`: a reasoning
    example's delimiters, for a chat template that takes the trace as `reasoning_content`."""
    if template == "plain":
        if len(example.messages) != 2:
            raise Dropped("data.template plain takes single-turn examples; use template chat")
        prompt, answer = example.messages[0][1], example.messages[1][1]
        context = tok(prompt).input_ids
        full = tok(f"{prompt} {answer}").input_ids + [tok.eos_token_id]
        start = _common_prefix(context, full)
        return full, [-100] * start + full[start:]
    messages = chat_messages(example, system_prompt, thinking if takes_reasoning_content(template_of(tok)) else None)
    full = _chat_ids(tok, messages, False)
    if thinking is not None and split_thought(example.messages[-1][1], thinking)[0] not in _chat_text(tok, messages, False):
        # DeepSeek-R1's template (its distills' too) keeps only what follows </think> of an assistant turn.
        raise Dropped("the chat template drops the reasoning trace (as DeepSeek-R1's does): give model.chat_template "
                      "one that keeps it, or set data.template: plain")
    labels = [-100] * len(full)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            # Token-level common prefixes, so a template that is not prefix-stable still masks safely.
            start = _common_prefix(_chat_ids(tok, messages[:i], True), full)
            end = _common_prefix(_chat_ids(tok, messages[: i + 1], False), full)
            labels[start:end] = full[start:end]
    if all(label == -100 for label in labels):
        raise Dropped("no answer tokens after applying the chat template")
    return full, labels


def fit_trace(example: Example, tok: Any, template: str, system_prompt: str | None, thinking: Reasoning,
              max_length: int) -> tuple[list[int], list[int], bool]:
    """A reasoning example's ids and labels with the end of its trace cut until the whole fits `max_length`
    (the delimiters and the answer kept: an answer is what the trace was for), and whether it was cut.
    Dropped when even an empty trace leaves it too long."""
    ids, labels = encode(example, tok, template, system_prompt, thinking)
    if len(ids) <= max_length:
        return ids, labels, False
    trace, answer = split_thought(example.messages[-1][1], thinking)
    pieces = tok(trace, add_special_tokens=False).input_ids
    keep = len(pieces)
    while len(ids) > max_length:
        if keep == 0:
            raise Dropped(f"longer than data.max_length ({max_length} tokens) even with its trace cut")
        keep = max(0, keep - (len(ids) - max_length))  # at least the overflow: the loop ends
        cut = tok.decode(pieces[:keep]).strip()
        ids, labels = encode(Example(example.messages[:-1] + (("assistant", thought(cut, answer, thinking)),)),
                             tok, template, system_prompt, thinking)
    return ids, labels, True


def encode_answer(prompt: tuple[tuple[str, str], ...], answer: str, tok: Any, template: str,
                  system_prompt: str | None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation and one answer, the labels on the answer's tokens alone
    (a preference method compares answers: earlier assistant turns are context, not something learned)."""
    example = Example((*prompt, ("assistant", answer)))
    if template == "plain":
        return encode(example, tok, template, system_prompt)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": role, "content": content} for role, content in example.messages]
    full = _chat_ids(tok, messages, False)
    start = _common_prefix(_chat_ids(tok, messages[:-1], True), full)
    if start >= len(full):
        raise Dropped("no answer tokens after applying the chat template")
    return full, [-100] * start + full[start:]


def encode_pair(record: Pair | Labelled, tok: Any, template: str, system_prompt: str | None,
                max_length: int) -> dict[str, Any]:
    """A preference pair's row (the chosen as input_ids and labels, the rejected beside them) or a KTO
    row (with `desirable`), every sequence within `max_length` tokens."""
    answers = [record.chosen, record.rejected] if isinstance(record, Pair) else [record.completion]
    encoded = [encode_answer(record.prompt, answer, tok, template, system_prompt) for answer in answers]
    if any(len(ids) > max_length for ids, _ in encoded):
        raise Dropped(f"longer than data.max_length ({max_length} tokens)")
    row: dict[str, Any] = {"input_ids": encoded[0][0], "labels": encoded[0][1]}
    if isinstance(record, Pair):
        return row | {"rejected_ids": encoded[1][0], "rejected_labels": encoded[1][1]}
    return row | {"desirable": record.desirable}


def text_blocks(text: str, tok: Any, max_length: int) -> Iterator[Row]:
    """One document as blocks of at most `max_length` tokens, loss on every token, made as its pieces
    are tokenized (memory: a piece, not the document). The tokenizer's own BOS (if it adds one) starts
    the document, EOS ends it; a 1-token tail has nothing to predict from and is left out (the caller
    counts a document that gives no block)."""
    ids: list[int] = []
    for number, piece in enumerate(_pieces(text, PIECE_CHARS)):
        ids += tok(piece, add_special_tokens=number == 0).input_ids
        while len(ids) >= max_length:
            yield {"input_ids": ids[:max_length], "labels": ids[:max_length]}
            ids = ids[max_length:]
    ids.append(tok.eos_token_id)
    if len(ids) > 1:
        yield {"input_ids": ids, "labels": list(ids)}


def _pieces(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of at most `size` characters, each cut after a newline where there is one."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start, start + size) + 1 or start + size
        yield text[start:cut]
        start = cut
    yield text[start:]


def _chat_ids(tok: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids: list[int] = tok(_chat_text(tok, messages, generation_prompt), add_special_tokens=False).input_ids
    return ids


def _chat_text(tok: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    from jinja2.exceptions import TemplateError

    try:
        text: str = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:  # the template's raise_exception: Gemma's and Mistral's want alternating turns
        raise Dropped(f"refused by the chat template: {str(exc)[:80]}") from None
    return text


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def samples(rows: list[Row], tok: Any) -> str:
    """The first examples as the model sees them, the trained part in [[...]], to check the template."""
    out = []
    for r in rows:
        text, inside = "", False
        for token, label in zip(r["input_ids"], r["labels"]):
            if (label != -100) != inside:
                text += "]]" if inside else "[["
                inside = not inside
            text += tok.decode([token])
        out.append(text + ("]]" if inside else ""))
    return "\n\n-----\n\n".join(out) + "\n"
