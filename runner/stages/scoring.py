"""Multiple-choice scoring by log-likelihood, the lm-evaluation-harness way.

For each choice the harness takes log P(" " + letter | prompt), splitting context and continuation
as its `_encode_pair` does (trailing spaces of the context move to the continuation; tokens without
special tokens), and predicts the argmax. We compute the same numbers with fewer forward passes:
when every choice's continuation is one token after the same context tokens, one pass over the
context gives all of them. Rows are sorted by length and batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.formats import LETTERS, Question


@dataclass(frozen=True)
class Request:
    question: int  # index into the question list
    choice: int
    context: list[int]
    continuation: list[int]


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole: list[int] = tok(context + continuation, add_special_tokens=False).input_ids
    ctx: list[int] = tok(context, add_special_tokens=False).input_ids
    return whole[: len(ctx)], whole[len(ctx):]


def requests_for(questions: list[Question], tok: Any, render: Callable[[str], str]) -> list[Request]:
    out = []
    for qi, q in enumerate(questions):
        prompt = render(q.prompt)
        for ci in range(len(q.choices)):
            context, cont = encode_pair(tok, prompt, f" {LETTERS[ci]}")
            out.append(Request(qi, ci, context, cont))
    return out


def score(model: Any, requests: list[Request], batch_size: int, pad_id: int) -> list[float]:
    """Sum of log-probabilities of each request's continuation tokens."""
    import torch

    # Rows to run: (tokens, [(request index, positions of its continuation)]).
    rows: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for i, r in enumerate(requests):
        if len(r.continuation) == 1:
            key = tuple(r.context)  # shared by every one-token choice of this question
            rows.setdefault(key, []).append((i, len(r.context) - 1, r.continuation))
        else:
            tokens = tuple(r.context + r.continuation[:-1])
            rows.setdefault(tokens, []).append((i, len(r.context) - 1, r.continuation))
    ordered = sorted(rows.items(), key=lambda item: -len(item[0]))
    results = [0.0] * len(requests)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            width = len(batch[0][0])
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (tokens, _) in enumerate(batch):
                ids[b, : len(tokens)] = torch.tensor(tokens)
                mask[b, : len(tokens)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for b, (_, wanted) in enumerate(batch):
                for index, first, cont in wanted:
                    positions = torch.arange(first, first + len(cont))
                    results[index] = float(logprobs[b, positions, torch.tensor(cont)].sum())
    return results


def predictions(questions: list[Question], requests: list[Request], logliks: list[float]) -> list[int]:
    best: list[tuple[float, int]] = [(-float("inf"), -1)] * len(questions)
    for r, ll in zip(requests, logliks):
        if ll > best[r.question][0]:
            best[r.question] = (ll, r.choice)
    return [choice for _, choice in best]
