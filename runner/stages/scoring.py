"""Multiple-choice scoring by log-likelihood, number for number what lm-evaluation-harness computes.

The harness (`HFLM`, lm-eval 0.4) scores each choice as log P(delimiter + choice | prompt):
- `_encode_pair`: trailing spaces of the context move to the continuation; the continuation's
  tokens are `tok_encode(context + continuation)[len(tok_encode(context)):]`.
- `tok_encode` with `add_bos_token` unset: the tokenizer's own special tokens (Llama 3 and Gemma put
  BOS first), except when the text already starts with the BOS text (a chat template wrote it).
- `_loglikelihood_tokens`: the input is `(context + continuation)[-(max_length + 1):][:-1]`,
  right-padded, no attention mask; `log_softmax` in the logits' dtype; the sum over the
  continuation's tokens; the prediction is the first choice with the highest sum.

We compute the same numbers with less work: one row per question when the choices' inputs are
prefixes of each other (one-token choices share the whole row; " maybe" covers " yes"), the output
head only at the positions scored instead of at every position, and questions tokenized in batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.benchmarks import Item

TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
DEFAULT_MAX_LENGTH = 2048  # the harness's fallback when neither config nor tokenizer names a length


@dataclass(frozen=True)
class Request:
    item: int  # index into the item list
    choice: int
    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Row:
    """One sequence to run: its tokens and the requests read off it."""

    tokens: tuple[int, ...]
    wanted: tuple[tuple[int, int], ...]  # (request index, position of its first scored logit)


def encoder(tok: Any) -> Callable[[list[str]], list[list[int]]]:
    """The harness's `tok_encode` for a batch of strings."""
    prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    bos_text: str | None = tok.decode([prefix_id]) if prefix_id is not None else None

    def encode(texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in texts]
        templated = [bool(bos_text) and t.startswith(bos_text or "") for t in texts]  # BOS already in the text
        for flag, kwargs in ((False, {}), (True, {"add_special_tokens": False})):
            indices = [i for i, t in enumerate(templated) if t == flag]
            if indices:
                for i, ids in zip(indices, tok([texts[i] for i in indices], **kwargs)["input_ids"]):
                    out[i] = list(ids)
        return out

    return encode


def requests_for(items: Sequence[Item], tok: Any, render: Callable[[str], str], delimiter: str = " ") -> list[Request]:
    """Token requests for every (item, choice), split into context and continuation as `_encode_pair` does."""
    encode = encoder(tok)
    contexts, wholes, shape = [], [], []
    for i, item in enumerate(items):
        context = render(item.prompt)
        if not context:
            raise ValueError(f"item {i}: empty prompt")  # the harness scores those against BOS; we build none
        spaces = len(context) - len(context.rstrip())
        stem, moved = (context[:-spaces], context[-spaces:]) if spaces else (context, "")
        contexts.append(stem)
        wholes += [stem + moved + delimiter + choice for choice in item.choices]
        shape.append(len(item.choices))
    context_ids, whole_ids = encode(contexts), encode(wholes)
    out, w = [], 0
    for i, (ctx, count) in enumerate(zip(context_ids, shape)):
        for c in range(count):
            cont = whole_ids[w][len(ctx):]  # as the harness: cut at the context's own length
            if not cont:
                raise ValueError(f"item {i}, choice {c}: the choice adds no tokens")
            out.append(Request(i, c, tuple(ctx), tuple(cont)))
            w += 1
    return out


def max_length_of(model: Any, tok: Any) -> int:
    """The harness's `resolve_max_length`: the config's context length, else the tokenizer's."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tok, "model_max_length", None)
    return int(limit) if limit is not None and limit != TOKENIZER_INFINITY else DEFAULT_MAX_LENGTH


def plan_rows(requests: Sequence[Request], max_length: int) -> list[Row]:
    """The sequences to run, longest first. A request whose input is a prefix of another's, for the
    same item, is read off the longer row: causal attention makes the logits at its positions equal."""
    by_item: dict[int, list[tuple[tuple[int, ...], int, int]]] = {}
    for index, r in enumerate(requests):
        tokens = (r.context + r.continuation)[-(max_length + 1):][:-1]  # left-truncated as the harness does
        by_item.setdefault(r.item, []).append((tokens, index, len(tokens) - len(r.continuation)))
    rows: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for entries in by_item.values():
        mine: list[tuple[int, ...]] = []
        for tokens, index, first in sorted(entries, key=lambda e: -len(e[0])):
            host = next((row for row in mine if row[: len(tokens)] == tokens), None)
            if host is None:
                host = tokens
                mine.append(tokens)
            rows.setdefault(host, []).append((index, first))
    ordered = sorted(rows.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return [Row(tokens, tuple(wanted)) for tokens, wanted in ordered]


def score(model: Any, requests: Sequence[Request], batch_size: int, pad_id: int, max_length: int) -> list[float]:
    """Sum of log-probabilities of each request's continuation, as the harness computes it."""
    import torch

    rows = plan_rows(requests, max_length)
    results = [0.0] * len(requests)
    device = next(model.parameters()).device
    keep_some = _accepts_logits_to_keep(model)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = len(batch[0].tokens)  # longest first
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T), right-padded
            for b, row in enumerate(batch):
                ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
            # (row, position, token) of every scored token, request by request.
            picks = [(b, first + k, t) for b, row in enumerate(batch) for index, first in row.wanted
                     for k, t in enumerate(requests[index].continuation)]
            kwargs: dict[str, Any] = {}
            if keep_some:  # the output head at the scored positions only, the same ones for every row
                needed = sorted({pos for _, pos, _ in picks})
                kwargs["logits_to_keep"] = torch.tensor(needed, device=device)
                column = {pos: k for k, pos in enumerate(needed)}
                picks = [(b, column[pos], t) for b, pos, t in picks]
            # No attention mask, as the harness: right padding sits after every scored position.
            logits = model(input_ids=ids.to(device), **kwargs).logits  # (B, K, V), K: kept positions
            logprobs = torch.log_softmax(logits, dim=-1)  # in the logits' dtype, as the harness
            index = torch.tensor(picks, device=logprobs.device).T  # (3, N)
            picked = logprobs[index[0], index[1], index[2]].cpu()  # (N,)
            at = 0
            for row in batch:
                for request, _ in row.wanted:
                    n = len(requests[request].continuation)
                    results[request] = float(picked[at : at + n].sum())  # summed in the logits' dtype
                    at += n
    return results


def _accepts_logits_to_keep(model: Any) -> bool:
    """Most causal LMs in transformers 5 can compute the output head at chosen positions only."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def predictions(count: int, requests: Sequence[Request], logliks: Sequence[float]) -> list[int]:
    """Per item, the first choice with the highest log-likelihood (numpy's argmax, as the harness)."""
    best: list[tuple[float, int]] = [(-float("inf"), -1)] * count
    for r, ll in zip(requests, logliks):
        if ll > best[r.item][0]:
            best[r.item] = (ll, r.choice)
    return [choice for _, choice in best]
