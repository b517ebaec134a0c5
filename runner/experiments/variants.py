"""Sweeps: one spec and a grid (`--set lora.r=8,16`) or a list of variants, expanded into ordinary specs.

A variant is the base spec's YAML with some fields set, written as a spec file of its own, so
everything `runner run` promises holds for it, and sharing between variants is nothing but equal
stage keys: a sweep over LoRA settings builds the model and the data once. Light: no torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner.core.errors import SpecError, StoreError
from runner.core.files import read_user_file
from runner.spec.fieldpaths import Path_, check_value, dotted, leaves, parse_path, read_value, set_fields, split_values
from runner.spec.schema import field_schema
from runner.spec.typed import MAX_SPEC_BYTES, Spec, load_spec, parse_spec
from runner.spec.yamlpos import clip, decode_spec, read_spec

# Short names in variant names; any other field is named by its last part.
SHORT = {"learning_rate": "lr", "epochs": "ep", "batch_size": "bs", "max_steps": "steps", "dropout": "do",
         "weight_decay": "wd", "warmup": "wu", "micro_batch_size": "mbs", "max_length": "len"}
# Each variant is checked, written and planned (tens of ms each) before anything runs, and each run
# trains: a grid past this is more often a typo than a plan. `runner sweep --max-variants N` raises it.
MAX_VARIANTS = 256


@dataclass(frozen=True)
class Setting:
    """One `--set PATH=V1,V2,...`: the field and each value as written and as read."""

    path: Path_
    values: tuple[tuple[str, Any], ...]  # (as written, as YAML reads it)


@dataclass(frozen=True)
class Variant:
    name: str  # the variant spec's `name`: <base name>-<label>
    label: str  # r8-lr1e-4
    overrides: tuple[tuple[Path_, Any], ...]
    origin: str = ""  # what made it, for messages: "--set lora.r=8" or "variants.yaml:3:3"


def parse_setting(text: str) -> Setting:
    """`lora.r=8,16,64` -> Setting; a wrong field or value is one line naming it."""
    where, sep, listed = text.partition("=")
    if not sep or not where.strip() or not listed.strip():
        raise SpecError([f"--set {clip(text, 60)}: write PATH=VALUE[,VALUE...], e.g. --set lora.r=8,16"])
    path = parse_path(where.strip(), f"--set {where.strip()}")
    values = []
    for raw in split_values(listed):
        value = read_value(raw, f"--set {dotted(path)}={clip(raw, 40)}")
        check_value(path, value, f"--set {dotted(path)}={clip(raw, 40)}")
        values.append((raw, value))
    if len({json.dumps(v, sort_keys=True) for _, v in values}) < len(values):
        raise SpecError([f"--set {dotted(path)}: a value is listed twice"])
    return Setting(path, tuple(values))


def expand(sets: list[str], variants: Path | None, base_name: str, limit: int | None = None) -> list[Variant]:
    """A grid's (`--set` texts) or a variants file's variants, counted before any is made (limit: MAX_VARIANTS)."""
    limit = MAX_VARIANTS if limit is None else limit
    if variants is not None:
        return read_variants(variants, base_name, limit)
    counts = [len(split_values(text.partition("=")[2])) for text in sets]
    _check_count(math.prod(counts), limit, " x ".join(str(n) for n in counts) + " values of --set")
    return grid([parse_setting(s) for s in sets], base_name)


def _check_count(count: int, limit: int, made: str) -> None:
    if count > limit:  # said as the count, not minutes spent making them
        raise SpecError([f"sweep: {made} make {count:,} variants, over the limit of {limit:,}: sweep fewer values, "
                         f"or raise the limit with --max-variants {min(count, 10**6)}"])


def grid(settings: list[Setting], base_name: str) -> list[Variant]:
    """Every combination of the settings' values, the first setting varying slowest. A mapping value
    (`lora={r: 4}`) sets its leaves, the base's other fields stay (a variant is named by the leaves)."""
    if len({s.path for s in settings}) < len(settings):
        raise SpecError(["--set: a field is set twice; list its values in one --set"])
    variants: list[Variant] = []
    names: dict[str, str] = {}
    for combo in itertools.product(*(s.values for s in settings)):
        overrides = [leaf for s, (_, value) in zip(settings, combo) for leaf in leaves(s.path, value)]
        label = "-".join(_label(s.path, raw, value) for s, (raw, value) in zip(settings, combo))
        if label in names:
            raise SpecError([f"--set: {names[label]} and {', '.join(raw for raw, _ in combo)} make the same variant name "
                             f"{label!r}; list values that differ"])
        names[label] = ", ".join(raw for raw, _ in combo)
        origin = " ".join(f"--set {dotted(s.path)}={raw}" for s, (raw, _) in zip(settings, combo))
        variants.append(Variant(f"{base_name}-{label}", label, tuple(overrides), origin))
    return variants


