"""Every spec field is a decision: named in a stage's key slice, or listed here as entering some other
way (a file's digest, the profile) or as deliberately unkeyed, with the reason.

Adding a field to a spec dataclass fails the first test until it is placed in exactly one of the
lists below; the other two check that the lists tell the truth about the slices.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from runner.core.keys import canonical_json
from runner.spec.typed import Spec, parse_spec
from runner.stages import all_stages

# Named in a stage's spec_slice (some only when what reads them is on: generative.*, the queries'
# generation and safety, the contamination check, a Hub model's id, eval_steps under early stopping).
SLICED: dict[str, set[str]] = {
    "Spec": {"model", "data", "seed", "lora", "train", "export", "eval"},
    "Model": {"source", "id", "revision", "init", "quantization", "double_quant", "trust_remote_code",
              "chat_template"},
    "ModelInit": {"vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "max_position_embeddings", "initializer_range"},
    "Data": {"train", "validation", "validation_fraction", "format", "fields", "template", "chat_template",
             "system_prompt", "max_length", "max_rows", "replacement",
             "reasoning"},  # only where a source is in the reasoning format
    "Reasoning": {"think_start", "think_end", "too_long"},
    "Source": {"hub", "config", "split", "revision", "name", "format", "fields", "weight", "rows"},
    "Fields": {"question", "options", "answer_key", "answer_key_type", "context", "answer", "instruction", "input",
               "output", "messages", "text", "prompt", "chosen", "rejected", "completion", "label",
               "trace"},  # trace: only for a reasoning source
    "Lora": {"r", "alpha", "dropout", "target_modules", "use_dora", "use_rslora", "modules_to_save", "init"},
    "Train": {"epochs", "max_steps", "learning_rate", "batch_size", "micro_batch_size", "scheduler", "warmup",
              "weight_decay", "max_grad_norm", "optimizer", "gradient_checkpointing", "packing", "eval_steps",
              "early_stopping", "method", "init_adapter", "grpo", "dpo", "orpo", "kto"},
    "EarlyStopping": {"patience", "min_delta"},
    "Grpo": {"num_generations", "max_completion_length", "temperature", "beta", "vllm", "rewards"},
    "Reward": {"name", "weight"},
    "Dpo": {"beta", "loss_type", "label_smoothing"},  # only under their method (train.method_slice)
    "Orpo": {"beta"},
    "Kto": {"beta", "desirable_weight", "undesirable_weight"},
    "Export": {"merged", "merged_dtype", "gguf", "parity"},
    "Gguf": {"types"},
    "Parity": {"samples", "on_fail", "unquantized", "q8", "q4"},  # on_fail: a failed gate keeps no output
    "UnquantizedTolerance": {"min_agreement", "max_logprob_diff"},
    "Q8Tolerance": {"min_agreement", "max_logprob_diff"},
    "Q4Tolerance": {"min_agreement", "max_logprob_diff"},
    "Eval": {"benchmarks", "compare_base", "batch_size", "chat_template", "queries", "generation", "safety",
             "contamination", "generative", "perplexity", "abstain"},
    "Benchmark": {"name", "format", "hub", "config", "split", "revision", "fields", "limit"},
    "Generation": {"max_new_tokens", "temperature", "top_p"},
    "Safety": {"builtin", "rules"},
    "SafetyRule": {"name", "pattern", "unless"},
    "Contamination": {"check", "similarity"},
    "Generative": {"enabled", "max_new_tokens", "samples", "temperature", "top_p", "thinking_budget", "think_end",
                   "stop", "extract", "filters"},
    "FilterStep": {"function", "regex_pattern", "group_select", "fallback", "ignore_case", "ignore_punctuation",
                   "regexes_to_ignore"},
    "Perplexity": {"field", "max_texts"},
    "Abstain": {"signal", "threshold"},
}
# Enter a key through the digests of the files they name (local_files), never as a path: moving a
# file reruns nothing. (A slice may say that a local file is used, as data's `local` does.)
BY_FILE: dict[str, set[str]] = {
    "Spec": {"base_dir"},  # where relative paths resolve from
    "Model": {"path"},
    "Source": {"path"},
    "Benchmark": {"path", "ids"},
    "Perplexity": {"path"},  # the held-out corpus
    "InitAdapter": {"spec", "path"},  # the starting adapter's files (a spec's: its train artifact's)
    "Reward": {"path"},  # a user-written reward's file
}
# Enter through the resolved profile (`Profile.key_fields`), which the stages that read it key on.
BY_PROFILE: dict[str, set[str]] = {
    "Spec": {"hardware"},
    "Hardware": {"device", "dtype", "on_unsupported", "processes", "distributed"},
}
# In no key, on purpose.
UNKEYED: dict[str, dict[str, str]] = {
    "Spec": {"name": "cosmetic", "description": "cosmetic",
             "logging": "trackers are a side effect: what is logged where changes no artifact"},
    "Logging": {"report_to": "a side effect: which trackers also get the metrics",
                "dir": "a side effect: where the trackers' local files go"},
    "Train": {"save_steps": "how often a checkpoint is written does not change the weights",
              "logging_steps": "how often the loss is logged does not change the weights"},
    "Contamination": {"action": "a gate before training (report or stop), not an output"},
    "Grpo": {"trust_reward_code": "a permission to run a reward's file, whose digest is in the key"},
    "Export": {"push": "a side effect after the run (on record with its commit), not an output"},
    "Push": {"repo_id": "where the push goes: a side effect", "private": "a side effect",
             "revision": "a side effect"},
}


def spec_classes(cls: Any = Spec, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every dataclass the spec is built of, by name (through optional fields and tuples)."""
    found = {} if found is None else found
    found[cls.__name__] = cls
    for hint in typing.get_type_hints(cls).values():
        for inner in _inner_types(hint):
            if dataclasses.is_dataclass(inner) and inner.__name__ not in found:
                spec_classes(inner, found)
    return found


