"""Generated hostile inputs for `runner sweep` and `runner gc` (issue 21): 40 cases each, built from the
classes an adversarial run found (non-ASCII digits, grids past any size, files that are FIFOs, devices,
links or loops, stores that are files, names that are paths). Every case ends within seconds with exit 0
or a RunnerError's code, and an error is said on stderr as `error: ...`, never as a traceback.

They run in-process through the CLI's entry (as test_spec_malformed does), under a timer that turns a
hang into a failure; each case is its own seeded draw, so a failure names a case that can be rerun."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli import main

BOUND_S = 10.0  # a case's time limit: each takes well under a second here
EXIT_CODES = {0, *range(1, 8)}
SPEC = "model: {source: init}\ndata: {train: {path: t.jsonl}}\neval: {benchmarks: [{name: b, path: t.jsonl}]}\n"


class Hang(BaseException):
    """Past BOUND_S (a BaseException: nothing in the runner catches it as an error of its own)."""


def drive(argv: list[str]) -> tuple[int, str, str]:
    """`runner ARGV` in this process: exit code, stdout, stderr; fails past BOUND_S."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # sweep installs its own

    def late(signum: int, frame: object) -> None:
        raise Hang()

    signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, BOUND_S)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except Hang:
        pytest.fail(f"runner {' '.join(a[:80] for a in argv)}: still running after {BOUND_S:.0f} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in kept.items():
            signal.signal(signum, handler)
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> tuple[int, str]:
    start = time.perf_counter()
    code, out, err = drive(argv)
    assert time.perf_counter() - start < BOUND_S
    assert code in EXIT_CODES and "Traceback" not in err, (code, err[-2000:])
    if code:
        assert err.startswith("error: ") and all(len(line) <= 420 for line in err.splitlines()), err[-2000:]
    return code, out


# --- sweep ----------------------------------------------------------------------------------------

SETS = ["lora.r=²", "eval.benchmarks.²=x", "eval.benchmarks.٣.limit=5", "eval.benchmarks.99999999999.limit=1",
        "lora.r=" + "9" * 5000, "lora.r=[[[[", "lora.r=!!python/object/apply:os.system [x]", "lora.r=&a [*a, *a]",
        "=", "lora.r=,", "..=1", "lora.r=" + ",".join(map(str, range(1, 2000))), "x" * 5000 + "=1", "lora.r=1e400",
        "lora.r=-1", "train.learning_rate=.nan", "lora={}", "lora={r: {x: 1}}", "eval.benchmarks.0.name=..",
        "lora.r=4,8", "seed=" + ",".join(map(str, range(10_000))), "name=x", "lora.r=\udcff", "lora.r=4,'4'"]
VARIANTS: dict[str, Callable[[Path], Path]] = {
    "empty": lambda f: _file(f, b""), "list of nothing": lambda f: _file(f, b"[]"), "a mapping": lambda f: _file(f, b"{}"),
    "scalars": lambda f: _file(f, b"- 1\n- 2\n"), "no set": lambda f: _file(f, b"- {name: a}\n"),
    "list name": lambda f: _file(f, b"- {name: [1], set: {}}\n"),
    "superscript": lambda f: _file(f, "- {name: a, set: {eval.benchmarks.².limit: 5}}\n".encode()),
    "deep": lambda f: _file(f, b"- " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    "huge": lambda f: _file(f, b"#" * (2**20 + 10) + b"\n"), "not utf-8": lambda f: _file(f, b"- {name: \xff}\n"),
    "300 entries": lambda f: _file(f, "".join(f"- {{name: v{i}, set: {{seed: {i}}}}}\n" for i in range(300)).encode()),
    "twice": lambda f: _file(f, b"- {name: a, set: {seed: 1}}\n- {name: a, set: {seed: 2}}\n"),
    "path names": lambda f: _file(f, b"- {name: ../../x, set: {seed: 1}}\n- {name: /etc/y, set: {seed: 2}}\n"),
    "fifo": lambda f: _fifo(f / "v.yaml"), "device": lambda f: Path("/dev/zero"), "folder": lambda f: f,
    "dangling": lambda f: _link(f / "v.yaml", f / "missing"), "loop": lambda f: _link(f / "v.yaml", f / "v.yaml"),
}
EXTRA: list[Callable[[Path], list[str]]] = [
    lambda f: ["--jobs", "0"], lambda f: ["--jobs", "-1"], lambda f: ["--jobs", "9" * 30, "--plan"],
    lambda f: ["--write", "/proc/sweep"], lambda f: ["--write", "/dev/null/x"], lambda f: ["--write", str(_file(f, b"x"))],
    lambda f: ["--write", str(_fifo(f / "w"))], lambda f: ["--store", str(_file(f, b"x")), "--plan"],
    lambda f: ["--store", "/dev/null", "--plan"], lambda f: ["--max-variants", "0", "--plan"],
    # a raised limit that lets 10,000 variants through is slow on purpose: paired with a refusal here
    lambda f: ["--max-variants", "9" * 30, "--jobs", "0"], lambda f: ["--write", str(f / "out")],
]
NAMES = ["a/b", "x" * 300, "../../escape", "/etc/passwd", "..", "", "a\\b", "é²"]


def _file(folder: Path, body: bytes) -> Path:
    path = folder / f"f{len(list(folder.iterdir()))}"
    path.write_bytes(body)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


@pytest.mark.parametrize("case", range(40))
def test_generated_hostile_sweeps_end_in_one_clean_line(tmp_path: Path, case: int) -> None:
    draw = random.Random(2100 + case)
    (tmp_path / "t.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    spec = tmp_path / "base.yaml"
    name = draw.choice(NAMES) if draw.random() < 0.4 else "base"
    spec.write_text(f"name: {name!r}\n{SPEC}", "utf-8")
    if draw.random() < 0.5:
        chosen = draw.sample(SETS, draw.randint(1, 3))
        what = [a for s in chosen for a in ("--set", s)]
    else:
        what = ["--variants", str(VARIANTS[draw.choice(sorted(VARIANTS))](tmp_path))]
    extra = draw.choice(EXTRA)(tmp_path)
    if "--plan" not in extra and "--write" not in extra:
        extra += ["--plan"]  # nothing trains here
    check(["sweep", str(spec), *what, "--store", str(tmp_path / "store"), *extra])
    outside = list(tmp_path.parent.glob("*.yaml")) + list(Path("/etc").glob("y*.yaml"))
    assert not outside, outside  # no variant file escaped its folder


# --- gc -------------------------------------------------------------------------------------------

def _record(text: str) -> Callable[[Path], None]:
    return lambda store: _put(store / "runs" / "x.json", lambda p: p.write_text(text, "utf-8"))


def _put(path: Path, make: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        return
    make(path)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "fifo record": lambda s: _put(s / "runs" / "f.json", os.mkfifo),
    "zero record": lambda s: _put(s / "runs" / "z.json", lambda p: p.symlink_to("/dev/zero")),
    "loop record": lambda s: _put(s / "runs" / "l.json", lambda p: p.symlink_to(p)),
    "dangling record": lambda s: _put(s / "runs" / "d.json", lambda p: p.symlink_to(s / "nowhere")),
    "folder record": lambda s: _put(s / "runs" / "dir.json", lambda p: p.mkdir()),
    "sparse record": lambda s: _put(s / "runs" / "big.json", lambda p: os.truncate(_touch(p), 65 * 2**20)),
    "not utf-8": lambda s: _put(s / "runs" / "u.json", lambda p: p.write_bytes(b'{"stages": []}\xff')),
    "deep": _record("[" * 100_000 + "]" * 100_000), "null": _record("null"), "stages 5": _record('{"stages": 5}'),
    "stage int": _record('{"stages": [{"stage": 1}]}'),
    "key dict": _record('{"stages": [{"stage": "train", "key": {"a": [1]}}]}'), "nan": _record('{"stages": NaN}'),
    "runs fifo": lambda s: _put(s / "runs", os.mkfifo), "runs zero": lambda s: _put(s / "runs", lambda p: p.symlink_to("/dev/zero")),
    "runs file": lambda s: _put(s / "runs", lambda p: p.write_text("x")),
    "stage file": lambda s: _put(s / "eval", lambda p: p.write_text("x")),
    "stage fifo": lambda s: _put(s / "export", os.mkfifo),
    "artifact fifo": lambda s: _put(s / "train" / "k-fifo", os.mkfifo),
    "artifact link": lambda s: _put(s / "train" / "k-link", lambda p: p.symlink_to(s.parent / "outside")),
    "work file": lambda s: _put(s / "data" / ".work", lambda p: p.write_text("x")),
    "work fifo": lambda s: _put(s / "data" / ".work" / "w1", os.mkfifo),
    "lock folder": lambda s: _work_and_lock(s, "w2", Path.mkdir),
    "lock fifo": lambda s: _work_and_lock(s, "w3", os.mkfifo),
}


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _work_and_lock(store: Path, name: str, make_lock: Callable[[Path], object]) -> None:
    _put(store / "model" / ".work" / name, Path.mkdir)
    _put(store / "model" / ".locks" / f"{name}.lock", make_lock)


def _store(root: Path) -> Path:
    store = root / "store"
    for stage, key in (("model", "m1"), ("train", "t1"), ("train", "t2")):
        (store / stage / key).mkdir(parents=True)
        (store / stage / key / "manifest.json").write_text("{}")
    (store / "runs").mkdir()
    (store / "runs" / "a.json").write_text('{"stages": [{"stage": "model", "key": "m1"}]}')
    (root / "outside").mkdir()
    (root / "outside" / "keep.txt").write_text("not the store's")
    return store


@pytest.mark.parametrize("case", range(40))
def test_generated_hostile_stores_end_in_one_clean_line(tmp_path: Path, case: int) -> None:
    draw = random.Random(2200 + case)
    store = _store(tmp_path)
    damages = draw.sample(sorted(DAMAGE), draw.randint(1, 3))
    for damage in damages:
        DAMAGE[damage](store)
    target = {0: store, 1: tmp_path / "outside" / "keep.txt", 2: Path("/dev/null")}.get(draw.randrange(8), store)
    dry = ["--dry-run"] if draw.random() < 0.3 else []
    code, _ = check(["gc", "--store", str(target), *dry])
    assert code in (0, 6), (damages, code)
    assert (tmp_path / "outside" / "keep.txt").read_text() == "not the store's"  # a link out is never followed
    if code == 6:  # refused: nothing removed
        assert (store / "model" / "m1").is_dir() and (store / "train" / "t1").is_dir()
