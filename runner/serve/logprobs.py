"""OpenAI's `logprobs` for an answer: each generated token's log-probability under the model (the
log-softmax of its logits at that step, before temperature and top-p reshape them) and the k likeliest
tokens there, in the chat shape (`choices[0].logprobs.content`) or the legacy completions shape
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). The worker records them (engine.py)."""

from __future__ import annotations

from typing import Any

Picked = tuple[str, float, list[tuple[str, float]]]  # token text, its log-probability, the k likeliest


def openai_logprobs(picked: list[Picked], chat: bool) -> dict[str, Any]:
    if chat:
        return {"content": [{"token": text, "logprob": lp, "bytes": list(text.encode("utf-8")),
                             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                                              for t, v in top]}
                            for text, lp, top in picked],
                "refusal": None}
    offsets, at = [], 0
    for text, _, _ in picked:
        offsets.append(at)
        at += len(text)
    return {"tokens": [text for text, _, _ in picked], "token_logprobs": [lp for _, lp, _ in picked],
            "top_logprobs": [dict(top) for _, _, top in picked], "text_offset": offsets}


def record_step(rows: list[Any], token_ids: list[int], logprobs: Any, decode: Any) -> None:
    """One decoding step: for each row that asked and is still answering, the log-probability of the
    token it took and its k likeliest. `logprobs`: (B, V) log-softmax of this step's logits."""
    for b, (row, token) in enumerate(zip(rows, token_ids)):
        k = row.ask.logprobs
        if k is None or row.done or token in row.eos:
            continue
        top = logprobs[b].topk(k) if k else None
        alternatives = [(decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)] if top is not None else []
        row.ask.picked.append((decode([token]), float(logprobs[b, token]), alternatives))