def _inner_types(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    return [hint] + [t for a in args for t in _inner_types(a)] if args else [hint]


def test_every_spec_field_is_keyed_or_said_to_be_unkeyed() -> None:
    lists = {"SLICED": SLICED, "BY_FILE": BY_FILE, "BY_PROFILE": BY_PROFILE, "UNKEYED": UNKEYED}
    problems = []
    for name, cls in spec_classes().items():
        for f in dataclasses.fields(cls):
            placed = [where for where, fields in lists.items() if f.name in fields.get(name, ())]
            if len(placed) != 1:
                problems.append(f"{name}.{f.name}: in {placed or 'no list'}; name it in a stage's spec_slice and "
                                "in SLICED, or list it as entering by file, by profile or not at all (UNKEYED)")
    listed = {(cls, field) for fields in lists.values() for cls, names in fields.items() for field in names}
    known = {(name, f.name) for name, cls in spec_classes().items() for f in dataclasses.fields(cls)}
    problems += [f"{cls}.{field}: listed but not a spec field" for cls, field in sorted(listed - known)]
    assert not problems, "\n".join(problems)


# Everything a slice can read switched on, so each SLICED field has a slice that shows it.
FULL = """
model: {source: init}
data:
  train: {path: train.jsonl}
  validation: {hub: someone/val, config: c, revision: r1}
  template: plain
train: {early_stopping: {patience: 2}}
eval:
  benchmarks: [{name: local, path: test.jsonl, ids: ids.txt}, {name: hub, hub: someone/bench}]
  queries: ["what?"]
  generation: {temperature: 0.5}
  safety: {rules: [{name: r, pattern: p}]}
  generative: {enabled: true, filters: [{function: regex, regex_pattern: "x"}]}
  perplexity: {path: corpus.txt}
  abstain: {signal: token_prob, threshold: 0.6}
export: {merged: true, gguf: {types: [f16]}, push: {repo_id: someone/adapter}}
"""
MIXTURE = """
model: {source: init}
data:
  train:
    - {path: train.jsonl, weight: 2}
    - {path: notes.txt, format: text, rows: 3, fields: {text: body}}
    - {name: hubqa, hub: someone/qa, format: qa}
    - {name: thoughts, path: train.jsonl, format: reasoning, fields: {trace: question}}
  validation: [{name: v, path: train.jsonl}]
eval: {benchmarks: [{name: local, path: test.jsonl}]}
"""
GRPO = """
model: {source: init}
data: {train: {path: train.jsonl}}
train:
  method: grpo
  init_adapter: {path: adapter}
  grpo: {trust_reward_code: true, rewards: [{name: answer_correct}, {name: mine, path: mine.py}]}
"""
# The preference methods: their sections, and the fields of their formats, are read only under them.
METHODS = """
model: {source: init}
data: {train: {path: train.jsonl}, format: %s}
train: {method: %s}
"""
ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


@pytest.fixture
def specs(tmp_path: Path) -> list[Spec]:
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text(ROW)
    (tmp_path / "ids.txt").write_text("1\n")
    (tmp_path / "corpus.txt").write_text("some held-out text\n")
    (tmp_path / "notes.txt").write_text("A note.\n")
    full = parse_spec(FULL, base_dir=tmp_path)
    hub = dataclasses.replace(full, model=dataclasses.replace(full.model, source="hub", id="someone/model"))
    mixture = parse_spec(MIXTURE, base_dir=tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "mine.py").write_text("def mine(completions, **kw):\n    return [0.0] * len(completions)\n")
    grpo = parse_spec(GRPO, base_dir=tmp_path)
    methods = [parse_spec(METHODS % pair, base_dir=tmp_path) for pair in
               (("preference", "dpo"), ("preference", "orpo"), ("kto", "kto"))]
    # A Hub model's slice reads id, revision and trust_remote_code; an init one its shape; a mixture
    # its sources' names, formats, fields and shares, the sampling and the epochs.
    return [full, hub, mixture, grpo, *methods]


def slices(spec: Spec) -> str:
    return canonical_json({stage.name: stage.spec_slice(spec) for stage in all_stages()})


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str, Any]]:
    """(path, class name, field) of every field of every dataclass in the spec, nested ones included."""
    out = []
    for f in dataclasses.fields(value):
        child = getattr(value, f.name)
        out.append((path + (f.name,), type(value).__name__, f))
        if dataclasses.is_dataclass(child):
            out += leaves(child, path + (f.name,))
        elif isinstance(child, tuple):
            out += [leaf for i, c in enumerate(child) if dataclasses.is_dataclass(c) for leaf in leaves(c, path + (f.name, i))]
    return out


