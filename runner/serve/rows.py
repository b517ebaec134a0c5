"""One request's progress through a batch: its tokens, the text it may show so far, why it ended.

The text shown is what eval's `decode(...).strip()` gives, released piece by piece: leading space is
dropped, trailing space and a possible start of a stop string are held back until what follows is
known, so the joined stream equals the whole answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ("start", None) | ("delta", text) | ("done", (finish_reason, usage, text)) | ("invalid", message): the
# request's own fault, a 400 | ("error", message): the server's, a 500
Emit = Callable[[str, Any], None]
# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): logits divided by 1e-300 overflow to inf,
# and sampling from them fails
GREEDY_BELOW = 1e-5


@dataclass
class Ask:
    """A generation request as the worker sees it."""

    entry: Any  # runner.serve.registry.Entry
    render: Callable[[Any], str]  # tokenizer -> prompt text
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    seed: int | None
    emit: Emit
    logprobs: int | None = None  # None: not asked; k: each token's log-probability and the k likeliest
    # (token text, log-probability, [(text, log-probability) of the k likeliest]) per answer token, EOS not
    # included; filled by the worker before it emits "done"
    picked: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class Row:
    ask: Ask
    prompt_tokens: int
    eos: set[int]
    tokens: list[int] = field(default_factory=list)
    shown: str = ""
    done: bool = False

    def step(self, token: int, decode: Callable[[list[int]], str]) -> None:
        if self.done:
            return
        self.tokens.append(token)
        if token in self.eos:
            return self.finish("stop", decode)
        text = decode(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.ask.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self.finish("stop", decode, text[:cut])
        if len(self.tokens) >= self.ask.max_tokens:
            return self.finish("length", decode)
        self._show(self._safe(text))

    def _safe(self, text: str) -> str:
        safe = text.lstrip().rstrip()
        if safe.endswith("\ufffd"):  # half a multi-byte character
            return self.shown
        hold = max((k for s in self.ask.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
        return safe[: len(safe) - hold]

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.ask.emit("delta", text[len(self.shown):])
            self.shown = text

    def finish(self, reason: str, decode: Callable[[list[int]], str], text: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        final = (decode(self.tokens) if text is None else text).strip()
        self._show(final)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.tokens),
                 "total_tokens": self.prompt_tokens + len(self.tokens)}
        self.ask.emit("done", (reason, usage, final))
