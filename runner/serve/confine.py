"""What the server may read on a client's word: the store (uploads included) and the folders given at
start (`runner serve --data-dir DIR`, repeatable). Every path a spec names (data, benchmarks, their id
files, perplexity text, a local model, the logging folder) must lead, links followed, into one of
them; the refusal is the same whether the outside path exists or not, so it tells a client nothing
about the server's disk. Also here: the store's absolute path, which clients are never shown."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.core.globwalk import has_glob, split_glob, within
from runner.spec.typed import Spec
from runner.spec.yamlpos import clip

Problem = tuple[tuple[Any, ...], str]  # (path in the spec document, message), as runner/spec/rules.py gives them
STORE = "<store>"


def roots_of(store: Path, data_dirs: Sequence[Path] = ()) -> list[Path]:
    """The real paths a spec may read: the store first (uploads are `<store>/files`), then the data dirs."""
    return [Path(os.path.realpath(p)) for p in (store, *data_dirs)]


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, every link followed, is one of `roots` or below one."""
    real = os.path.realpath(path)
    return any(within(real, str(r)) for r in roots)


def _sources(value: Any) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, list):
        return [((i,), v) for i, v in enumerate(value)]
    return [((), value)]


def named_paths(doc: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(where, path) of every path a spec document names, whatever else is wrong with it."""
    def get(node: Any, key: str) -> Any:
        return node.get(key) if isinstance(node, Mapping) else None

    found: list[tuple[tuple[Any, ...], Any]] = [(("model", "path"), get(get(doc, "model"), "path")),
                                                (("logging", "dir"), get(get(doc, "logging"), "dir")),
                                                (("eval", "perplexity", "path"), get(get(get(doc, "eval"), "perplexity"), "path"))]
    for role in ("train", "validation"):
        for index, src in _sources(get(get(doc, "data"), role)):
            found += [(("data", role, *index, key), get(src, key)) for key in ("path", "ids")]
    benchmarks = get(get(doc, "eval"), "benchmarks")
    for i, bench in enumerate(benchmarks if isinstance(benchmarks, list) else []):
        found += [(("eval", "benchmarks", i, key), get(bench, key)) for key in ("path", "ids")]
    return [(where, value) for where, value in found if isinstance(value, str) and value]


def shown_roots(roots: Sequence[Path], store: Path | None = None) -> str:
    return ", ".join(redact(str(r), store) if store is not None else str(r) for r in roots)


def confine_doc(doc: Any, base_dir: Path, roots: Sequence[Path], store: Path | None = None) -> list[Problem]:
    """A problem for each path of the spec document `doc` (relative ones from `base_dir`) that leads
    outside `roots`; a glob by the folder before its first wildcard (the walk stays below it)."""
    if not isinstance(doc, Mapping):
        return []
    problems: list[Problem] = []
    for where, raw in named_paths(doc):
        if "\x00" in raw:
            continue  # no path holds one: the spec's own checks refuse it
        full = base_dir / raw
        try:
            ok = inside(split_glob(full)[0] if has_glob(raw) else full, roots)
        except (OSError, ValueError):
            ok = False
        if not ok:
            problems.append((where, f"{clip(repr(raw))} is outside the folders this server reads "
                                    f"({shown_roots(roots, store)}): use a path below one of them, upload the "
                                    "file (POST /v1/files), or start the server with `--data-dir DIR`"))
    return problems


def confine_spec_paths(spec: Spec | Mapping[str, Any], roots: Sequence[Path], base_dir: Path | None = None,
                       store: Path | None = None) -> list[Problem]:
    """For a job: the problems of a typed spec (its own base_dir) or of a document (give `base_dir`)."""
    if isinstance(spec, Spec):
        return confine_doc(spec.as_dict(), Path(spec.base_dir), roots, store)
    return confine_doc(spec, base_dir if base_dir is not None else Path("."), roots, store)


def redact(text: str, store: Path | None) -> str:
    """`text` with the store's absolute path (as given and as resolved) shown as `<store>`."""
    if store is None:
        return text
    for form in sorted({str(store), os.path.realpath(store)}, key=len, reverse=True):
        if len(form) > 1:
            text = text.replace(form, STORE)
    return text


# Names of variables that hold secrets by convention (HF_TOKEN, RUNNER_API_KEY, WANDB_API_KEY, AWS_SECRET_...).
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def job_env(environ: Mapping[str, str], allow_push: bool) -> dict[str, str]:
    """The environment a job's `runner run` gets: the server's, less every secret (the server's key, Hub
    and tracker tokens). `HF_TOKEN` only where the operator started the server with `--allow-push`."""
    env = {name: value for name, value in environ.items() if not SECRET_NAME.search(name)}
    if allow_push and "HF_TOKEN" in environ:
        env["HF_TOKEN"] = environ["HF_TOKEN"]
    return env
