"""The generation worker: one thread owns every loaded model and answers requests in micro-batches.

Adapters of one base share one loaded base (4-bit when the run trained 4-bit, as eval loads it),
wrapped in one PeftModel under internal adapter names. Each row of a batch names its own adapter
(PEFT's mixed-batch `adapter_names`, "__base__" for the base): `set_adapter` is global, and calling it
per request mixes adapters between users (peft #804, #1378), so it is never called here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.serve.logprobs import record_step
from runner.serve.prompts import prompt_ids
from runner.serve.rows import Ask, Row

log = logging.getLogger("runner.serve")
MAX_BATCH = 16
GATHER_S = 0.01  # how long the worker waits for company after the first request of a batch


@dataclass
class Loaded:
    model: Any
    tok: Any
    # adapter folder -> PEFT adapter name: two ids of one folder (names of one export) share its weights
    names: dict[str, str] = field(default_factory=dict)


class Engine:
    def __init__(self) -> None:
        self._queue: queue.Queue[Ask | None] = queue.Queue()
        self._bases: dict[str, Loaded] = {}
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._tokenizers: dict[str, Any] = {}  # model key -> the request threads' own tokenizer
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def submit(self, ask: Ask) -> None:
        self._queue.put(ask)

    def too_long(self, entry: Any, render: Any) -> str | None:
        """Why the prompt cannot be answered, counted in the request's thread before the worker sees it:
        longer than the model's context (a 200 kB prompt held the worker for half a minute)."""
        context = context_length(entry.model_dir)
        if context is None:
            return None
        with self._lock:
            if entry.model_key not in self._tokenizers:
                from runner.models.loading import load_tokenizer

                self._tokenizers[entry.model_key] = load_tokenizer(entry.model_dir)
            tok = self._tokenizers[entry.model_key]
        try:
            count = len(prompt_ids(render(tok), tok))
        except Exception:  # a chat template that refuses these messages: the worker says so (a 400)
            return None
        if count < context:
            return None
        return (f"the prompt is {count} tokens, longer than {entry.id}'s context of {context} tokens; "
                "send a shorter prompt (fewer or shorter messages)")

    def forget(self, entry: Any) -> None:
        """Drop an adapter from its loaded base (in the worker, between batches)."""
        self._queue.put(Ask(entry, lambda tok: "", 0, 0.0, 1.0, [], None, lambda kind, value: None))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            asks = [first]
            time.sleep(GATHER_S)
            while len(asks) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                asks.append(more)
            for group in _groups(asks):
                self._run_safely(group)

    def _run_safely(self, group: list[Ask]) -> None:
        try:
            if group[0].max_tokens == 0:
                return self._drop(group[0].entry)
            self._run(group)
        except Exception as exc:  # a failed batch answers its requests with an error; the worker goes on
            log.exception("generation failed")
            for ask in group:
                ask.emit("error", f"generation failed: {type(exc).__name__}")

    def _drop(self, entry: Any) -> None:
        loaded = self._bases.get(entry.model_key)
        if loaded is None or str(entry.adapter_dir) not in loaded.names:
            return
        name = loaded.names.pop(str(entry.adapter_dir))
        if loaded.names:
            loaded.model.delete_adapter(name)
        else:  # PEFT keeps no PeftModel without an adapter: back to the bare base, wrapped again when one comes
            loaded.model = loaded.model.unload()
            loaded.model.eval()

    def _load(self, entry: Any) -> Loaded:
        from runner.models.loading import load_base, load_tokenizer

        loaded = self._bases.get(entry.model_key)
        if loaded is None:
            log.info("loading base %s", entry.model_key[:12])
            model = load_base(entry.model_dir, entry.spec, entry.profile)
            model.eval()
            loaded = self._bases[entry.model_key] = Loaded(model, load_tokenizer(entry.model_dir))
        if entry.kind == "adapter" and str(entry.adapter_dir) not in loaded.names:
            self._add_adapter(loaded, entry)
        return loaded

    def _add_adapter(self, loaded: Loaded, entry: Any) -> None:
        from peft import PeftModel

        name = f"a{len(loaded.names)}_{int(time.time() * 1000) % 100000}"  # ours: ids may hold any character
        log.info("loading adapter %s", entry.id)
        if not isinstance(loaded.model, PeftModel):
            loaded.model = PeftModel.from_pretrained(loaded.model, str(entry.adapter_dir), adapter_name=name)
        else:
            loaded.model.load_adapter(str(entry.adapter_dir), adapter_name=name)
        loaded.model.eval()
        loaded.names[str(entry.adapter_dir)] = name

    def _run(self, group: list[Ask]) -> None:
        import torch

        from runner.models.loading import cpu_threads

        entry = group[0].entry
        loaded = self._load(entry)
        for ask in group[1:]:
            self._load(ask.entry)
        tok = loaded.tok
        group, prompts = _prepared(group, tok)
        if not group:
            return
        eos = _eos_ids(loaded.model, tok)
        rows = [Row(ask, len(ids), eos) for ask, ids in zip(group, prompts)]
        ids, mask = _left_padded(prompts, tok)
        streamer = _Streamer(rows, tok)
        kwargs = _sampling(group[0]) | {"pad_token_id": tok.pad_token_id, "attention_mask": mask,
                                        "max_new_tokens": max(a.max_tokens for a in group),
                                        "streamer": streamer, "stopping_criteria": _stopper(rows)}
        if any(a.logprobs is not None for a in group):  # the step's log-softmax, read by the streamer
            kwargs["logits_processor"] = _recorder(streamer)
        if loaded.names:  # a PeftModel: each row names its adapter
            kwargs["adapter_names"] = [loaded.names.get(str(a.entry.adapter_dir), "__base__") if a.entry.kind == "adapter"
                                       else "__base__" for a in group]
        if not group[0].greedy:
            torch.manual_seed(group[0].seed if group[0].seed is not None else time.time_ns() % 2**31)
        device = next(loaded.model.parameters()).device
        with cpu_threads(entry.profile.threads), torch.inference_mode():
            loaded.model.generate(input_ids=ids.to(device), **(kwargs | {"attention_mask": mask.to(device)}))
        decode = _decoder(tok)
        for row in rows:
            row.finish("length", decode)  # rows the streamer did not end reached max_new_tokens


