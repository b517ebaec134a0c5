"""A reasoning example through a real tokenizer's chat template (a byte-level BPE built here, as the tiny
model's is): a template that takes the trace as the assistant message's `reasoning_content` (Qwen3's)
writes it with its own thinking tokens whatever `data.reasoning` says, and one that does not takes ours.
The exact text, and the tokens the loss covers: the trace and the answer, never the prompt.

QWEN3 is the text-chat part of Qwen3's own template (the `chat_template` of Qwen/Qwen3-8B's
tokenizer_config.json, as the copy of Qwen3's tokenizer_config.json in akougkas/warpio-cli
`warpio-docs/ai-docs/model_cards/qwen3:4b.md` shows it, with the generation prompt of Qwen3-8B as
SkyRL's `skyrl_train/utils/templates/README.md` and Hugging Face's "Qwen-3 chat template deep dive" quote it),
cut as runner/rows/templates.py cuts presets: the tool branches left out, every other line as published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.rows.formats import Dropped, Example, to_example
from runner.rows.templates import CHATML
from runner.spec.typed import Fields, Reasoning
from runner.stages.data import encoding

QWEN3 = (
    "{%- if messages[0].role == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.content is string %}\n"
    "        {%- set content = message.content %}\n"
    "    {%- else %}\n"
    "        {%- set content = '' %}\n"
    "    {%- endif %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
    ".lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)

# DeepSeek-R1's template (and its distills'), the system and tool branches left out: it reads no
# reasoning_content, keeps only what follows </think> of an assistant turn, and opens <think> itself.
R1 = ("{% for message in messages %}{% if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{% endif %}"
      "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}{% if '</think>' in content %}"
      "{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}"
      "{% endif %}{% endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}")

MEDMCQA = {"question": "Drug of choice for absence seizures?", "opa": "Phenytoin", "opb": "Ethosuximide",
           "opc": "Carbamazepine", "opd": "Lithium", "cop": 1,
           "exp": "Absence seizures respond to ethosuximide, which blocks T-type calcium channels."}
FIELDS = Fields(options=("opa", "opb", "opc", "opd"), answer_key="cop", answer_key_type="index0", trace="exp")
PROMPT = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQuestion: Drug of choice for absence seizures?\n"
          "A. Phenytoin\nB. Ethosuximide\nC. Carbamazepine\nD. Lithium\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
TRACE = "Absence seizures respond to ethosuximide, which blocks T-type calcium channels."
OURS = Reasoning(think_start="<|begin_of_thought|>", think_end="<|end_of_thought|>")  # not the template's


def tokenizer(folder: Path, template: str) -> Any:
    """A byte-level BPE with ChatML's special tokens, `<think>` and `</think>` as added tokens (as Qwen3's
    are) and two thinking tokens of another family, saved and loaded back as the stages load one."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PROMPT, TRACE, "B. Ethosuximide", "system user assistant"], trainer=trainer)
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    tok.add_special_tokens([AddedToken(OURS.think_start, normalized=False),
                            AddedToken(OURS.think_end, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = template
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def split(tok: Any, ids: list[int], labels: list[int]) -> tuple[str, str]:
    """(the text the loss skips, the text it covers); the covered part must be one span, to the end."""
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert labels[:first] == [-100] * first and labels[first:] == ids[first:]
    return tok.decode(ids[:first]), tok.decode(ids[first:])


@pytest.mark.parametrize("thinking", [Reasoning(), OURS], ids=["default-delimiters", "other-delimiters"])
def test_a_template_that_takes_reasoning_content_writes_the_trace_with_its_own_tokens(tmp_path: Path,
                                                                                      thinking: Reasoning) -> None:
    tok = tokenizer(tmp_path, QWEN3)
    example = to_example(MEDMCQA, "reasoning", FIELDS, thinking)
    ids, labels = encoding.encode(example, tok, "chat", "Be brief.", thinking)
    skipped, covered = split(tok, ids, labels)
    # The generation prompt `<|im_start|>assistant\n` is the prompt's: the loss starts at the template's <think>.
    assert skipped == PROMPT
    assert covered == f"<think>\n{TRACE}\n</think>\n\nB. Ethosuximide<|im_end|>\n"
    assert tok.convert_ids_to_tokens(ids[len(tok(PROMPT, add_special_tokens=False).input_ids)]) == "<think>"
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True) \
        .endswith("<|im_start|>assistant\n")  # what the evaluation prompts with: the model writes <think> itself
    if thinking == OURS:  # before: our delimiters inside content, and the template's empty think block before them
        before = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user",
                                          "content": example.messages[0][1]}, {"role": "assistant",
                                          "content": example.messages[1][1]}], tokenize=False)
        assert "<think>\n\n</think>\n\n<|begin_of_thought|>" in before


