"""Mixtures in the spec (the list form beside the one-source form, with one-line errors) and the
epoch sampling: seeded, different each epoch, without replacement no row twice before every row once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.core.errors import DataError, SpecError
from runner.rows.formats import Dropped, document_text
from runner.rows.mixture import epoch_rows, local_paths, quotas, resolved, schedule
from runner.rows.reading import read_source
from runner.spec.typed import Spec, parse_spec
from tests.unit.test_keys import keys

ROW = '{"question": "q?", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n'


def _spec(folder: Path, train: str, extra: str = "") -> Spec:
    (folder / "a.jsonl").write_text(ROW * 3)
    (folder / "b.jsonl").write_text('{"question": "q?", "answer": "x"}\n')
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "one.md").write_text("# A note\n\nText.\n")
    return parse_spec(f"model: {{source: init}}\ndata:\n  train: {train}\n{extra}", base_dir=folder)


def _error(folder: Path, train: str, extra: str = "") -> str:
    with pytest.raises(SpecError) as caught:
        _spec(folder, train, extra)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_list_form_resolves_names_formats_and_fields(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[{path: a.jsonl, weight: 2}, {name: short, path: b.jsonl, format: qa, rows: 5},"
                           " {path: notes, format: text, fields: {text: body}}]")
    got = [(s.name, s.format, s.weight, s.rows, s.fields.text) for s in resolved(spec, "train")]
    assert got == [("a", "multiple_choice", 2, None, "text"), ("short", "qa", None, 5, "text"), ("notes", "text", None, None, "body")]
    one = _spec(tmp_path, "{path: a.jsonl}")
    assert [(s.name, s.format) for s in resolved(one, "train")] == [("train", "multiple_choice")]


def test_mixture_mistakes_get_one_line_each(tmp_path: Path) -> None:
    assert "data.train[0]: give `weight` (a share of each epoch) or `rows` (a fixed count), not both" in _error(
        tmp_path, "[{path: a.jsonl, weight: 1, rows: 3}]")
    assert "data.train[1].name: a second source named 'a'" in _error(tmp_path, "[{path: a.jsonl}, {path: a.jsonl}]")
    assert "data.train[0].weight: must be >= 1e-06, got integer 0" in _error(tmp_path, "[{path: a.jsonl, weight: 0}]")
    assert "data.train.weight: unknown key" in _error(tmp_path, "{path: a.jsonl, weight: 1}")  # the one-source form has no share
    assert "data.validation[0]: validation sources are read whole" in _error(
        tmp_path, "[{path: a.jsonl}]", "  validation: [{path: b.jsonl, format: qa, rows: 2}]\n")
    assert "data.train[0].path: no file matches 'notes/*.txt'" in _error(tmp_path, "[{path: 'notes/*.txt', format: text}]")
    assert "data.train[0].path: no such file 'notes'" in _error(tmp_path, "[{path: notes}]")  # a folder: text only


def test_a_mixture_keys_its_shares_and_epochs_and_the_resolved_format(tmp_path: Path) -> None:
    base = _spec(tmp_path, "[{path: a.jsonl, weight: 2}, {path: b.jsonl, format: qa}]")
    same = _spec(tmp_path, "[{path: a.jsonl, weight: 2, format: multiple_choice}, {path: b.jsonl, format: qa}]")
    assert keys(base)["data"] == keys(same)["data"]  # the format written out equals data.format's
    heavier = _spec(tmp_path, "[{path: a.jsonl, weight: 3}, {path: b.jsonl, format: qa}]")
    assert keys(heavier)["data"] != keys(base)["data"]
    longer = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=4))
    assert keys(longer)["data"] != keys(base)["data"]  # the stage writes every epoch's rows


def test_quotas_share_the_weighted_rows_and_keep_fixed_counts(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[{name: a, path: a.jsonl, weight: 3}, {name: b, path: b.jsonl, format: qa, weight: 1},"
                           " {name: c, path: a.jsonl, rows: 7}, {name: d, path: b.jsonl, format: qa}]")
    kept = {"a": 60, "b": 20, "c": 2, "d": 5}
    assert quotas(resolved(spec, "train"), kept) == {"a": 60, "b": 20, "c": 7, "d": 5}
    kept["b"] = 100  # b is larger now, but its share stays a quarter of the weighted pool
    assert quotas(resolved(spec, "train"), kept) == {"a": 120, "b": 40, "c": 7, "d": 5}


def test_epoch_sampling_is_seeded_and_new_each_epoch() -> None:
    kept, quota = {"a": 10, "b": 4}, {"a": 6, "b": 9}
    first = epoch_rows(kept, quota, False, 42, 0)
    assert first == epoch_rows(kept, quota, False, 42, 0)  # same seed and epoch: the same rows, same order
    assert first != epoch_rows(kept, quota, False, 42, 1) and first != epoch_rows(kept, quota, False, 7, 0)
    assert Counter(s for s, _ in first) == {"a": 6, "b": 9}
    a_rows = [r for s, r in first if s == "a"]
    assert len(set(a_rows)) == 6  # without replacement: no row twice within a pass
    b_rows = Counter(r for s, r in first if s == "b")
    assert sorted(b_rows.values()) == [2, 2, 2, 3]  # 9 of 4 rows: two whole passes and one more row
    drawn = epoch_rows({"a": 3}, {"a": 300}, True, 42, 0)
    assert len(drawn) == 300 and max(Counter(drawn).values()) > 100  # with replacement: independent draws
    plan = list(schedule(kept, quota, False, 42, 2.5))
    assert [len(e) for e in plan] == [15, 15, 8] and plan[2] == epoch_rows(kept, quota, False, 42, 2)[:8]


MIXTURE_DATA_KEY = "21edf0b9eeae6d708448b60c6e584d3ef6fa7b2aa2538751d5addf84f2b51baf"  # pinned: a change to a mixture's slice shows here, as test_keys shows the rest


def test_pinned_data_key_of_a_mixture(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[{path: a.jsonl, weight: 2}, {name: short, path: b.jsonl, format: qa, rows: 5},"
                           " {path: notes, format: text}]")
    assert keys(spec)["data"] == MIXTURE_DATA_KEY


def test_text_sources_read_files_folders_globs_and_columns(tmp_path: Path) -> None:
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("First note.")
    (tmp_path / "docs" / "deep" / "b.txt").write_text("Second note.")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"caf\xe9")
    (tmp_path / "docs" / "skip.json").write_text("{}")  # a folder gives its .txt and .md files only
    (tmp_path / "rows.jsonl").write_text('{"body": "Third."}\n{"body": ""}\n')
    pq.write_table(pa.table({"body": ["Fourth.", "Fifth."]}), tmp_path / "rows.parquet")

    def texts(path: str, column: str = "text") -> list[str]:
        spec = _spec(tmp_path, f"[{{path: '{path}', format: text, fields: {{text: {column}}}}}]")
        (src,) = resolved(spec, "train")
        out = []
        for row in read_source(src.source, local_paths(spec, src), "text", None):
            try:
                out.append(document_text(row, column) if not isinstance(row, Dropped) else f"dropped: {row}")
            except Dropped as reason:
                out.append(f"dropped: {reason}")
        return out

    assert texts("docs") == ["First note.", "dropped: not UTF-8", "Second note."]
    assert texts("docs/**/*.txt") == ["dropped: not UTF-8", "Second note."]
    assert texts("rows.jsonl", "body") == ["Third.", "dropped: empty text (body)"]
    assert texts("rows.parquet", "body") == ["Fourth.", "Fifth."]


def test_a_text_glob_or_folder_must_give_a_file_written_relative_or_absolute(tmp_path: Path) -> None:
    """A sweep and a job write every path absolute: an absolute glob is checked like a relative one."""
    for pattern in ("notes/*.md", str(tmp_path / "notes" / "*.md")):
        spec = _spec(tmp_path, f"[{{path: a.jsonl}}, {{path: '{pattern}', format: text}}]")
        assert local_paths(spec, resolved(spec, "train")[1]) == [(tmp_path / "notes" / "one.md").resolve()]
    absent = str(tmp_path / "notes" / "*.txt")
    assert "no file matches" in _error(tmp_path, f"[{{path: a.jsonl}}, {{path: '{absent}', format: text}}]")
    (tmp_path / "empty").mkdir()
    assert "no .txt/.md file in the folder 'empty'" in _error(tmp_path, "[{path: a.jsonl}, {path: empty, format: text}]")


def test_a_weight_that_rounds_to_no_rows_is_refused_not_silent(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[{name: a, path: a.jsonl, weight: 1000000}, {name: b, path: b.jsonl, format: qa, weight: 0.000001}]")
    with pytest.raises(DataError, match="source b's weight 1e-06 gives it 0 of its 20 rows"):
        quotas(resolved(spec, "train"), {"a": 60, "b": 20})
