"""Chat-template presets: each renders a system + user + assistant chat, and a generation prompt, to
the exact string the model family's own template gives.

Rendered as transformers renders a chat template (a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, `raise_exception` as a global, the tokenizer's special tokens as variables); the
integration suite checks that transformers' own apply_chat_template agrees on every preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.core.errors import SpecError
from runner.rows.templates import PRESETS, chosen_template
from runner.spec.typed import parse_spec

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What treats scurvy?"},
        {"role": "assistant", "content": "Vitamin C."}]
TOKENS = {"llama3": ("<|begin_of_text|>", "<|eot_id|>"), "chatml": ("", "<|im_end|>"), "qwen": ("", "<|im_end|>"),
          "mistral": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"), "phi": ("<s>", "<|endoftext|>")}


def render(template: str, messages: list[dict[str, str]], generation: bool, bos: str, eos: str) -> str:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation, bos_token=bos,
                                            eos_token=eos)


EXPECTED: dict[str, tuple[str, str]] = {  # (the whole chat, system + user with the generation prompt)
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat treats scurvy?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nVitamin C.<|eot_id|>",
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat treats scurvy?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "chatml": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat treats scurvy?<|im_end|>\n"
               "<|im_start|>assistant\nVitamin C.<|im_end|>\n",
               "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat treats scurvy?<|im_end|>\n"
               "<|im_start|>assistant\n"),
    "qwen": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat treats scurvy?<|im_end|>\n"
             "<|im_start|>assistant\nVitamin C.<|im_end|>\n",
             "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat treats scurvy?<|im_end|>\n"
             "<|im_start|>assistant\n"),
    "mistral": ("<s> [INST] Be brief.\n\nWhat treats scurvy? [/INST] Vitamin C.</s>",
                "<s> [INST] Be brief.\n\nWhat treats scurvy? [/INST]"),
    "gemma": ("<bos><start_of_turn>user\nBe brief.\n\nWhat treats scurvy?<end_of_turn>\n"
              "<start_of_turn>model\nVitamin C.<end_of_turn>\n",
              "<bos><start_of_turn>user\nBe brief.\n\nWhat treats scurvy?<end_of_turn>\n<start_of_turn>model\n"),
    "phi": ("<|system|>\nBe brief.<|end|>\n<|user|>\nWhat treats scurvy?<|end|>\n<|assistant|>\nVitamin C.<|end|>\n"
            "<|endoftext|>",
            "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat treats scurvy?<|end|>\n<|assistant|>\n"),
}


def test_every_schema_preset_has_a_template_and_an_expected_rendering() -> None:
    from runner.spec.schema import load_schema

    enum = load_schema()["properties"]["data"]["properties"]["chat_template"]["enum"]
    assert set(PRESETS) == set(EXPECTED) == {e for e in enum if e is not None}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_renders_as_the_family_template(preset: str) -> None:
    bos, eos = TOKENS[preset]
    whole, prompt = EXPECTED[preset]
    assert render(PRESETS[preset], CHAT, False, bos, eos) == whole
    assert render(PRESETS[preset], CHAT[:2], True, bos, eos) == prompt


def test_qwen_adds_its_system_message_and_chatml_does_not() -> None:
    chat = CHAT[1:2]
    assert render(PRESETS["qwen"], chat, True, "", "").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert render(PRESETS["chatml"], chat, True, "", "") == "<|im_start|>user\nWhat treats scurvy?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("preset", ["mistral", "gemma"])
def test_templates_that_need_alternating_turns_refuse_others(preset: str) -> None:
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        render(PRESETS[preset], [CHAT[1], CHAT[1]], True, "", "")


def test_the_spec_template_wins_then_the_preset_then_the_tokenizers_own() -> None:
    assert chosen_template("{{ x }}", None) == "{{ x }}"
    assert chosen_template(None, "phi") == PRESETS["phi"]
    assert chosen_template(None, None) is None


SPEC = "model: {source: init}\ndata: {train: {path: t.jsonl}}\n"
ROW = '{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}\n'


def test_a_preset_keys_the_model_stage_as_its_template_written_out(tmp_path: Path) -> None:
    from runner.stages import model

    (tmp_path / "t.jsonl").write_text(ROW)
    plain = parse_spec(SPEC, base_dir=tmp_path)
    preset = parse_spec(SPEC.replace("data: {", "data: {chat_template: gemma, "), base_dir=tmp_path)
    written = dataclasses.replace(plain, model=dataclasses.replace(plain.model, chat_template=PRESETS["gemma"]))
    assert model.spec_slice(plain)["model"]["chat_template"] is None  # the default keeps the keys it had
    assert model.spec_slice(preset) == model.spec_slice(written)


def test_a_preset_and_a_template_of_ones_own_are_refused_together(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text(ROW)
    text = "model: {source: init, chat_template: '{{ x }}'}\ndata: {train: {path: t.jsonl}, chat_template: phi}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="s.yaml", base_dir=tmp_path)
    assert info.value.problems == ["data.chat_template: give model.chat_template (a Jinja template) or "
                                   "data.chat_template (a preset), not both (s.yaml:2:32)"]
    with pytest.raises(SpecError, match=r'data.chat_template: must be one of "llama3", .*got string "vicuna"'):
        parse_spec(SPEC.replace("data: {", "data: {chat_template: vicuna, "), base_dir=tmp_path)
