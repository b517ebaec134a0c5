"""Malformed specs: each gets one line that says what to change, exit 2, fast; never a traceback.

A generator builds 500+ broken specs from the schema (every field given a wrong type, a value out of
range, a non-finite or whole-float number...) plus the classes an adversarial run found (bytes that are
not UTF-8, keys that are not strings, tags, deep nesting, alias bombs, NUL bytes, huge files).
They run in-process through the CLI entry, so the whole set takes seconds.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.cli import main
from runner.spec.schema import load_schema

BASE: dict[str, Any] = {
    "model": {"source": "init", "init": {"hidden_size": 64}},
    "data": {"train": {"path": "train.jsonl"}, "validation": {"path": "train.jsonl"}},
    "eval": {"benchmarks": [{"name": "b", "path": "train.jsonl", "ids": "ids.txt"}],
             "safety": {"rules": [{"name": "r", "pattern": "x"}]}},
}
BASE_TEXT = yaml.safe_dump(BASE).encode()
LAUGHS = "l0: &l0 lol\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text('{"question": "q", "options": {"A": "a"}, "answer_idx": "A"}\n')
    (tmp_path / "ids.txt").write_text("1\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    return tmp_path


def validate(path: Path) -> tuple[int, str, float]:
    """`runner validate PATH` in-process: exit code, stderr, seconds."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path)])
    return code, err.getvalue(), time.perf_counter() - start


def one_problem(folder: Path, body: bytes) -> str:
    spec = folder / "spec.yaml"
    spec.write_bytes(body)
    code, err, _ = validate(spec)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ").replace(str(spec), "x.yaml")


# --- one test per defect class: each failed on the loader as it was ---------------------------------------

def test_a_spec_that_is_not_utf8_names_the_line(folder: Path) -> None:
    assert one_problem(folder, BASE_TEXT + b"name: caf\xe9\n") == \
        "x.yaml:19:10: not UTF-8 (byte 0xe9); save the spec as UTF-8"


def test_keys_must_be_strings(folder: Path) -> None:
    assert one_problem(folder, BASE_TEXT + b"1: x\n") == "(top level): a key must be a string, got integer 1 (x.yaml:19:1)"
    assert one_problem(folder, BASE_TEXT + b"? [a, b]\n: x\n") == \
        "(top level): a key must be a string, got a list (x.yaml:19:3)"


def test_binary_and_timestamp_tags_are_refused_and_a_bare_date_is_a_string(folder: Path) -> None:
    assert one_problem(folder, BASE_TEXT + b"name: !!binary aGVsbG8=\n") == \
        "name: the YAML tag !!binary is not allowed here; write a plain value (x.yaml:19:1)"
    assert one_problem(folder, BASE_TEXT + b"description: !!timestamp 2001-12-14\n").startswith(
        "description: the YAML tag !!timestamp is not allowed here")
    (folder / "ok.yaml").write_bytes(BASE_TEXT + b"description: 2001-12-14\n")
    assert validate(folder / "ok.yaml")[0] == 0


def test_deep_nesting_is_refused_without_recursing(folder: Path) -> None:
    line = one_problem(folder, BASE_TEXT + b"name: " + b"[" * 2000 + b"]" * 2000 + b"\n")
    assert line == "x.yaml:19:26: nested more than 20 levels deep; a spec needs at most 6"


def test_local_model_without_a_path(folder: Path) -> None:
    body = BASE_TEXT.replace(b"source: init", b"source: local")
    assert one_problem(folder, body).startswith("model.path: required when source is local")


def test_a_nul_byte_in_a_path(folder: Path) -> None:
    body = BASE_TEXT.replace(b"path: train.jsonl\n  validation", b'path: "tr\\0ain.jsonl"\n  validation')
    assert one_problem(folder, body) == "data.train.path: must not contain a NUL byte (x.yaml:3:5)"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused(folder: Path, value: str) -> None:
    line = one_problem(folder, BASE_TEXT + f"train: {{learning_rate: {value}}}\n".encode())
    assert line == f"train.learning_rate: must be a finite number, got {value} (x.yaml:19:9)"


def test_whole_floats_are_not_integers(folder: Path) -> None:
    assert one_problem(folder, BASE_TEXT + b"seed: 42.0\n") == "seed: must be an integer, got number 42.0 (x.yaml:19:1)"
    body = BASE_TEXT.replace(b"hidden_size: 64", b"hidden_size: 64.0")
    assert one_problem(folder, body).startswith("model.init.hidden_size: must be an integer, got number 64.0")