def _label(path: Path_, raw: str, value: Any) -> str:
    if isinstance(value, dict) and "properties" in (field_schema(path)[0] or {}):
        return "-".join(f"{short(p)}{_clean(v if isinstance(v, str) else json.dumps(v))}" for p, v in leaves(path, value))
    return f"{short(path)}{_clean(raw)}"


def short(path: Path_) -> str:
    return SHORT.get(str(path[-1]), str(path[-1]))


def _clean(raw: str, width: int = 24) -> str:
    """A value as part of a file name; a long one cut short with a digest of the whole, so two stay apart."""
    clean = re.sub(r"[^A-Za-z0-9.+-]+", "_", raw).strip("_")
    return clean if len(clean) <= width else f"{clean[:width - 8].rstrip('_')}-{hashlib.sha256(raw.encode()).hexdigest()[:7]}"


def read_variants(path: Path, base_name: str, limit: int = MAX_VARIANTS) -> list[Variant]:
    """A sweep file: a YAML list of `{name: r8, set: {lora.r: 8, train.learning_rate: 1e-4}}`."""
    raw = read_user_file(path, MAX_SPEC_BYTES, "variants file", "give --variants a YAML file")
    doc, positions = read_spec(decode_spec(raw, str(path)), str(path))
    if positions.problems:  # a key that is no string, say: where, and what
        _, line, column, problem = positions.problems[0]
        raise SpecError([f"{path}:{line}:{column}: {problem}"])
    if not isinstance(doc, list) or not doc:
        raise SpecError([f"{path}: a variants file is a YAML list of {{name: ..., set: {{PATH: VALUE}}}}"])
    _check_count(len(doc), limit, f"{path}'s {len(doc):,} entries")
    variants, names = [], set()
    for i, item in enumerate(doc):
        at = f"{path}:{positions.where((i,))}"
        if not (isinstance(item, dict) and set(item) == {"name", "set"} and isinstance(item["set"], dict)):
            raise SpecError([f"{at}: each variant is {{name: ..., set: {{PATH: VALUE}}}}"])
        if isinstance(item["name"], bool) or not isinstance(item["name"], (str, int, float)):
            raise SpecError([f"{at}: name must be a word such as r8 (it names the variant), "
                             f"got {clip(json.dumps(item['name']), 40)}"])
        label = _clean(str(item["name"]))
        if not label or label in names:
            raise SpecError([f"{at}: name {clip(str(item['name']), 40)!r} is empty or used twice"])
        names.add(label)
        overrides = []
        for where, value in item["set"].items():
            field = parse_path(str(where), f"{at}: {where}")
            check_value(field, value, f"{at}: {where}={clip(json.dumps(value), 40)}")
            overrides += leaves(field, value, f"{at}:")
        variants.append(Variant(f"{base_name}-{label}", label, tuple(overrides), at))
    return variants


def variant_doc(base: dict[str, Any], variant: Variant, spec_dir: Path) -> dict[str, Any]:
    """The base spec's document with the variant's fields set, its name, and its local paths absolute
    (the variant's file lives elsewhere; paths enter no key, so the keys stay those of the base)."""
    doc = set_fields(base, variant.overrides, f"variant {variant.label}")
    doc["name"] = variant.name
    out: dict[str, Any] = absolute_paths(doc, spec_dir)
    return out


