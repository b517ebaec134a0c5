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

from runner.scoring.benchmarks import Item

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


def keep_only(positions: list[int], picks: list[tuple[int, int, int]], keep: bool,
               device: Any) -> tuple[dict[str, Any], list[tuple[int, int, int]]]:
    """The output head at the scored positions only (the same ones for every row), when the model can."""
    import torch

    if not keep:
        return {}, picks
    needed = sorted(set(positions))
    column = {pos: k for k, pos in enumerate(needed)}
    return {"logits_to_keep": torch.tensor(needed, device=device)}, [(b, column[pos], t) for b, pos, t in picks]


def shared_prompts(requests: Sequence[Request], rows: Sequence[Row], max_length: int) -> dict[int, list[int]]:
    """item -> its request indices, for the items that need more than one row and are not truncated."""
    rows_of: dict[int, int] = {}
    for row in rows:  # identical questions share rows: each row counts for every item on it
        for item in {requests[i].item for i, _ in row.wanted}:
            rows_of[item] = rows_of.get(item, 0) + 1
    by_item: dict[int, list[int]] = {}
    for index, r in enumerate(requests):
        by_item.setdefault(r.item, []).append(index)
    return {item: indices for item, indices in by_item.items() if rows_of[item] > 1
            and all(len(requests[i].context) + len(requests[i].continuation) - 1 <= max_length for i in indices)}


def score_branches(model: Any, requests: Sequence[Request], groups: list[list[int]], pad_id: int, keep: bool,
                    results: list[float]) -> None:
    """Each group's prompt in one pass (its cache kept), then every choice's later tokens in a second
    pass over that cache: position ids continue from the prompt's end, and a mask lets each branch
    see its own prompt and its own earlier tokens only."""
    import torch

    device = next(model.parameters()).device
    lengths = [len(requests[g[0]].context) for g in groups]
    width = max(lengths)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)  # (B, W), right-padded
    for b, g in enumerate(groups):
        ids[b, : lengths[b]] = torch.tensor(requests[g[0]].context)
    # The first token of every choice is scored at the prompt's last position.
    firsts = [(b, lengths[b] - 1, requests[i].continuation[0]) for b, g in enumerate(groups) for i in g]
    kwargs, picks = keep_only([pos for _, pos, _ in firsts], firsts, keep, device)
    out = model(input_ids=ids.to(device), use_cache=True, **kwargs)
    logprobs = torch.log_softmax(out.logits, dim=-1)  # (B, K, V)
    index = torch.tensor(picks, device=device).T
    first = logprobs[index[0], index[1], index[2]]  # (N,), in the order of `firsts`
    # Branches: each choice's continuation but its last token, one after another in a row.
    spans, length = _branch_spans(requests, groups)
    later: dict[int, Any] = {}
    if length:
        branch, positions, mask = _branch_inputs(requests, spans, lengths, width, length, pad_id)
        argument = cache_argument(model)
        assert argument is not None  # can_branch checked it before any branch was planned
        cache = {argument: returned_cache(out)}
        logits = model(input_ids=branch.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
                       use_cache=False, **cache).logits  # (B, L, V)
        branch_logprobs = torch.log_softmax(logits, dim=-1)
        for i, b, at in spans:
            cont = requests[i].continuation
            if len(cont) > 1:
                later[i] = branch_logprobs[b, torch.arange(at, at + len(cont) - 1, device=device),
                                           torch.tensor(cont[1:], device=device)]
    for k, (i, _, _) in enumerate(spans):
        parts = [first[k : k + 1]] + ([later[i]] if i in later else [])
        results[i] = float(torch.cat(parts).sum().cpu())  # summed in the logits' dtype, as the harness


def _branch_spans(requests: Sequence[Request], groups: list[list[int]]) -> tuple[list[tuple[int, int, int]], int]:
    """(request, row, start in the branch row) of every choice, and the longest branch row."""
    spans: list[tuple[int, int, int]] = []
    fill = [0] * len(groups)
    for b, g in enumerate(groups):
        for i in g:
            spans.append((i, b, fill[b]))
            fill[b] += len(requests[i].continuation) - 1
    return spans, max(fill)


def _branch_inputs(requests: Sequence[Request], spans: list[tuple[int, int, int]], lengths: list[int], width: int,
                   length: int, pad_id: int) -> tuple[Any, Any, Any]:
    """Token ids, positions and the 4D mask of the branch rows: each branch sees its own prompt (in
    the cache) and its own earlier tokens, at the positions that continue its prompt."""
    import torch

    rows = len(lengths)
    branch = torch.full((rows, length), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, length), dtype=torch.long)
    mask = torch.zeros((rows, 1, length, width + length), dtype=torch.bool)
    mask[:, 0, :, 0] = True  # padding queries see something (an all-masked row gives NaN); never read
    for i, b, at in spans:
        tokens = requests[i].continuation[:-1]
        for q in range(len(tokens)):
            branch[b, at + q] = tokens[q]
            positions[b, at + q] = lengths[b] + q
            mask[b, 0, at + q, : lengths[b]] = True
            mask[b, 0, at + q, width + at : width + at + q + 1] = True
    return branch, positions, mask


def can_branch(model: Any) -> bool:
    """Branches need a cache, explicit positions and full attention everywhere: a sliding window
    (Mistral v0.1, Phi-3, Gemma 3) would see more of the prompt through a custom mask than the full
    pass does, and its cache keeps only the window."""
    if not (cache_argument(model) and accepts(model, "position_ids")):
        return False
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    if getattr(config, "attention_chunk_size", None):
        return False
    kinds = getattr(config, "layer_types", None)
    if kinds:  # transformers 5 names each layer's attention (Qwen2 has a sliding_window it does not use)
        return all(kind == "full_attention" for kind in kinds)
    return not getattr(config, "sliding_window", None)


def cache_argument(model: Any) -> str | None:
    """The forward's name for the KV cache: `cache` from transformers 5.24 on, `past_key_values` before
    (5.24 still takes the old name, with a FutureWarning, until 5.40)."""
    return next((name for name in ("cache", "past_key_values") if accepts(model, name)), None)


def returned_cache(out: Any) -> Any:
    """The cache a forward returned, under either version's name (5.24 renamed the output field too)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def accepts(model: Any, argument: str) -> bool:
    """Whether the model's forward (under a PEFT wrapper) takes this argument."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters
