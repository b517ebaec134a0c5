"""A tiny spec of the tests' own (fast), run once per session into a shared store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"

TINY = f"""
name: tiny-test
seed: 7
model:
  source: init
  init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}
  quantization: nf4
data:
  train: {{path: {DEMO / "medmc_train.jsonl"}}}
  template: plain
  max_rows: 96
  max_length: 256
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{epochs: 2, learning_rate: 3e-3, batch_size: 8, save_steps: 10}}
export: {{merged: true}}
eval:
  benchmarks: [{{name: demo, path: {DEMO / "medmc_test.jsonl"}, limit: 24}}]
"""


def runner(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` as a user runs it: a real process."""
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


@dataclass(frozen=True)
class Tiny:
    spec: Path
    store: Path
    folder: Path
    output: str  # stdout and stderr of the first run
    artifacts: dict[str, Path]  # the first run's artifact of each stage (other tests add more to the store)

    def digests(self) -> dict[str, tuple[str, str]]:
        """(key, content digest) of each stage of the first run."""
        out = {}
        for stage, folder in self.artifacts.items():
            manifest = json.loads((folder / "manifest.json").read_text())
            out[stage] = (manifest["key"], manifest["digest"])
        return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    folder = tmp_path_factory.mktemp("tiny")
    spec = folder / "tiny.yaml"
    spec.write_text(TINY)
    store = folder / "store"
    done = runner("run", str(spec), "--store", str(store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The summary's last lines name each stage's artifact: "  train   /path/to/store/train/<key>".
    found = dict(re.findall(r"^  (model|data|train|export|eval)\s+(/\S+)$", done.stdout, re.MULTILINE))
    assert len(found) == 5, done.stdout[-2000:]
    return Tiny(spec, store, folder, done.stdout + done.stderr, {k: Path(v) for k, v in found.items()})


def memory_bench(sizes: str, tmp_path: Path, *flags: str) -> list[dict[str, object]]:
    """Rows of bench/memory.py (predicted vs measured peak) for the given model sizes (and its flags)."""
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--sizes", sizes, "--json", str(out),
                           "--png", str(tmp_path / "memory.png"), *flags],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def statuses(plan_output: str) -> dict[str, str]:
    """{stage: status word} from `runner plan` output (lines: stage, key, status, reasons)."""
    stages = ("model", "data", "train", "export", "eval")
    return {line.split()[0]: line.split()[2].rstrip(",") for line in plan_output.splitlines()
            if line.split() and line.split()[0] in stages}


def only_artifact(store: Path, stage: str) -> Path:
    found = [p for p in (store / stage).iterdir() if (p / "manifest.json").is_file()]
    assert len(found) == 1, found
    return found[0]


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `mount` for the block (a full disk, a read-only file system), or a skip."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# A tiny run of its own with trackers and the clinical metrics on (a fresh store, 6 steps), once per session:
# test_trackers.py reads its TensorBoard and MLflow logs, test_eval_metrics.py its metrics.json.
EXTRA = f"""
  perplexity: {{path: {DEMO / "medmc_test.jsonl"}, field: question, max_texts: 10}}
  generation: {{max_new_tokens: 8}}
logging: {{report_to: [tensorboard, mlflow], dir: logs}}
"""


def tracked_spec(logging: bool = True) -> str:
    text = TINY.replace("train: {epochs: 2,", "train: {max_steps: 6,").replace("max_rows: 96", "max_rows: 64")
    text = text.replace("limit: 24}]", f"limit: 24}}, {{name: demo-qa, format: qa, path: {DEMO / 'medmc_test.jsonl'}, limit: 6}}]")
    return text + (EXTRA if logging else EXTRA.split("logging:")[0])


@pytest.fixture(scope="session")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "spec.yaml").write_text(tracked_spec())
    done = runner("run", str(folder / "spec.yaml"), "--store", str(folder / "store"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = dict(re.findall(r"^  (train|eval)\s+(/\S+)$", done.stdout, re.MULTILINE))
    return {"folder": folder, "stdout": done.stdout, "train": Path(found["train"]), "eval": Path(found["eval"])}
