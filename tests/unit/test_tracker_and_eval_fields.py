"""The spec fields of the trackers and the clinical metrics: logging, eval.perplexity, free-text benchmarks;
their errors are one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.spec.typed import Logging, parse_spec

BASE = """
model: {source: init}
data: {train: {path: train.jsonl}}
"""


def spec(tmp_path: Path, extra: str) -> object:
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "answer": "a", "options": {"A": "a"}, "answer_idx": "A"}\n')
    (tmp_path / "corpus.txt").write_text("held-out text\n")
    return parse_spec(BASE + extra, source="s.yaml", base_dir=tmp_path)


def test_logging_is_off_by_default_and_reads_its_trackers(tmp_path: Path) -> None:
    assert spec(tmp_path, "").logging == Logging(report_to=(), dir=None)  # type: ignore[attr-defined]
    logged = spec(tmp_path, "logging: {report_to: [tensorboard, mlflow], dir: logs}\n")
    assert logged.logging == Logging(report_to=("tensorboard", "mlflow"), dir="logs")  # type: ignore[attr-defined]


def test_perplexity_and_free_text_benchmarks_are_read(tmp_path: Path) -> None:
    s = spec(tmp_path, "eval: {perplexity: {path: corpus.txt}, benchmarks: [{name: q, format: qa, path: train.jsonl}]}\n")
    assert s.eval.perplexity.path == "corpus.txt" and s.eval.perplexity.field == "text"  # type: ignore[attr-defined]
    assert s.eval.benchmarks[0].format == "qa"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "message"), [
    ("logging: {report_to: [neptune]}\n", "logging.report_to[0]:"),
    ("eval: {perplexity: {path: missing.txt}}\n", "eval.perplexity.path:"),
    ("eval: {perplexity: {field: text}}\n", "eval.perplexity.path: required"),
    ("eval: {benchmarks: [{name: q, format: qa, path: train.jsonl, ids: corpus.txt}]}\n",
     "eval.benchmarks[0].ids: a fold of ids is for multiple-choice formats"),
])
def test_a_wrong_field_is_one_line_naming_it(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec(tmp_path, extra)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(message), caught.value.problems


def test_a_container_run_mounts_the_corpus_and_the_trackers_folder(tmp_path: Path) -> None:
    from runner.containers.launch import container_inputs

    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "med.txt").write_text("held-out text\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "train.jsonl").write_text('{"question": "q?", "answer": "a", "options": {"A": "a"}, "answer_idx": "A"}\n')
    (tmp_path / "specs" / "s.yaml").write_text(BASE + "eval: {perplexity: {path: ../corpora/med.txt}}\n"
                                               "logging: {report_to: [tensorboard], dir: ../logs}\n")
    volumes, _ = container_inputs(tmp_path / "specs" / "s.yaml", tmp_path / "store")
    assert volumes[str(tmp_path / "corpora")] == {"bind": str(tmp_path / "corpora"), "mode": "ro"}
    assert volumes[str(tmp_path / "logs")] == {"bind": str(tmp_path / "logs"), "mode": "rw"}