@pytest.mark.parametrize(("old", "new", "where"), [
    (b"name: b", b"name: ..", "eval.benchmarks[0].name"),
    (b"name: b", b'name: "b\\n"', "eval.benchmarks[0].name"),
    (b"train:\n    path: train.jsonl", b"format: text\n  train:\n    path: ''", "data.train.path"),
])
def test_unsafe_names_and_empty_paths_are_refused(folder: Path, old: bytes, new: bytes, where: str) -> None:
    assert old in BASE_TEXT
    assert one_problem(folder, BASE_TEXT.replace(old, new, 1)).startswith(f"{where}: ")


@pytest.mark.parametrize(("extra", "said"), [(b'name: "a\\n"', "data.train[0].name: "),
                                             (b"rows: 1000000000", "data.train[0].rows: must be <= 10000000"),
                                             (b"weight: 1.0e308", "data.train[0].weight: must be <= 1000000"),
                                             (b"weight: 1.0e-300", "data.train[0].weight: must be >= 1e-06")])
def test_mixture_names_and_shares_are_bounded(folder: Path, extra: bytes, said: str) -> None:
    mixture = b"data:\n  train:\n  - {path: train.jsonl, %s}\n  - {path: train.jsonl, name: other}\n" % extra
    assert one_problem(folder, mixture + BASE_TEXT[BASE_TEXT.index(b"eval:"):]).startswith(said)


@pytest.mark.parametrize("fmt", [b"format: text\n  ", b""])
def test_a_path_that_is_a_link_to_itself_is_one_line(folder: Path, fmt: bytes) -> None:
    (folder / "loop").symlink_to("loop")  # was: RuntimeError: Symlink loop, a traceback
    body = BASE_TEXT.replace(b"  validation:\n    path: train.jsonl\n", b"")  # a text format: no qa validation
    line = one_problem(folder, body.replace(b"train:\n    path: train.jsonl", fmt + b"train:\n    path: loop"))
    assert line.startswith("data.train.path: cannot use 'loop': a symbolic link loop"), line


def test_a_push_repo_id_with_a_newline_is_refused(folder: Path) -> None:
    line = one_problem(folder, BASE_TEXT + b'export: {push: {repo_id: "me/model\\n"}}\n')
    assert line.startswith("export.push.repo_id: ")


def test_alias_bombs_stop_fast(folder: Path) -> None:
    start = time.perf_counter()
    line = one_problem(folder, BASE_TEXT + LAUGHS.encode())
    assert time.perf_counter() - start < 1
    assert "more than 20000 values once its aliases are expanded" in line


def test_a_huge_spec_is_refused_by_its_size(folder: Path) -> None:
    line = one_problem(folder, BASE_TEXT + b"#" * 2**21 + b"\n")
    assert line == "x.yaml: the spec is 2.0 MiB, over the 1 MiB limit; a spec holds settings, data goes in files"


def test_a_long_wrong_value_is_echoed_short(folder: Path) -> None:
    line = one_problem(folder, BASE_TEXT + b"seed: " + b"a" * 500_000 + b"\n")
    assert line.startswith('seed: must be an integer, got string "aaaa') and "(500000 characters)" in line
    assert len(line) < 200


@pytest.mark.parametrize("path", ["/", "empty", "train.jsonl"])
def test_a_folder_that_is_not_a_model_is_refused_before_hashing(folder: Path, path: str) -> None:
    body = BASE_TEXT.replace(b"source: init", f"source: local\n  path: {path}".encode())
    assert one_problem(folder, body).startswith("model.path: ")
    (folder / "ok.yaml").write_bytes(BASE_TEXT.replace(b"source: init", b"source: local\n  path: model"))
    assert validate(folder / "ok.yaml")[0] == 0


@pytest.mark.parametrize("body", [b'"a\\nb": 1\n', b"name: [unclosed\n", b"name: \x01\n", b"train: {\"x\\u2028y\": 1}\n"])
def test_messages_with_line_breaks_come_out_as_one_line(folder: Path, body: bytes) -> None:
    one_problem(folder, BASE_TEXT + body)


# --- the generated set ----------------------------------------------------------------------------------

