"""Chat rows as the common layouts write them: OpenAI (`messages` of {role, content}) and ShareGPT
(`conversations` of {from, value}), told apart per row; role names mapped; what cannot be trained
dropped with a reason, never raised."""

from __future__ import annotations

from typing import Any

import pytest

from runner.rows.formats import Dropped, Example, convert_rows, count_reasons, prompt_text, scored_turns, to_example
from runner.spec.typed import Fields

# Shaped as ShareGPT dumps (and LLaMA-Factory's sharegpt examples) are: an id, `from`/`value` turns.
SHAREGPT = {"id": "identity_0", "conversations": [
    {"from": "system", "value": "You are a careful clinician."},
    {"from": "human", "value": "What is the antidote for paracetamol overdose?"},
    {"from": "gpt", "value": "N-acetylcysteine."},
    {"from": "human", "value": "And for opioids?"},
    {"from": "gpt", "value": "Naloxone."}]}
OPENAI = {"messages": [{"role": "system", "content": "You are a careful clinician."},
                       {"role": "user", "content": "What is the antidote for paracetamol overdose?"},
                       {"role": "assistant", "content": "N-acetylcysteine."}]}


def test_sharegpt_and_openai_rows_read_alike() -> None:
    share = to_example(SHAREGPT, "chat", Fields())
    assert share.messages == (("system", "You are a careful clinician."),
                              ("user", "What is the antidote for paracetamol overdose?"),
                              ("assistant", "N-acetylcysteine."), ("user", "And for opioids?"),
                              ("assistant", "Naloxone."))
    assert to_example(OPENAI, "chat", Fields()).messages == share.messages[:3]


@pytest.mark.parametrize(("name", "role"), [("human", "user"), ("user", "user"), ("gpt", "assistant"),
                                            ("assistant", "assistant"), ("chatgpt", "assistant"), ("bard", "assistant"),
                                            ("model", "assistant"), ("system", "system"), ("GPT", "assistant")])
def test_common_role_names_are_mapped(name: str, role: str) -> None:
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": name, "value": "text"},
                             {"from": "gpt", "value": "a"}]}
    assert to_example(row, "chat", Fields()).messages[1] == (role, "text")


def test_fields_messages_names_another_key_and_either_layout_is_still_found() -> None:
    row = {"dialogue": SHAREGPT["conversations"]}
    assert to_example(row, "chat", Fields(messages="dialogue")).messages[-1] == ("assistant", "Naloxone.")
    assert to_example(OPENAI, "chat", Fields(messages="dialogue")).messages[-1] == ("assistant", "N-acetylcysteine.")


def test_openai_text_parts_are_joined() -> None:
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Dose of "}, {"type": "text", "text": "NAC?"}]},
                        {"role": "assistant", "content": "150 mg/kg."}]}
    assert to_example(row, "chat", Fields()).messages[0] == ("user", "Dose of NAC?")


def test_what_cannot_be_trained_is_dropped_and_counted_never_raised() -> None:
    def turns(*pairs: tuple[str, Any]) -> dict[str, Any]:
        return {"conversations": [{"from": who, "value": text} for who, text in pairs]}

    rows: list[Any] = [
        SHAREGPT,
        turns(("human", "q"), ("narrator", "x"), ("gpt", "a")),
        turns(("human", "q"), ("narrator", "x"), ("gpt", "a")),
        turns(("human", "q"), ("function_call", "{}"), ("observation", "{}"), ("gpt", "a")),
        turns(("human", "q"), ("tool", "{}"), ("gpt", "a")),
        turns(("human", "only a question")),
        turns(("human", None), ("gpt", "a")),
        {"conversations": ["not an object"]},
        {"conversations": [{"value": "no speaker"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                      {"role": "assistant", "content": "a"}]},
        {"conversations": []},
        {"id": "no turns at all"},
    ]
    kept, dropped = convert_rows(rows, lambda r: to_example(r, "chat", Fields()))
    assert len(kept) == 1
    assert count_reasons(dropped) == {
        "a function_call turn: tool calls are not trained": 1, "a tool turn: tool calls are not trained": 1,
        "a message that is not an object": 1, "a message with non-text content parts": 1,
        "a message without a role (role or from)": 1, "a message without text content": 1,
        "missing messages (messages)": 2, "no assistant message": 1, "unknown role 'narrator'": 2}


def test_a_scored_chat_ends_at_its_last_assistant_turn() -> None:
    example = to_example({"conversations": SHAREGPT["conversations"] + [{"from": "human", "value": "Thanks"}]},
                         "chat", Fields())
    scored = scored_turns(example)
    assert scored.messages[-1] == ("assistant", "Naloxone.")  # the reference
    assert prompt_text(scored) == "And for opioids?"
    with pytest.raises(Dropped, match="no user message"):
        scored_turns(Example((("system", "s"), ("assistant", "a"))))
