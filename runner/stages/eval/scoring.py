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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.benchmarks import Item
from runner.stages.eval.branches import accepts, can_branch, keep_only, score_branches, shared_prompts

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

    backend = _plain_backend(tok)

    def encode(texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in texts]
        templated = [bool(bos_text) and t.startswith(bos_text or "") for t in texts]  # BOS already in the text
        for flag in (False, True):
            indices = [i for i, t in enumerate(templated) if t == flag]
            if indices:
                for i, ids in zip(indices, _ids(tok, backend, [texts[i] for i in indices], specials=not flag)):
                    out[i] = ids
        return out

    return encode


def _plain_backend(tok: Any) -> Any:
    """The Rust tokenizer under a transformers fast tokenizer whose encoding adds nothing to it, else None.
    Calling it directly skips building a BatchEncoding per text (a third of the scoring time on a small model)."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    plain = isinstance(tok, TokenizersBackend) and type(tok)._encode_plus is TokenizersBackend._encode_plus
    return tok.backend_tokenizer if plain else None


def _ids(tok: Any, backend: Any, texts: list[str], specials: bool) -> list[list[int]]:
    """Token ids of each text, exactly as `tok(texts, add_special_tokens=specials)` gives them."""
    # The tokenizer's own call first, on one text: it sets the backend's state (no padding, no
    # truncation, its special-token splitting), and its answer checks the direct call's.
    first = list(tok(texts[:1], add_special_tokens=specials)["input_ids"][0])
    if backend is not None:
        out = [list(e.ids) for e in backend.encode_batch(texts, add_special_tokens=specials)]
        if out[0] == first:
            return out
    # No plain backend, or its answer differs (the wrapper does something of its own): the wrapper throughout.
    return [list(ids) for ids in tok(texts, add_special_tokens=specials)["input_ids"]]


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
    # A question whose choices need rows of their own (they differ from their first token on) runs its
    # prompt once and the choices as branches off its key/value cache: the same numbers to float
    # rounding, a fraction of the work. Not when the harness would left-truncate (its windows differ).
    shared = shared_prompts(requests, rows, max_length) if can_branch(model) else {}
    results = [0.0] * len(requests)
    keep = accepts(model, "logits_to_keep")  # most causal LMs in transformers 5 can
    with torch.inference_mode():
        # A row two identical questions share runs plain unless every question on it branches.
        plain = [row for row in rows if any(requests[i].item not in shared for i, _ in row.wanted)]
        for start in range(0, len(plain), batch_size):
            _score_rows(model, requests, plain[start : start + batch_size], pad_id, keep, results)
        groups = sorted(shared.values(), key=lambda g: (-len(requests[g[0]].context), g[0]))
        for start in range(0, len(groups), batch_size):
            score_branches(model, requests, groups[start : start + batch_size], pad_id, keep, results)
    return results


def _score_rows(model: Any, requests: Sequence[Request], batch: list[Row], pad_id: int, keep: bool,
                results: list[float]) -> None:
    import torch

    device = next(model.parameters()).device
    width = len(batch[0].tokens)  # longest first
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T), right-padded
    for b, row in enumerate(batch):
        ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
    # (row, position, token) of every scored token, request by request.
    picks = [(b, first + k, t) for b, row in enumerate(batch) for index, first in row.wanted
             for k, t in enumerate(requests[index].continuation)]
    kwargs, picks = keep_only([pos for _, pos, _ in picks], picks, keep, device)
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


def predictions(count: int, requests: Sequence[Request], logliks: Sequence[float]) -> list[int]:
    """Per item, the first choice with the highest log-likelihood (numpy's argmax, as the harness)."""
    best: list[tuple[float, int]] = [(-float("inf"), -1)] * count
    for r, ll in zip(requests, logliks):
        if ll > best[r.item][0]:
            best[r.item] = (ll, r.choice)
    return [choice for _, choice in best]
