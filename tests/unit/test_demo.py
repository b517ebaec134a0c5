"""The committed demo dataset must match its generator and be well formed."""

from __future__ import annotations

import json
from pathlib import Path

from runner.rows import demo

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
LETTERS = {"A", "B", "C", "D"}


def _load(name: str) -> list[dict]:
    with (DATA_DIR / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_regenerated_files_match_committed(tmp_path: Path) -> None:
    # Guards against editing the fact table without regenerating (or vice versa).
    paths = demo.write(tmp_path)
    assert [p.name for p in paths] == [demo.TRAIN_FILE, demo.TEST_FILE, "alpaca_train.jsonl",
                                     demo.PREFERENCE_FILE, demo.KTO_FILE, "reasoning_train.jsonl"]
    for path in paths:
        assert path.read_bytes() == (DATA_DIR / path.name).read_bytes()


def test_generate_is_deterministic_and_seed_sensitive() -> None:
    assert demo.generate(0) == demo.generate(0)
    assert demo.generate(0) != demo.generate(1)


def test_rows_are_valid() -> None:
    for name in (demo.TRAIN_FILE, demo.TEST_FILE):
        for row in _load(name):
            assert tuple(row) == demo.ROW_KEYS
            options = row["options"]
            assert set(options) == LETTERS
            assert len(set(options.values())) == 4
            assert row["answer_idx"] in LETTERS
            assert row["answer"] == options[row["answer_idx"]]
            assert row["question"] and row["meta_info"] and row["id"]


def test_ids_are_unique() -> None:
    ids = [row["id"] for name in (demo.TRAIN_FILE, demo.TEST_FILE) for row in _load(name)]
    assert len(ids) == len(set(ids))


def test_test_questions_are_held_out() -> None:
    train_questions = {row["question"] for row in _load(demo.TRAIN_FILE)}
    for row in _load(demo.TEST_FILE):
        assert row["question"] not in train_questions


def test_sizes_and_groups() -> None:
    train, test = _load(demo.TRAIN_FILE), _load(demo.TEST_FILE)
    assert len(train) >= 200
    assert len(test) >= 50
    assert len({row["meta_info"] for row in train}) > 1
    assert {row["meta_info"] for row in test} == {row["meta_info"] for row in train}


def test_corpus_covers_dataset_text() -> None:
    text = "\n".join(demo.corpus())
    train, test = demo.generate()
    for row in train + test:
        assert row["question"] in text
        assert all(option in text for option in row["options"].values())