def test_a_template_without_reasoning_content_takes_our_delimiters_as_it_did(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, CHATML)
    example = to_example(MEDMCQA, "reasoning", FIELDS, OURS)
    ids, labels = encoding.encode(example, tok, "chat", "Be brief.", OURS)
    assert (ids, labels) == encoding.encode(example, tok, "chat", "Be brief.")  # exactly today's rendering
    skipped, covered = split(tok, ids, labels)
    assert skipped == PROMPT
    assert covered == f"<|begin_of_thought|>\n{TRACE}\n<|end_of_thought|>\n\nB. Ethosuximide<|im_end|>\n"
    # The template's own thinking tokens, given as think_start / think_end, are one token each.
    assert [tok.convert_ids_to_tokens(i) for i in ids if tok.convert_ids_to_tokens(i).endswith("_thought|>")] == [
        "<|begin_of_thought|>", "<|end_of_thought|>"]


def test_a_long_trace_is_cut_and_the_template_still_closes_it(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, QWEN3)
    long = MEDMCQA | {"exp": " ".join([TRACE] * 6)}
    example = to_example(long, "reasoning", FIELDS, OURS)
    full, _ = encoding.encode(example, tok, "chat", None, OURS)
    ids, labels, cut = encoding.fit_trace(example, tok, "chat", None, OURS, len(full) - 40)
    assert cut and len(ids) <= len(full) - 40
    covered = split(tok, ids, labels)[1]
    assert covered.startswith("<think>\nAbsence seizures") and covered.endswith("\n</think>\n\nB. Ethosuximide<|im_end|>\n")
    assert "_thought|>" not in tok.decode(ids)


def test_the_samples_file_shows_the_template_s_tokens(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, QWEN3)
    example = Example(to_example(MEDMCQA, "reasoning", FIELDS).messages)
    ids, labels = encoding.encode(example, tok, "chat", None, Reasoning())
    shown = encoding.samples([{"input_ids": ids, "labels": labels}], tok)
    assert shown.endswith(f"<|im_start|>assistant\n[[<think>\n{TRACE}\n</think>\n\nB. Ethosuximide<|im_end|>\n]]\n")


def test_a_template_that_drops_the_trace_drops_the_example_saying_so(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, R1)
    with pytest.raises(Dropped, match=r"^the chat template drops the reasoning trace \(as DeepSeek-R1's does\)"):
        encoding.encode(to_example(MEDMCQA, "reasoning", FIELDS), tok, "chat", None, Reasoning())
    ids, labels = encoding.encode(to_example(MEDMCQA, "reasoning", FIELDS, OURS), tok, "chat", None, OURS)
    assert split(tok, ids, labels)[1].startswith("<|begin_of_thought|>")  # other delimiters: R1's keeps the trace


def test_a_template_whose_generation_prompt_opens_thinking_keeps_that_in_the_prompt(tmp_path: Path) -> None:
    """Qwen3-4B-Thinking-2507's generation prompt (`<|im_start|>assistant\\n<think>\\n`, the copy named above):
    the model is prompted into thinking, so the loss starts at the trace."""
    thinking_2507 = QWEN3.split("{%- if add_generation_prompt %}")[0] + (
        "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}")
    tok = tokenizer(tmp_path, thinking_2507)
    ids, labels = encoding.encode(to_example(MEDMCQA, "reasoning", FIELDS, OURS), tok, "chat", "Be brief.", OURS)
    assert split(tok, ids, labels) == (PROMPT + "<think>\n", f"{TRACE}\n</think>\n\nB. Ethosuximide<|im_end|>\n")
