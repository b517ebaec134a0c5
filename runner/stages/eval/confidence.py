"""The confidence signals of each answer, written into its prediction row as
`signals[label][name] = {"confidence": c, "correct": bool}` (runner/scoring/selective.py scores
whatever a row carries, so a new signal only has to be written here or by the code that makes it).

- `loglik`: the softmax over the choices' summed log-likelihoods (the scores the prediction takes its
  argmax of), the probability of the picked choice; correct when the log-likelihood pick is.
- `token_prob`: exp of the mean log-probability of the generated answer's tokens, the text the model
  wrote tokenized again and scored after the very prompt it was generated from (one forward pass, the
  choices' scorer); correct when the answer read off the text is. An empty answer has confidence 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Pair = dict[str, Any]  # {"confidence": float, "correct": bool}


def loglik_signals(items: Sequence[Any], requests: Sequence[Any], logliks: dict[str, list[float]],
                   scored: dict[str, list[int]]) -> dict[str, list[Pair]]:
    """Per model, per item: the picked choice's probability (requests are in item, choice order)."""
    from runner.scoring.calibration import softmax

    out: dict[str, list[Pair]] = {}
    for label, scores in logliks.items():
        per_item: list[list[float]] = [[] for _ in items]
        for r, ll in zip(requests, scores):
            per_item[r.item].append(ll)
        out[label] = [{"confidence": round(max(softmax(lls)), 6), "correct": scored[label][i] == items[i].answer}
                      for i, lls in enumerate(per_item)]
    return out


def token_signals(model: Any, tok: Any, items: Sequence[Any], requests: Sequence[Any], written: dict[str, list[str]],
                  picked: dict[str, list[int | None]], batch_size: int,
                  adapter_off: Callable[[Any, bool], Any]) -> dict[str, list[Pair]]:
    """Per model, per item: the generated answer's geometric-mean token probability."""
    from runner.scoring.loglik import Request, max_length_of, score

    contexts: dict[int, tuple[int, ...]] = {}
    for r in requests:
        contexts.setdefault(r.item, r.context)
    out: dict[str, list[Pair]] = {}
    for label, texts in written.items():
        answers = [tuple(tok(text.rstrip(), add_special_tokens=False).input_ids) for text in texts]
        asks = [Request(i, 0, contexts[i], ids) for i, ids in enumerate(answers) if ids]
        with adapter_off(model, label == "base"):
            sums = score(model, asks, batch_size, tok.pad_token_id, max_length_of(model, tok)) if asks else []
        mean = {a.item: s / len(a.continuation) for a, s in zip(asks, sums)}
        out[label] = [{"confidence": round(math.exp(mean[i]), 6) if i in mean else 0.0,
                       "correct": picked[label][i] == it.answer} for i, it in enumerate(items)]
    return out


def merged(*by_signal: tuple[str, dict[str, list[Pair]]]) -> dict[str, list[dict[str, Pair]]]:
    """(name, {label: [pair per item]}) ... -> {label: [{name: pair} per item]}."""
    out: dict[str, list[dict[str, Pair]]] = {}
    for name, per_label in by_signal:
        for label, pairs in per_label.items():
            rows = out.setdefault(label, [{} for _ in pairs])
            for row, pair in zip(rows, pairs):
                row[name] = pair
    return out