def _fields(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield path + (name,), sub
        yield from _fields(sub, path + (name,))
        if "properties" in sub.get("items", {}):
            yield from _fields(sub["items"], path + (name, 0))


def _wrong_values(sub: dict[str, Any]) -> Iterator[Any]:
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    yield {"a": 1} if "object" not in types else [1]
    if "string" not in types and "enum" not in sub and "oneOf" not in sub:
        yield "x"
    if not {"number", "integer", "string"} & set(types) and "properties" not in sub and "oneOf" not in sub:
        yield 7
    if "oneOf" in sub:  # the oneOf fields take "auto" or an integer >= 1, or a string or a list of them
        yield from (0, -1, 1.5, 2.0, float("nan"))
    if {"number", "integer"} & set(types):
        yield from (float("nan"), float("inf"), float("-inf"))
        for key, step in (("minimum", -1), ("exclusiveMinimum", 0), ("maximum", 1), ("exclusiveMaximum", 0)):
            if key in sub:
                yield sub[key] + step
    if "integer" in types:
        yield float(sub.get("minimum", 1)) + 1
    if "enum" in sub:
        yield "nope"
    if "string" in types:
        yield "a\0b"
    if "minLength" in sub:
        yield ""
    if "pattern" in sub:  # Python's `$` matched before a final newline: "b\n" passed as a name
        yield from ("b\n", "a/b\n", "..", ".")


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    parent: Any = None
    for i, part in enumerate(path[:-1]):
        if isinstance(part, int) and not isinstance(node, list):  # the list form of a one-or-many field (data.train)
            parent[path[i - 1]] = node = [node]
        parent = node
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value
    return doc


def _raw_cases() -> Iterator[tuple[str, bytes]]:
    for at in (b"name: caf\xe9\n", b"description: \xff\xfe\n", b"\xc3\x28: 1\n", b"# \x80\n", b"seed: \xed\xa0\x80\n"):
        yield "not utf-8", BASE_TEXT + at
    for key in ("1", "true", "null", "1.5", "[a, b]", "{a: 1}", "2001-01-01"):
        yield f"key {key}", BASE_TEXT + f"? {key}\n: x\n".encode()
        yield f"nested key {key}", BASE_TEXT + f"train:\n  ? {key}\n  : x\n".encode()
    for tag in ("!!binary aGVsbG8=", "!!timestamp 2001-12-14", "!!set {a}", "!!omap [a: 1]", "!!pairs [a: 1]",
                "!!python/object:os.system x", "!!python/name:os.system ''", "!custom x"):
        for field in ("name", "seed", "description"):
            yield f"tag {tag}", BASE_TEXT + f"{field}: {tag}\n".encode()
    # Standard tags whose value does not parse: PyYAML raised ValueError/KeyError/IndexError (found in review).
    for tag in ("!!int abc", "!!float abc", "!!bool maybe", '!!int ""', "!!float ''", "!!int 0x", "!!null x"):
        for field in ("seed", "train: {epochs"):
            closing = "}" if "{" in field else ""
            yield f"bad {tag}", BASE_TEXT + f"{field}: {tag}{closing}\n".encode()
    for depth in (21, 100, 2000, 20000):
        yield f"deep list {depth}", BASE_TEXT + b"name: " + b"[" * depth + b"]" * depth + b"\n"
        yield f"deep map {depth}", BASE_TEXT + b"name: " + b"{a: " * depth + b"1" + b"}" * depth + b"\n"
    lines = LAUGHS.splitlines(keepends=True)
    for n in range(6, 11):
        yield f"laughs {n}", BASE_TEXT + "".join(lines[:n]).encode()
    yield "alias cycle", BASE_TEXT + b"name: &a [*a]\n"
    for path in ("", "path: null", "path: /", "path: empty", "path: train.jsonl", 'path: "mo\\0del"', "path: ''"):
        yield f"local {path}", BASE_TEXT.replace(b"source: init", f"source: local\n  {path}".encode())
    for old in (b"path: train.jsonl\n  validation", b"ids: ids.txt", b"name: b"):
        new = old.replace(b"train.jsonl", b'"tr\\0ain.jsonl"').replace(b"ids.txt", b'"i\\0ds"').replace(b"b", b'"b\\0"')
        yield "nul", BASE_TEXT.replace(old, new)
    # Issue 21's wrongly accepted classes: names used as file names, newlines in names, an empty text path,
    # mixture shares past their bounds.
    for name in ("..", ".", "'b\\n'", "'..\\n'", "a/b", "-b"):
        yield f"benchmark name {name}", BASE_TEXT.replace(b"name: b", f"name: {name}".encode())
    mixture = b"data:\n  train:\n  - {path: train.jsonl, %s}\n  - {path: train.jsonl, name: other}\n"
    for extra in (b"name: \"a\\n\"", b"rows: 1000000000", b"rows: 1.0e9", b"weight: 1.0e308", b"weight: 1.0e-300",
                  b"rows: 2.5"):
        yield f"mixture {extra!r}", mixture % extra + BASE_TEXT[BASE_TEXT.index(b"eval:"):]
    yield "empty text path", BASE_TEXT.replace(b"train:\n    path: train.jsonl", b"format: text\n  train:\n    path: ''")
    yield "push repo_id newline", BASE_TEXT + b"export: {push: {repo_id: \"me/model\\n\"}}\n"
    yield "path too long", BASE_TEXT.replace(b"ids: ids.txt", b"ids: " + b"z" * 5000)
    yield "regex too deep", BASE_TEXT.replace(b"pattern: x", b"pattern: '" + b"(" * 1000 + b")" * 1000 + b"'")
    yield "regex repeat too big", BASE_TEXT.replace(b"pattern: x", b"pattern: 'a{99999999999}'")
    yield "too big comment", BASE_TEXT + b"#" * (2**20 + 1) + b"\n"
    yield "too big string", BASE_TEXT + b"name: " + b"a" * 2**21 + b"\n"
    for field in ("seed: ", "hardware: {device: ", "lora: {r: ", "train: {"):
        closing = b"}" if b"{" in field.encode() else b""
        yield "long value", BASE_TEXT + field.encode() + b"z" * 300_000 + (b": 1" if field == "train: {" else b"") + closing + b"\n"
    for text in (b"name: [unclosed\n", b"model:\n\t source: init\n", b"name: \x01\n", b"name: *nope\n", b"  bad: indent\n",
                 b'"a\\nb": 1\n', b"train: {\"x\\u2028y\": 1}\n", b"name: \"\\x85\"\n: x", b"---\na: 1\n---\nb: 2\n",
                 b"seed: 1" + b"0" * 5000 + b"\n", b"train: {learning_rate: 1.0e400}\n", b"name: a\x00b\n"):
        yield "yaml", BASE_TEXT + text
    for whole in (b"", b"[]\n", b"just a string\n", b"~\n", b"\xef\xbb\xbf\xef\xbb\xbf\n", b"model: {source: init}\n"):
        yield "whole", whole


# Sections whose fields are required: a wrong value of one field is tried inside an otherwise valid section.
VALID_SECTIONS: dict[tuple[Any, ...], Any] = {
    ("eval", "perplexity"): {"path": "train.jsonl"},
    ("eval", "abstain"): {"signal": "loglik", "threshold": 0.5},
    ("eval", "generative", "filters"): [{"function": "take_first"}],
    ("train", "grpo", "rewards"): [{"name": "answer_correct"}],
}


def malformed_specs() -> Iterator[tuple[str, bytes]]:
    """(what is wrong, the spec's bytes): every one must fail with one line."""
    for path, sub in _fields(load_schema()):
        # An optional section with a required field (eval.perplexity.path) is tried inside a valid one.
        base = next((_set(BASE, at, stub) for at, stub in VALID_SECTIONS.items() if path[:len(at)] == at), BASE)
        if "properties" in sub:
            yield f"{path} unknown key", yaml.safe_dump(_set(base, path + ("bogus_key",), 1)).encode()
        for value in _wrong_values(sub):
            yield f"{path} = {value!r}", yaml.safe_dump(_set(base, path, value)).encode()
    yield from _raw_cases()


def test_the_base_spec_is_valid(folder: Path) -> None:
    (folder / "ok.yaml").write_bytes(BASE_TEXT)
    assert validate(folder / "ok.yaml")[0] == 0


def test_every_malformed_spec_gets_one_line_exit_2_within_a_second(folder: Path) -> None:
    cases = list(malformed_specs())
    print(f"{len(cases)} malformed specs")
    assert len(cases) >= 500
    bad = []
    for i, (what, body) in enumerate(cases):
        spec = folder / f"m{i}.yaml"
        spec.write_bytes(body)
        code, err, seconds = validate(spec)
        lines = err.splitlines()
        if code not in (2, 3) or len(lines) != 1 or not lines[0].startswith("error: ") or seconds > 1 or len(lines[0]) > 400:
            bad.append(f"{what}: exit {code} in {seconds:.2f}s: {err[:300]!r}")
    assert not bad, f"{len(bad)} of {len(cases)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("body", [BASE_TEXT + b"name: caf\xe9\n", BASE_TEXT + b"1: x\n",
                                  BASE_TEXT + LAUGHS.encode(), BASE_TEXT + b"seed: .nan\n"])
def test_the_real_cli_prints_one_line_and_exits_2(root: Path, folder: Path, body: bytes) -> None:
    (folder / "s.yaml").write_bytes(body)
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(folder / "s.yaml")],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr


def test_a_model_folder_with_too_many_files_is_refused_not_hashed(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.core.errors import SpecError
    from runner.spec.typed import load_spec
    from runner.stages import model

    for i in range(4):
        (folder / "model" / f"extra{i}.txt").write_text("x")
    (folder / "s.yaml").write_bytes(BASE_TEXT.replace(b"source: init", b"source: local\n  path: model"))
    spec = load_spec(folder / "s.yaml")
    assert len(model.local_files(spec)) == 6
    monkeypatch.setattr(model, "MAX_MODEL_FILES", 3)
    with pytest.raises(SpecError, match=r"^model.path: .* holds more than 3 files; point it at the model's own folder"):
        model.local_files(spec)
