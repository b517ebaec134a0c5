"""Cross-field rules: what one schema property cannot express (a local model needs a path, and that
path a model folder; a file the spec names must exist; a pattern must compile). Each problem is a
(path in the document, message) pair, placed at its line by the caller.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from runner.core.globwalk import has_glob
from runner.spec.methods import lora_problems, method_problems
from runner.spec.rlrules import rl_problems
from runner.spec.yamlpos import clip


def cross_field_problems(doc: dict[str, Any], base_dir: Path) -> list[tuple[tuple[Any, ...], str]]:
    """Rules one schema property cannot express. Returns (path, message) pairs."""
    return (_model_problems(doc["model"], base_dir, doc["data"]["chat_template"]) + _source_problems(doc, base_dir)
            + _eval_problems(doc, base_dir) + _train_problems(doc) + _export_problems(doc) + method_problems(doc)
            + lora_problems(doc) + rl_problems(doc, base_dir))  # runner.spec.methods, runner.spec.rlrules


Problems = list[tuple[tuple[Any, ...], str]]


def _model_problems(model: dict[str, Any], base_dir: Path, preset: str | None) -> Problems:
    found: Problems = []
    if model["chat_template"] is not None and preset is not None:
        found.append((("data", "chat_template"), "give model.chat_template (a Jinja template) or data.chat_template "
                                                  "(a preset), not both"))
    if model["source"] == "hub" and not model["id"]:
        found.append((("model", "id"), "required when source is hub, e.g. meta-llama/Llama-3.2-3B-Instruct"))
    if model["source"] == "local":
        found += _model_folder(model["path"], base_dir)
    init = model["init"]
    if model["source"] == "init" and init["num_heads"] % init["num_kv_heads"]:
        found.append((("model", "init", "num_kv_heads"), "must divide model.init.num_heads"))
    if model["source"] == "init" and init["hidden_size"] % init["num_heads"]:
        found.append((("model", "init", "num_heads"), "must divide model.init.hidden_size"))
    return found


def _source_problems(doc: dict[str, Any], base_dir: Path) -> Problems:
    """Every training, validation and benchmark source: one of path or hub, and its files there."""
    sources = data_sources(doc["data"])
    found = _mixture_problems(sources)
    sources += [(("eval", "benchmarks", i), b) for i, b in enumerate(doc["eval"]["benchmarks"])]
    for where, src in sources:
        text = (src.get("format") or doc["data"]["format"]) == "text" and where[0] == "data"
        if (src["path"] is None) == (src["hub"] is None):
            found.append((where, "give exactly one of `path` (a local file) or `hub` (a dataset id)"))
        elif src["path"] is not None and text and (has_glob(src["path"]) or (base_dir / src["path"]).is_dir()):
            found += _documents(src["path"], where + ("path",), base_dir)
        elif src["path"] is not None:
            found += _local_path(src["path"], where + ("path",), base_dir, want_dir=False)
        if src.get("ids") is not None:
            found += _local_path(src["ids"], where + ("ids",), base_dir, want_dir=False)
    return found


def _eval_problems(doc: dict[str, Any], base_dir: Path) -> Problems:
    found: Problems = []
    for i, b in enumerate(doc["eval"]["benchmarks"]):
        if b["format"] in ("qa", "alpaca") and b.get("ids") is not None:
            found.append((("eval", "benchmarks", i, "ids"), "a fold of ids is for multiple-choice formats; "
                          "give a qa/alpaca benchmark a file of its held-out rows instead"))
    perplexity = doc["eval"]["perplexity"]
    if perplexity is not None:
        found += _local_path(perplexity["path"], ("eval", "perplexity", "path"), base_dir, want_dir=False)
    rule = doc["eval"]["abstain"]
    if rule is not None and rule["signal"] != "loglik" and not doc["eval"]["generative"]["enabled"]:
        found.append((("eval", "abstain", "signal"), f"{rule['signal']!r} is a signal of generated answers: set "
                      "`eval.generative.enabled: true`, or abstain on `loglik`"))
    names = [b["name"] for b in doc["eval"]["benchmarks"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            found.append((("eval", "benchmarks", i, "name"), f"duplicate benchmark name {name!r}"))
    for i, rule in enumerate(doc["eval"]["safety"]["rules"]):
        for part in ("pattern", "unless"):
            found += _regex(rule[part], ("eval", "safety", "rules", i, part))
    return found + _generative_problems(doc["eval"]["generative"])


def _generative_problems(gen: dict[str, Any]) -> Problems:
    found: Problems = []
    if gen["samples"] > 1 and gen["temperature"] == 0:
        found.append((("eval", "generative", "samples"), f"{gen['samples']} samples of greedy decoding are one answer "
                      "repeated: set eval.generative.temperature > 0 (0.7 is usual) or samples: 1"))
    steps = gen["filters"]
    for i, step in enumerate(steps):
        if step["function"] == "take_first" and i != len(steps) - 1:
            found.append((("eval", "generative", "filters", i, "function"), "take_first chooses among samples: "
                          "make it the last step"))
        for j, pattern in enumerate([step["regex_pattern"], *step["regexes_to_ignore"]]):
            where = ("regex_pattern",) if j == 0 else ("regexes_to_ignore", j - 1)
            found += _regex(pattern, ("eval", "generative", "filters", i, *where))
    return found


def _train_problems(doc: dict[str, Any]) -> Problems:
    found: Problems = []
    train = doc["train"]
    micro = train["micro_batch_size"]
    if micro != "auto" and train["batch_size"] % micro:
        found.append((("train", "micro_batch_size"),
                      f"must divide train.batch_size ({train['batch_size']}), got {micro}"))
    if train["early_stopping"] is not None and doc["data"]["validation"] is None and not doc["data"]["validation_fraction"]:
        found.append((("train", "early_stopping"), "needs validation data: set data.validation or a "
                      "data.validation_fraction above 0, or remove early_stopping"))
    return found


def _export_problems(doc: dict[str, Any]) -> Problems:
    found: Problems = []
    export = doc["export"]
    if export["gguf"] is not None and not export["merged"]:
        found.append((("export", "gguf"), "needs `export.merged: true`: the GGUF is converted from the merged model"))
    if export["gguf"] is not None and not doc["eval"]["benchmarks"]:
        found.append((("export", "gguf"), "needs a benchmark under eval.benchmarks: the parity gate scores each "
                                          "GGUF on its questions"))
    if export["push"] is not None and not export["push"]["repo_id"]:
        found.append((("export", "push", "repo_id"), "required: the Hub repository to push to, e.g. you/medqa-lora"))
    return found


def data_sources(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """(path in the document, source) of every training and validation source, in both forms."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    for role in ("train", "validation"):
        value = data[role]
        if isinstance(value, list):
            out += [(("data", role, i), src) for i, src in enumerate(value)]
        elif value is not None:
            out.append((("data", role), value))
    return out


