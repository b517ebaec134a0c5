"""The branch path of scoring: a question whose choices need rows of their own runs its prompt once,
and every choice's later tokens run as branches off the prompt's key/value cache. The same numbers
as full rows to float rounding, at a fraction of the work. Also what a model's forward accepts,
which decides whether the path (and the output head's `logits_to_keep`) can be used.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.stages.eval.scoring import Request, Row


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
