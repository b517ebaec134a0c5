"""Chat-template presets (`data.chat_template`), for tokenizers that ship none, as LLaMA-Factory's
`template:` gives them.

Each is the model family's own Jinja template as published in its tokenizer_config.json, cut to
text chat (the tool-calling and image branches are left out: the data formats have neither), so a
system + user + assistant conversation renders to the same string as the original. The model stage
writes the chosen one into the tokenizer it stores, the one place every later use (training,
evaluation, the server) reads a template from. Light: strings only.
"""

from __future__ import annotations

from typing import Any, Literal

Preset = Literal["llama3", "chatml", "qwen", "mistral", "gemma", "phi"]

# Meta-Llama-3-8B-Instruct.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# ChatML as OpenAI described it and Hugging Face documents it: no default system message.
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5-Instruct without tools: ChatML, and Qwen's system message when the chat has none.
QWEN = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first)"
    " or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Mistral-7B-Instruct-v0.2: the system message joins the first user turn; roles must alternate.
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# Gemma 3 (text): the assistant is `model`; the system message joins the first user turn.
GEMMA = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {{- message['content'] | trim }}\n"
    "    {{- '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# Phi-3.5-mini-instruct.
PHI = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

PRESETS: dict[str, str] = {"llama3": LLAMA3, "chatml": CHATML, "qwen": QWEN, "mistral": MISTRAL, "gemma": GEMMA,
                           "phi": PHI}


def chosen_template(own: str | None, preset: str | None) -> str | None:
    """The template the model stage writes into the tokenizer: `model.chat_template` as written, else the
    preset's text, else None (the tokenizer keeps its own). The spec refuses both at once."""
    return own if own is not None else PRESETS[preset] if preset is not None else None


# What a chat template that takes the trace apart (Qwen3, ...) closes thinking with, where it is this one.
TEMPLATE_THINK_END = "</think>"


def takes_reasoning_content(template: str | None) -> bool:
    """Whether a chat template reads an assistant message's `reasoning_content` (Qwen3 and others): such a
    template writes the trace itself, with its own thinking tokens and in its own place, so a reasoning
    example gives it the trace there rather than inside `content`."""
    return template is not None and "reasoning_content" in template


def trained_think_end(template: str | None, written: str) -> str:
    """The delimiter a reasoning example's trace was closed with in training: `</think>` where the chat
    template takes `reasoning_content` and writes it, else `written` (data.reasoning.think_end). A template
    that takes the trace but closes it otherwise keeps `written`: its token cannot be read off the Jinja."""
    taken = template is not None and takes_reasoning_content(template) and TEMPLATE_THINK_END in template
    return TEMPLATE_THINK_END if taken else written


def template_of(tok: Any) -> str | None:
    """The chat template `apply_chat_template` uses: the tokenizer's own, or its `default` one of several."""
    value = getattr(tok, "chat_template", None)
    if isinstance(value, dict):
        value = value.get("default")
    return value if isinstance(value, str) else None
