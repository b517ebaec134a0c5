"""`runner compare` over hostile run records and artifacts, through the CLI's entry point: each case is
one line on stderr and an exit code of the runner's errors (or a report, where the input is odd but
harmless), never a traceback, never a hang. The store is a good two-run store (test_compare's) with one
file broken per case."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner import cli
from tests.unit.test_compare import make_run

# (store, record of run b) -> extra CLI args (a first one not an option replaces run b), mutating files
Case = Callable[[Path, Path], list[str] | None]


def _record(store: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((store / "runs" / "b.json").read_text())
    return data


def _eval(store: Path) -> Path:
    return store / "eval" / "evalb".ljust(64, "0")


def _train(store: Path) -> Path:
    return store / "train" / "trainb".ljust(64, "0")


def record_with(change: Callable[[dict[str, Any]], Any]) -> Case:
    def case(store: Path, record: Path) -> None:
        data = _record(store)
        change(data)
        record.write_text(json.dumps(data))
    return case


def metrics_with(change: Callable[[dict[str, Any]], Any]) -> Case:
    def case(store: Path, record: Path) -> None:
        path = _eval(store) / "metrics.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return case


def raw(where: Callable[[Path], Path], content: str | bytes) -> Case:
    def case(store: Path, record: Path) -> None:
        path = where(store)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return case


def tuned(key: str, value: Any) -> Case:
    return metrics_with(lambda m: m["benchmarks"]["x"]["tuned"].__setitem__(key, value))


def out_at(folder: str) -> Case:
    def case(store: Path, record: Path) -> list[str]:
        (store / "a-file").write_text("x")
        return ["--out", folder.replace("STORE", str(store))]
    return case


def two_hundred_each(store: Path, record: Path) -> None:
    """Each file within the bound, their union past it: refused before any plotting (400 took 9 s)."""
    for run in ("a", "b"):
        path = store / "eval" / f"eval{run}".ljust(64, "0") / "metrics.json"
        path.write_text(json.dumps({"benchmarks": {f"{run}{i}": {} for i in range(200)}}))


def fifo_beside_spec(store: Path, record: Path) -> list[str]:
    """Compare by spec file: the run is found in runs/ without opening the FIFO there (it would hang)."""
    os.mkfifo(store / "runs" / "fifo.json")
    spec = store / "b.yaml"
    spec.write_text("name: b\n")
    data = _record(store)
    record.write_text(json.dumps(data | {"spec_path": str(spec.resolve())}))
    return [str(spec)]  # in place of run b's record


DEEP = "[" * 100_000 + "]" * 100_000
CASES: dict[str, Case] = {
    "record nested 100000 deep": raw(lambda s: s / "runs" / "b.json", DEEP),
    "record nested 200 deep in spec": record_with(lambda r: r["spec"].__setitem__("deep", json.loads("[" * 200 + "]" * 200))),
    "record not json": raw(lambda s: s / "runs" / "b.json", "{nope"),
    "record not utf-8": raw(lambda s: s / "runs" / "b.json", b'{"spec": "\xff\xfe"}'),
    "record empty": raw(lambda s: s / "runs" / "b.json", ""),
    "record a list": raw(lambda s: s / "runs" / "b.json", "[]"),
    "record over the size cap": raw(lambda s: s / "runs" / "b.json", '{"spec": {}, "pad": "' + "x" * 9 * 2**20 + '"}'),
    "spec.train a list": record_with(lambda r: r["spec"].__setitem__("train", [1, 2])),
    "spec.train.batch_size text": record_with(lambda r: r["spec"]["train"].__setitem__("batch_size", "4")),
    "spec.name a number": record_with(lambda r: r["spec"].__setitem__("name", 5)),
    "spec name of 1 MB": record_with(lambda r: r["spec"].__setitem__("name", "n" * 2**20)),
    "spec a string": record_with(lambda r: r.__setitem__("spec", "x")),
    "spec_path a number": record_with(lambda r: r.__setitem__("spec_path", 3)),
    "spec_path with NUL": record_with(lambda r: r.__setitem__("spec_path", "a\0b")),
    "data path with NUL": record_with(lambda r: r["spec"].__setitem__("data", {"train": {"path": "x\0y"}})),
    "profile a string": record_with(lambda r: r.__setitem__("profile", "cpu")),
    "profile.device a list": record_with(lambda r: r.__setitem__("profile", {"device": [1]})),
    "status a dict": record_with(lambda r: r.__setitem__("status", {})),
    "stages a dict": record_with(lambda r: r.__setitem__("stages", {})),
    "stage key a number": record_with(lambda r: r["stages"][0].__setitem__("key", 5)),
    "stage key climbing out": record_with(lambda r: r["stages"][-1].__setitem__("key", "../../../etc")),
    "stage name with slash": record_with(lambda r: r["stages"][-1].__setitem__("stage", "eval/x")),
    "no eval stage": record_with(lambda r: r.__setitem__("stages", r["stages"][:-1])),
    "metrics missing": raw(lambda s: _eval(s) / "metrics.json", ""),
    "metrics nested deep": raw(lambda s: _eval(s) / "metrics.json", DEEP),
    "metrics a list": raw(lambda s: _eval(s) / "metrics.json", "[1]"),
    "benchmarks a list": metrics_with(lambda m: m.__setitem__("benchmarks", [1])),
    "a benchmark a string": metrics_with(lambda m: m["benchmarks"].__setitem__("x", "x")),
    "a benchmark a number": metrics_with(lambda m: m["benchmarks"].__setitem__("y", 3)),
    "10000 benchmarks": metrics_with(lambda m: m["benchmarks"].update({f"b{i}": {} for i in range(10_000)})),
    "benchmark name of 1 MB": metrics_with(lambda m: m["benchmarks"].__setitem__("z" * 2**20, {})),
    "tuned a list": metrics_with(lambda m: m["benchmarks"]["x"].__setitem__("tuned", [1])),
    "acc NaN": raw(lambda s: _eval(s) / "metrics.json",
                   '{"benchmarks": {"x": {"tuned": {"n": 8, "acc": NaN, "ci95": [0.1, 0.9]}}}}'),
    "acc Infinity": raw(lambda s: _eval(s) / "metrics.json",
                        '{"benchmarks": {"x": {"tuned": {"n": 8, "acc": Infinity, "ci95": [0.1, 0.9]}}}}'),
    "acc 1e400": raw(lambda s: _eval(s) / "metrics.json",
                     '{"benchmarks": {"x": {"tuned": {"n": 8, "acc": 1e400, "ci95": [0.1, 0.9]}}}}'),
    "acc the string 5": tuned("acc", "5"),
    "acc 5": tuned("acc", 5),
    "acc true": tuned("acc", True),
    "ci95 a string": tuned("ci95", "wide"),
    "ci95 one number": tuned("ci95", [0.1]),
    "ci95 not holding acc": tuned("ci95", [0.0, 0.1]),
    "200 benchmarks in each of two runs": two_hundred_each,
    "ci95 missing": metrics_with(lambda m: m["benchmarks"]["x"]["tuned"].pop("ci95")),
    "n a string": tuned("n", "8"),
    "generative a list": metrics_with(lambda m: m["benchmarks"]["x"].__setitem__("generative", [])),
    "free_text a string": metrics_with(lambda m: m.__setitem__("free_text", "x")),
    "an extra figure NaN": raw(lambda s: _eval(s) / "metrics.json", '{"benchmarks": {"x": {"tuned": {"n": 8, "acc": '
                               '0.5, "ci95": [0.1, 0.9]}, "calibration": {"tuned": {"ece": NaN}}}}}'),
    "predictions not json": raw(lambda s: _eval(s) / "predictions.jsonl", "{nope\n"),
    "predictions not utf-8": raw(lambda s: _eval(s) / "predictions.jsonl", b'{"benchmark": "\xff"}\n'),
    "predictions a list row": raw(lambda s: _eval(s) / "predictions.jsonl", "[1]\n"),
    "predictions id a list": raw(lambda s: _eval(s) / "predictions.jsonl",
                                 '{"benchmark": "x", "id": [1], "answer": 1, "tuned": 1}\n'),
    "predictions benchmark a number": raw(lambda s: _eval(s) / "predictions.jsonl",
                                          '{"benchmark": 3, "id": "q0", "answer": 1, "tuned": 1}\n'),
    "predictions row deep": raw(lambda s: _eval(s) / "predictions.jsonl", DEEP + "\n"),
    "train rows without step": raw(lambda s: _train(s) / "metrics.jsonl", '{"loss": 1.0}\n{"eval_loss": 2.0}\n'),
    "train step a string": raw(lambda s: _train(s) / "metrics.jsonl", '{"step": "1", "loss": 1.0}\n'),
    "train loss a string": raw(lambda s: _train(s) / "metrics.jsonl", '{"step": 1, "loss": "low"}\n'),
    "train epoch Infinity": raw(lambda s: _train(s) / "metrics.jsonl", '{"step": 1, "epoch": Infinity}\n'),
    "train rows not json": raw(lambda s: _train(s) / "metrics.jsonl", "{\n"),
    "summary a list": raw(lambda s: _train(s) / "summary.json", "[]"),
    "summary seconds a string": raw(lambda s: _train(s) / "summary.json", '{"seconds": "long"}'),
    "summary steps NaN": raw(lambda s: _train(s) / "summary.json", '{"steps": NaN}'),
    "manifest info a list": raw(lambda s: _train(s) / "manifest.json", '{"info": []}'),
    "stats tokens a string": raw(lambda s: s / "data" / "datab".ljust(64, "0") / "stats.json",
                                 '{"train_tokens": {"total": "many"}}'),
    "record a link to /dev/zero": lambda s, r: r.unlink() or r.symlink_to("/dev/zero"),  # type: ignore[func-returns-value]
    "a FIFO in runs/ beside a spec's run": fifo_beside_spec,
    "--out a file": out_at("STORE/a-file"),
    "--out under a file": out_at("STORE/a-file/report"),
    "--out under /proc": out_at("/proc/report"),
    "--out with NUL": out_at("STORE/a\0b"),
}
# Odd but harmless: compare still writes its report (a NaN extra figure shown as "-", a long name cut).
HARMLESS = {"spec name of 1 MB", "a FIFO in runs/ beside a spec's run", "an extra figure NaN", "train rows without step", "train epoch Infinity",
            "spec_path with NUL", "data path with NUL"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_input_is_one_line_or_a_report(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    a = make_run(store, "a", 4, {"x": [True, False, True, False]}, 1)
    b = make_run(store, "b", 8, {"x": [True, True, True, False]}, 2)
    extra = CASES[name](store, b) or []
    started = time.monotonic()
    runs = [str(a), extra.pop(0) if extra and not extra[0].startswith("--") else str(b)]
    code = cli.main(["compare", *runs, "--store", str(store), *extra])
    assert time.monotonic() - started < 10, "compare took too long"
    err = capsys.readouterr().err.strip()
    if name in HARMLESS:
        assert code == 0, err
        return
    assert 1 <= code <= 7, err
    assert err.startswith("error: ") and "\n" not in err and len(err) < 500, err
    assert "Traceback" not in err
