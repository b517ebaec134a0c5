"""Cross-field rules: what one schema property cannot express (a local model needs a path, and that
path a model folder; a file the spec names must exist; a pattern must compile). Each problem is a
(path in the document, message) pair, placed at its line by the caller.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runner.yamlpos import clip


def cross_field_problems(doc: dict[str, Any], base_dir: Path) -> list[tuple[tuple[Any, ...], str]]:
    """Rules one schema property cannot express. Returns (path, message) pairs."""
    found: list[tuple[tuple[Any, ...], str]] = []
    model = doc["model"]
    if model["source"] == "hub" and not model["id"]:
        found.append((("model", "id"), "required when source is hub, e.g. meta-llama/Llama-3.2-3B-Instruct"))
    if model["source"] == "local":
        found += _model_folder(model["path"], base_dir)
    sources: list[tuple[tuple[Any, ...], Any]] = [(("data", "train"), doc["data"]["train"])]
    if doc["data"]["validation"] is not None:
        sources.append((("data", "validation"), doc["data"]["validation"]))
    sources += [(("eval", "benchmarks", i), b) for i, b in enumerate(doc["eval"]["benchmarks"])]
    for where, src in sources:
        if (src["path"] is None) == (src["hub"] is None):
            found.append((where, "give exactly one of `path` (a local file) or `hub` (a dataset id)"))
        elif src["path"] is not None:
            found += _local_path(src["path"], where + ("path",), base_dir, want_dir=False)
        if src.get("ids") is not None:
            found += _local_path(src["ids"], where + ("ids",), base_dir, want_dir=False)
    names = [b["name"] for b in doc["eval"]["benchmarks"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            found.append((("eval", "benchmarks", i, "name"), f"duplicate benchmark name {name!r}"))
    for i, rule in enumerate(doc["eval"]["safety"]["rules"]):
        for part in ("pattern", "unless"):
            found += _regex(rule[part], ("eval", "safety", "rules", i, part))
    train = doc["train"]
    micro = train["micro_batch_size"]
    if micro != "auto" and train["batch_size"] % micro:
        found.append((("train", "micro_batch_size"),
                      f"must divide train.batch_size ({train['batch_size']}), got {micro}"))
    if train["early_stopping"] is not None and doc["data"]["validation"] is None and not doc["data"]["validation_fraction"]:
        found.append((("train", "early_stopping"), "needs validation data: set data.validation or a "
                      "data.validation_fraction above 0, or remove early_stopping"))
    init = model["init"]
    if model["source"] == "init" and init["num_heads"] % init["num_kv_heads"]:
        found.append((("model", "init", "num_kv_heads"), "must divide model.init.num_heads"))
    if model["source"] == "init" and init["hidden_size"] % init["num_heads"]:
        found.append((("model", "init", "num_heads"), "must divide model.init.hidden_size"))
    return found


def _regex(pattern: str | None, where: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    if pattern is None:
        return []
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:  # deep groups recurse; huge repeats overflow
        return [(where, f"not a valid regular expression: {clip(str(exc) or type(exc).__name__, 120)}")]
    return []


WEIGHT_GLOBS = ("*.safetensors", "*.bin")  # what from_pretrained loads


def _model_folder(path: str | None, base_dir: Path) -> list[tuple[tuple[Any, ...], str]]:
    """A local model is a folder with config.json and weights at its top. Checked here, with a few
    stats, so that `path: /` is refused before the model stage hashes every file under it."""
    where = ("model", "path")
    if not path:
        return [(where, "required when source is local: a folder with config.json, the tokenizer and the weights")]
    missing = _local_path(path, where, base_dir, want_dir=True)
    if missing:
        return missing
    full = (base_dir / path).resolve()
    if not (full / "config.json").is_file():
        return [(where, f"{clip(repr(path))} is not a model folder: no config.json in {clip(str(full))}")]
    if not any(next(full.glob(pattern), None) for pattern in WEIGHT_GLOBS):
        return [(where, f"{clip(repr(path))} is not a model folder: no weights (*.safetensors or *.bin) "
                        f"in {clip(str(full))}")]
    return []


def _local_path(path: str, where: tuple[Any, ...], base_dir: Path, want_dir: bool) -> list[tuple[tuple[Any, ...], str]]:
    full = (base_dir / path).resolve()
    try:
        ok = full.is_dir() if want_dir else full.is_file()
    except OSError as exc:  # a name too long for the file system is not ignored by pathlib
        return [(where, f"cannot use {clip(repr(path))}: {exc.strerror or exc}")]
    if ok:
        return []
    kind = "folder" if want_dir else "file"
    return [(where, f"no such {kind} {clip(repr(path))} (resolved to {clip(str(full))}; "
                    "paths are relative to the spec file)")]