def _prepared(group: list[Ask], tok: Any) -> tuple[list[Ask], list[list[int]]]:
    """Each request's prompt tokens; one that gives none is answered `invalid` (a 400) and left out, so
    a bad request never fails the others of its batch. The rest are told they started."""
    kept: list[Ask] = []
    prompts: list[list[int]] = []
    for ask in group:
        try:
            ids = prompt_ids(ask.render(tok), tok)
        except Exception as exc:  # a chat template that raises on these messages (roles must alternate, ...)
            ask.emit("invalid", f"the messages do not fit the model's chat template: {exc}"[:500])
            continue
        if not ids:
            ask.emit("invalid", "the prompt is empty once tokenized: send some text")
            continue
        ask.emit("start", None)
        kept.append(ask)
        prompts.append(ids)
    return kept, prompts


def context_length(model_dir: Path) -> int | None:
    """The context the base was built for (its config.json, as eval's max_length_of reads it), or None."""
    for path in (model_dir / "weights" / "config.json", model_dir / "config.json"):
        try:
            config = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        config = (config.get("text_config") or config) if isinstance(config, dict) else None
        if not isinstance(config, dict):
            continue
        for name in ("n_positions", "max_position_embeddings", "n_ctx"):
            if isinstance(config.get(name), int) and config[name] > 0:
                return int(config[name])
    return None


def _groups(asks: list[Ask]) -> list[list[Ask]]:
    """Greedy requests batched per base; a sampled one alone, so its seed alone decides its draw."""
    greedy: dict[str, list[Ask]] = {}
    out: list[list[Ask]] = []
    for ask in asks:
        if ask.max_tokens == 0 or not ask.greedy:
            out.append([ask])
        else:
            greedy.setdefault(ask.entry.model_key, []).append(ask)
    return list(greedy.values()) + out


def _sampling(ask: Ask) -> dict[str, Any]:
    if ask.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": ask.temperature, "top_p": ask.top_p}


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    return found | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def _left_padded(prompts: list[list[int]], tok: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, T), left-padded
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids, mask


def _decoder(tok: Any) -> Any:
    return lambda tokens: tok.decode(tokens, skip_special_tokens=True)


class _Streamer:
    """transformers calls `put` with the prompt first, then each step's new token per row: (B,)."""

    def __init__(self, rows: list[Row], tok: Any) -> None:
        self.rows, self.decode, self.prompt_seen = rows, _decoder(tok), False
        self.logprobs: Any = None  # (B, V) log-softmax of this step's logits, when a row asked for logprobs
        self.token_text = lambda ids: tok.decode(ids)  # a token as OpenAI shows it (special tokens too)

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        if self.logprobs is not None:
            record_step(self.rows, [int(t) for t in tokens], self.logprobs, self.token_text)
        for row, token in zip(self.rows, tokens):
            row.step(int(token), self.decode)

    def end(self) -> None:
        pass


def _recorder(streamer: _Streamer) -> Any:
    """A logits processor that changes nothing and keeps the step's log-softmax for the streamer.
    transformers runs a caller's processors after its own (none by default) and before temperature and
    top-p, so these are the model's own log-probabilities."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Record(LogitsProcessor):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            streamer.logprobs = torch.log_softmax(scores.float(), dim=-1)
            return scores

    return LogitsProcessorList([Record()])


def _stopper(rows: list[Row]) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Done(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.tensor([row.done for row in rows], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Done()])