def absolute_paths(doc: Any, spec_dir: Path, path: Path_ = ()) -> Any:
    """Every string the schema documents as relative to the spec file, made absolute."""
    if isinstance(doc, dict):
        return {k: absolute_paths(v, spec_dir, (*path, k)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [absolute_paths(v, spec_dir, (*path, i)) for i, v in enumerate(doc)]
    if isinstance(doc, str):
        found = field_schema(path)[0]
        if found is not None and "relative to the spec" in found.get("description", ""):
            return str((spec_dir / doc).resolve())
    return doc


@dataclass(frozen=True)
class Written:
    variant: Variant
    path: Path
    spec: Spec


def write_variants(spec_path: Path, variants: list[Variant], folder: Path, write: bool = True) -> list[Written]:
    """Check every variant (all problems at once), then write each as `<folder>/<name>.yaml` (`write`
    false: only where each would be, as `--plan` shows them, and nothing on disk)."""
    load_spec(spec_path)  # the base spec's own problems first, with its own positions
    base, _ = read_spec(decode_spec(spec_path.read_bytes(), str(spec_path)), str(spec_path))
    spec_dir = spec_path.resolve().parent
    texts, problems, names = [], [], set()
    for variant in variants:
        if file_stem(variant.name) in names:
            problems.append(f"variant {variant.label}: the name {clip(variant.name, 80)} is used twice; name each once")
        names.add(file_stem(variant.name))
        text = yaml.safe_dump(variant_doc(base, variant, spec_dir), sort_keys=False, allow_unicode=True)
        try:
            parse_spec(text, source=f"variant {variant.label}", base_dir=spec_dir)
        except SpecError as exc:
            # A position in the generated YAML helps nobody: say which variant, and what made it.
            made = f"variant {variant.label}: {variant.origin}" if variant.origin else f"variant {variant.label}"
            problems += [re.sub(rf"\(variant {re.escape(variant.label)}:\d+:\d+\)$", f"({made})", p) for p in exc.problems]
        texts.append(text)
    if problems:
        raise SpecError(problems)
    if not write:
        paths = [folder / f"{file_stem(v.name)}.yaml" for v in variants]
        return [Written(v, p, parse_spec(text, str(p), folder.resolve())) for v, p, text in zip(variants, paths, texts)]
    return _write(spec_path, variants, texts, folder)


def _write(spec_path: Path, variants: list[Variant], texts: list[str], folder: Path) -> list[Written]:
    out, head = [], f"# variant {{}} of {spec_path.resolve()} (written by runner sweep)\n"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for variant, text in zip(variants, texts):
            path = folder / f"{file_stem(variant.name)}.yaml"
            path.write_text(head.format(variant.label) + text, "utf-8")
            out.append(Written(variant, path, load_spec(path)))
    except OSError as exc:
        raise StoreError(f"sweep: cannot write the variant specs in {clip(str(folder), 120)} ({exc.strerror or exc}): "
                         "give a folder you can write (--write DIR, or --store DIR)") from None
    return out


def file_stem(name: str) -> str:
    """A variant's name as a file name in its folder: the spec's `name` may hold anything (a slash,
    `../`, 300 characters), and the file must land in the folder, under the file system's limit."""
    return _clean(name, 120).lstrip(".") or "variant"


def sweep_folder(store: Path, spec_path: Path, variants: list[Variant]) -> Path:
    """`<store>/sweeps/<spec>-<digest>`: the same sweep run again writes to the same place."""
    if store.exists() and not store.is_dir():
        raise StoreError(f"sweep: --store {clip(str(store), 120)} is not a folder: give the artifact store's folder")
    what = json.dumps([str(spec_path.resolve()), [[v.name, [[dotted(p), x] for p, x in v.overrides]] for v in variants]],
                      sort_keys=True, default=str)
    return store / "sweeps" / f"{file_stem(spec_path.stem)[:100]}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"
