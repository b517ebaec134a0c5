"""Beyond one device: two real gloo processes on CPU through `accelerate launch`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import Tiny, only_artifact, runner


def test_two_processes_train_one_adapter_and_the_loss_falls(tiny: Tiny, tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(tiny.spec.read_text().replace("seed: 7", "seed: 7\nhardware: {processes: 2}"))
    store = tmp_path / "store"
    for stage in ("model", "data"):  # shared with the single-process run: same keys
        (store / stage).mkdir(parents=True)
        only = tiny.artifacts[stage]
        (store / stage / only.name).symlink_to(only)
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train: launching 2 processes with accelerate (gloo on CPU)" in done.stdout
    assert "train: trained in 2 processes (gloo)" in done.stdout
    train = only_artifact(store, "train")
    assert len(list(train.glob("adapter/*.safetensors"))) == 1
    summary = json.loads((train / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"] and summary["eval_loss_after"] < summary["eval_loss_before"]
    assert train.name != tiny.artifacts["train"].name  # two processes is another computation