def _mixture_problems(sources: list[tuple[tuple[Any, ...], Any]]) -> Problems:
    """A mixture's sources: `weight` or `rows` (validation sources are read whole), distinct names."""
    found: Problems = []
    names: set[tuple[str, str]] = set()
    for where, src in sources:
        if len(where) == 2:
            continue  # the one-source form has neither names nor shares
        if src["weight"] is not None and src["rows"] is not None:
            found.append((where, "give `weight` (a share of each epoch) or `rows` (a fixed count), not both"))
        if where[1] == "validation" and (src["weight"] is not None or src["rows"] is not None):
            found.append((where, "validation sources are read whole: remove `weight` and `rows`"))
        name = src["name"] or source_name(src["path"], src["hub"])
        if (where[1], name) in names:
            found.append((where + ("name",), f"a second source named {name!r} in data.{where[1]}; give each a distinct `name`"))
        names.add((where[1], name))
    return found


def source_name(path: str | None, hub: str | None) -> str:
    """A mixture source's name when the spec gives none: the file's stem, or the dataset id's last part."""
    if path is not None:
        stem = Path(path.rstrip("/*")).stem or "source"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    return (hub or "source").rsplit("/", 1)[-1]


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


TEXT_SUFFIXES = (".txt", ".md")  # a text source's folder gives its files of these kinds


def _documents(path: str, where: tuple[Any, ...], base_dir: Path) -> Problems:
    """A text source's glob or folder must give at least one file (an absolute pattern too: a sweep
    or a job writes the spec's paths absolute)."""
    from runner.core.globwalk import GlobTooBig

    try:
        if document_files(base_dir, path):
            return []
    except GlobTooBig as exc:
        return [(where, str(exc))]
    what = "no file matches" if has_glob(path) else f"no {'/'.join(TEXT_SUFFIXES)} file in the folder"
    return [(where, f"{what} {clip(repr(path))} (relative to the spec file)")]


def document_files(base_dir: Path, path: str) -> list[Path]:
    """A text source's files, sorted: what its glob matches (resolved), or its folder's .txt/.md files.
    Both walks are bounded (globwalk.py) and never follow a link out of their root."""
    from runner.core.globwalk import Walk, split_glob

    full = base_dir / path
    if has_glob(path):
        root, parts = split_glob(full)
        return sorted({Path(os.path.realpath(p)) for p in Walk(root).match(root, parts) if p.is_file()})
    root = Path(os.path.realpath(full))
    return sorted(p for p in Walk(root).files(root) if p.suffix.lower() in TEXT_SUFFIXES)


def _local_path(path: str, where: tuple[Any, ...], base_dir: Path, want_dir: bool) -> list[tuple[tuple[Any, ...], str]]:
    try:
        full = (base_dir / path).resolve()  # a link to itself: RuntimeError("Symlink loop") before Python 3.13
        ok = full.is_dir() if want_dir else full.is_file()
    except OSError as exc:  # a name too long for the file system is not ignored by pathlib
        return [(where, f"cannot use {clip(repr(path))}: {exc.strerror or exc}")]
    except RuntimeError:
        return [(where, f"cannot use {clip(repr(path))}: a symbolic link loop; point it at a real folder")]
    if ok:
        return []
    kind = "folder" if want_dir else "file"
    return [(where, f"no such {kind} {clip(repr(path))} (resolved to {clip(str(full))}; "
                    "paths are relative to the spec file)")]
