"""Perplexity of the base and the fine-tuned model on a held-out corpus (`eval.perplexity`), counted as
the training loss counts: the mean negative log-likelihood over every predicted token, then exp.

Each text is tokenized as the data stage tokenizes a plain prompt (the tokenizer's own special
tokens, BOS for Llama), and cut into windows of `data.max_length` tokens, the longest sequence
training saw. In a window every token after the first is predicted from the ones before it (the
labels shifted by one, as transformers' causal LM loss shifts them); the mean is over all predicted
tokens of all windows together, so a long text weighs by its tokens, not as one text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from runner.core.errors import DataError


def read_corpus(path: Path, field: str, max_texts: int | None) -> list[str]:
    """A .txt file's non-empty lines, or the `field` of each row of a .jsonl file."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"eval.perplexity: cannot read {path} as UTF-8 text ({exc})") from None
    texts: list[str] = []
    for number, line in enumerate(lines, 1):
        if max_texts is not None and len(texts) >= max_texts:
            break
        if line.strip():
            texts.append(_text(line, path, number, field) if path.suffix == ".jsonl" else line)
    if not texts:
        raise DataError(f"eval.perplexity: {path} holds no text")
    return texts


def _text(line: str, path: Path, number: int, field: str) -> str:
    try:
        text = json.loads(line)[field]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"eval.perplexity: {path}:{number}: not a JSON object with a text field `{field}` "
                        "(set eval.perplexity.field)") from None
    if not isinstance(text, str):
        raise DataError(f"eval.perplexity: {path}:{number}: `{field}` is not text")
    return text


def windows(ids: list[int], length: int) -> list[list[int]]:
    """Consecutive windows of at most `length` tokens; one of a single token predicts nothing and is left out."""
    return [ids[i : i + length] for i in range(0, len(ids), length) if len(ids[i : i + length]) > 1]


def negative_log_likelihood(model: Any, rows: list[list[int]], batch_size: int, pad_id: int) -> tuple[float, int]:
    """(sum of -log p over every predicted token, how many tokens were predicted) of these windows."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # longest first: little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, r in enumerate(batch):
                ids[b, : len(r)] = torch.tensor(r)
                mask[b, : len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            target = ids[:, 1:].to(device)
            picked = logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T - 1)
            keep = mask[:, 1:].to(device).bool()
            total -= float(picked[keep].double().sum())
            count += int(keep.sum())
    return total, count


def perplexity(model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int) -> dict[str, Any]:
    """Mean NLL per predicted token and its exp, for the model as it is (adapter on or off)."""
    rows = [w for ids in tok(texts).input_ids for w in windows(list(ids), max_length)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total, count = negative_log_likelihood(model, rows, batch_size, pad)
    nll = total / count if count else math.nan
    return {"nll": round(nll, 5) if count else None, "ppl": round(math.exp(nll), 4) if count else None,
            "tokens": count, "windows": len(rows)}
