"""A tiny Llama and a byte-level BPE tokenizer, both built offline: the demo and test model.

Random-initialised: it knows nothing until trained, and says so wherever it is used.
"""

from __future__ import annotations

from pathlib import Path

from runner.spec.typed import ModelInit

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# `{% generation %}` marks the assistant's tokens, so TRL-style assistant-only masks work too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int, corpus: list[str], out: Path) -> None:
    """Train a byte-level BPE on `corpus` (any text still encodes: bytes are the fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def build_model(init: ModelInit, vocab_size: int, seed: int, out: Path) -> int:
    """Save a random-initialised Llama to `out`; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=init.hidden_size,
                         intermediate_size=init.intermediate_size, num_hidden_layers=init.num_layers,
                         num_attention_heads=init.num_heads, num_key_value_heads=init.num_kv_heads,
                         max_position_embeddings=init.max_position_embeddings,
                         initializer_range=init.initializer_range, tie_word_embeddings=False,
                         pad_token_id=0, bos_token_id=1, eos_token_id=6)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    return sum(p.numel() for p in model.parameters())