def other_value(value: Any, hint: Any) -> Any:
    """A different value of the field's type (slices do not validate, so any value will do)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return value + ("other",)
    kinds = [t for t in _inner_types(hint) if t in (str, int, float)]
    if not kinds:  # an optional Literal (a mixture source's format): another of its values
        return next(a for t in _inner_types(hint) if typing.get_origin(t) is typing.Literal for a in typing.get_args(t))
    return {str: "other", int: 3, float: 0.5}[kinds[0]]


def replaced(spec: Any, path: tuple[Any, ...], value: Any) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(spec, tuple):
        return spec[:head] + (replaced(spec[head], rest, value),) + spec[head + 1:]
    return dataclasses.replace(spec, **{head: replaced(getattr(spec, head), rest, value) if rest else value})


def changes(specs: list[Spec]) -> dict[tuple[str, str], bool]:
    """For each (class, field): does changing it change some stage's slice, in some spec and place?"""
    seen: dict[tuple[str, str], bool] = {}
    for spec in specs:
        before = slices(spec)
        for path, cls, f in leaves(spec):
            value = _get(spec, path)
            hint = typing.get_type_hints(type(_get(spec, path[:-1])))[f.name]
            if _is_section(hint):
                continue  # its own fields are tried
            after = slices(replaced(spec, path, other_value(value, hint)))
            seen[cls, f.name] = seen.get((cls, f.name), False) or after != before
    return seen


def _get(spec: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        spec = spec[step] if isinstance(spec, tuple) else getattr(spec, step)
    return spec


def test_each_sliced_field_changes_a_slice_and_no_other_field_does(specs: list[Spec]) -> None:
    seen = changes(specs)
    silent = sorted(f"{c}.{f}" for (c, f), moved in seen.items() if not moved and f in SLICED.get(c, ()))
    # A slice may say whether a file is used (data's `local`, a benchmark's `ids`), so BY_FILE may move it.
    loud = sorted(f"{c}.{f}" for (c, f), moved in seen.items()
                  if moved and f not in SLICED.get(c, ()) and f not in BY_FILE.get(c, ()))
    assert not silent, f"listed in SLICED but no stage's slice reads them: {silent}"
    assert not loud, f"a stage's slice reads them but they are not in SLICED: {loud}"


def test_every_field_but_the_sections_is_tried(specs: list[Spec]) -> None:
    # Guards the test above: a field the specs never reach would pass it unseen.
    seen = changes(specs)
    untried = [f"{name}.{f.name}" for name, cls in spec_classes().items() for f in dataclasses.fields(cls)
               if (name, f.name) not in seen and not _is_section(typing.get_type_hints(cls)[f.name])]
    assert not untried, untried


def _is_section(hint: Any) -> bool:
    """A field holding dataclasses (a section, a list of benchmarks): its own fields are tried instead."""
    return any(dataclasses.is_dataclass(t) for t in _inner_types(hint))
