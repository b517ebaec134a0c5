"""`runner sweep` and `runner gc` as a hostile or careless user drives them, through the CLI in a real
process (issue 21's findings): each ends in one line on stderr and the error's exit code, within
seconds; no traceback, no hang, no file written outside the folder asked for. Nothing trains:
every sweep here stops at `--plan`, `--write` or an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXIT_CODES = range(1, 8)  # RunnerError's subclasses: spec 2 ... container 7


def cli(*argv: str, timeout: float = 30) -> tuple[int, str, str]:
    """`runner ARGV` in its own process: exit code, stdout, stderr. A hang is a failure, not a wait."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "runner", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=os.environ | {"OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"runner {' '.join(a[:60] for a in argv)}: still running after {timeout:.0f} s")
    assert time.perf_counter() - start < timeout
    return done.returncode, done.stdout, done.stderr


def refused(*argv: str, code: int | None = None, timeout: float = 30) -> str:
    """The one line a refused command prints (without `error: `)."""
    got, _, err = cli(*argv, timeout=timeout)
    assert "Traceback" not in err and got in EXIT_CODES and (code is None or got == code), (got, err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0].removeprefix("error: ")


def base_spec(folder: Path, name: str = "base") -> Path:
    (folder / "t.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    spec = folder / "base.yaml"
    spec.write_text(f"name: {name!r}\nmodel: {{source: init}}\ndata: {{train: {{path: t.jsonl}}, format: qa}}\n"
                    "eval: {benchmarks: [{name: b, path: t.jsonl, format: qa}]}\n")
    return spec


# --- sweep ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", ["²", "٣", "1²"])
def test_a_non_ascii_digit_as_a_list_index_is_no_field(tmp_path: Path, index: str) -> None:
    spec = base_spec(tmp_path)
    line = refused("sweep", str(spec), "--set", f"eval.benchmarks.{index}.limit=5", "--plan", code=2)
    assert line.startswith(f"--set eval.benchmarks.{index}.limit: no such spec field"), line
    variants = tmp_path / "v.yaml"
    variants.write_text(f"- {{name: a, set: {{eval.benchmarks.{index}.limit: 5}}}}\n", "utf-8")
    line = refused("sweep", str(spec), "--variants", str(variants), "--plan", code=2)
    assert "no such spec field" in line and str(variants) in line


def test_jobs_past_int64_runs_as_many_as_there_are_variants(tmp_path: Path) -> None:
    code, out, err = cli("sweep", str(base_spec(tmp_path)), "--set", "lora.r=4,8", "--plan", "--jobs", "9" * 30,
                         "--store", str(tmp_path / "store"))
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "for 2 variant(s)" in out


@pytest.mark.parametrize("where", ["/proc/sweep", "/dev/null/x", "a-file"])
def test_write_where_nothing_can_be_written_is_one_line(tmp_path: Path, where: str) -> None:
    spec = base_spec(tmp_path)
    (tmp_path / "a-file").write_text("x")
    target = where if where.startswith("/") else str(tmp_path / where)
    line = refused("sweep", str(spec), "--set", "lora.r=4,8", "--write", target, code=6)
    assert line.startswith(f"sweep: cannot write the variant specs in {target} ("), line


def test_a_store_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    spec, store = base_spec(tmp_path), tmp_path / "store"
    store.write_text("not a folder")
    for plan in ([], ["--plan"]):
        line = refused("sweep", str(spec), "--set", "lora.r=4,8", "--store", str(store), *plan, code=6)
        assert line == f"sweep: --store {store} is not a folder: give the artifact store's folder"


@pytest.mark.parametrize("name", ["a/b", "x" * 300, "../../escape", "/ABSOLUTE/escape", ".hidden", "..", "a\\b c"])
def test_the_base_name_never_puts_a_variant_file_outside_its_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "deep" / "er"
    folder.mkdir(parents=True)
    (tmp_path / "ABSOLUTE").mkdir()
    name = name.replace("/ABSOLUTE", str(tmp_path / "ABSOLUTE"))  # an absolute path that exists
    spec = base_spec(folder, name)
    out_dir = tmp_path / "x" / "y" / "out"  # ../../ from here is still under tmp_path, where the test looks
    code, out, err = cli("sweep", str(spec), "--set", "lora.r=4,8", "--write", str(out_dir))
    assert code == 0 and not err, err[-2000:]
    written = sorted(p for p in tmp_path.rglob("*.yaml") if p != spec)
    assert [p.parent for p in written] == [out_dir, out_dir], written
    assert all(len(p.name) < 255 and not p.name.startswith(".") for p in written)
    assert out.split() == [str(p) for p in written]


@pytest.mark.parametrize(("sets", "count"), [
    ([f"seed={','.join(str(i) for i in range(10_000))}"], "10,000"),
    ([f"seed={','.join(str(i) for i in range(100))}", f"lora.r={','.join(str(i) for i in range(1, 101))}"],
     "10,000"),
    ([f"{field}={','.join(str(i) for i in range(1, 201))}" for field in ("lora.r", "lora.alpha", "seed",
                                                                        "train.batch_size")], "1,600,000,000"),
])
def test_a_huge_grid_is_counted_and_refused_before_it_is_made(tmp_path: Path, sets: list[str], count: str) -> None:
    argv = ["sweep", str(base_spec(tmp_path)), *[a for s in sets for a in ("--set", s)], "--plan"]
    start = time.perf_counter()
    line = refused(*argv, code=2, timeout=20)
    assert time.perf_counter() - start < 10
    assert f"make {count} variants, over the limit of 256" in line and "--max-variants" in line, line


def test_the_limit_can_be_raised(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    line = refused("sweep", str(spec), "--set", "lora.r=1,2,3", "--plan", "--max-variants", "2", code=2)
    assert line.startswith("sweep: 3 values of --set make 3 variants, over the limit of 2")
    code, _, err = cli("sweep", str(spec), "--set", "lora.r=1,2,3", "--max-variants", "3",
                         "--write", str(tmp_path / "out"))
    assert code == 0, err[-2000:]
    assert len(list((tmp_path / "out").iterdir())) == 3


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_variants_file_that_is_no_file_is_refused_without_reading(tmp_path: Path, kind: str) -> None:
    variants = {"fifo": tmp_path / "v.yaml", "device": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(variants)
    line = refused("sweep", str(base_spec(tmp_path)), "--variants", str(variants), "--plan", code=2, timeout=20)
    assert line.startswith(f"{variants}: a ") and line.endswith(", not a file; give --variants a YAML file"), line


# --- gc -------------------------------------------------------------------------------------------

def artifact(store: Path, stage: str, key: str) -> Path:
    folder = store / stage / key
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_gc_skips_a_fifo_in_runs_and_says_so(tmp_path: Path) -> None:
    kept, orphan = artifact(tmp_path, "model", "m1"), artifact(tmp_path, "train", "t1")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text('{"stages": [{"stage": "model", "key": "m1"}]}')
    os.mkfifo(tmp_path / "runs" / "b.json")
    code, out, err = cli("gc", "--store", str(tmp_path), timeout=20)
    assert code == 0 and not err, err
    assert f"{tmp_path / 'runs' / 'b.json'}: a FIFO, not a run record: skipped" in out
    assert kept.is_dir() and not orphan.exists()


@pytest.mark.parametrize("target", ["/dev/zero", "a.json", "loop.json"])
def test_gc_refuses_a_record_that_is_a_symlink_and_removes_nothing(tmp_path: Path, target: str) -> None:
    orphan = artifact(tmp_path, "train", "t1")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text('{"stages": [{"stage": "model", "key": "m1"}]}')
    link = tmp_path / "runs" / "loop.json" if target == "loop.json" else tmp_path / "runs" / "z.json"
    link.symlink_to(target)
    for dry in ([], ["--dry-run"]):
        line = refused("gc", "--store", str(tmp_path), *dry, code=6, timeout=20)
        assert line.startswith(f"{link}: run record cannot be read (a symbolic link;") and "gc removed nothing" in line
    assert orphan.is_dir()


def test_gc_refuses_an_oversized_record(tmp_path: Path) -> None:
    orphan = artifact(tmp_path, "train", "t1")
    (tmp_path / "runs").mkdir()
    with open(tmp_path / "runs" / "big.json", "wb") as handle:
        handle.truncate(65 * 2**20)  # sparse: no disk
    line = refused("gc", "--store", str(tmp_path), code=6)
    assert "run record cannot be read (over 64 MiB)" in line
    assert orphan.is_dir()
