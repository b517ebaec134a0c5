"""`--engine vllm`: the `vllm serve` command built from a store (pure, checked here), the one-line
error where vLLM cannot run, and on a CUDA box with vllm, a real vLLM answering the store's names."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import ROOT, Server, free_port

from runner.serve.app import serve
from runner.serve.registry import Entry, Registry
from runner.serve.vllm import VllmError, adapter_rank, max_lora_rank, plan, vllm_command


def _entry(tmp: Path, kind: str, name: str, model_json: dict[str, Any], rank: int = 8) -> Entry:
    model_dir = tmp / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.json").write_text(json.dumps(model_json))
    adapter = None
    if kind == "adapter":
        adapter = tmp / name
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank,
                                                                 "rank_pattern": {"q_proj": rank * 2}}))
    profile = SimpleNamespace(quantization="nf4")  # the one profile field the command reads
    return Entry(name, kind, "k" * 64, model_dir, None, profile, 0, adapter, "base-kkkk" if adapter else None)  # type: ignore[arg-type]


def test_the_command_names_every_adapter_and_the_largest_rank_rounded_up(tmp_path: Path) -> None:
    base = _entry(tmp_path, "base", "base-kkkk", {"source": "init"})
    small = _entry(tmp_path, "adapter", "zeta", {"source": "init"}, rank=4)
    big = _entry(tmp_path, "adapter", "alpha", {"source": "init"}, rank=12)
    ranks = [(e, adapter_rank(e.adapter_dir)) for e in (small, big)]  # type: ignore[arg-type]
    assert [r for _, r in ranks] == [8, 24]  # rank_pattern's override counts
    command = vllm_command(base, ranks, "127.0.0.1", 8001)
    assert command[:3] == ["vllm", "serve", str(tmp_path / "model" / "weights")]

    def flags(name: str) -> str:
        return command[command.index(name) + 1]

    assert flags("--served-model-name") == "base-kkkk" and flags("--port") == "8001"
    assert flags("--max-lora-rank") == "32"  # 24 is not a rank vLLM takes
    assert flags("--max-loras") == "2" and flags("--quantization") == "bitsandbytes"
    at = command.index("--lora-modules")
    assert command[at + 1:] == [f"alpha={tmp_path / 'alpha'}", f"zeta={tmp_path / 'zeta'}"]
    assert "--enable-lora" in command and not any("key" in part.lower() for part in command)


def test_a_hub_base_is_served_at_its_recorded_commit_and_ranks_are_bounded(tmp_path: Path) -> None:
    base = _entry(tmp_path, "base", "base-kkkk", {"source": "hub", "id": "org/model", "revision": "abc123"})
    command = vllm_command(base, [], "0.0.0.0", 8000)
    assert command[2:5] == ["org/model", "--revision", "abc123"] and "--enable-lora" not in command
    assert max_lora_rank([1]) == 1 and max_lora_rank([64]) == 64 and max_lora_rank([65]) == 128
    with pytest.raises(VllmError, match="--engine runner"):
        max_lora_rank([1024])


def test_the_command_for_the_served_store(server: Server) -> None:
    command = plan(server.store, "127.0.0.1", 8000)
    adapter = Registry(server.store).scan()["serve-tiny"].adapter_dir
    model = command[2]
    assert Path(model).is_dir() and Path(model, "config.json").is_file()
    assert f"serve-tiny={adapter}" in command
    assert command[command.index("--max-lora-rank") + 1] == "8"


def _has_vllm() -> bool:
    import torch

    return torch.cuda.is_available() and shutil.which("vllm") is not None and importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(_has_vllm(), reason="CUDA and vllm are here: the gpu test runs vLLM instead")
def test_without_cuda_or_vllm_the_vllm_engine_is_a_one_line_error(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve(server.store, "127.0.0.1", free_port(), None, engine="vllm") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --engine vllm needs ")
    assert "drop --engine vllm" in err


@pytest.mark.gpu
@pytest.mark.skipif(not _has_vllm(), reason="needs a CUDA GPU and vllm")
def test_vllm_serves_the_store_under_the_same_names(server: Server, tmp_path: Path) -> None:
    port = free_port()
    code = (f"import sys; from pathlib import Path; from runner.serve.app import serve; "
            f"sys.exit(serve(Path({str(server.store)!r}), '127.0.0.1', {port}, None, engine='vllm'))")
    with open(tmp_path / "vllm.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline, url = time.time() + 600, f"http://127.0.0.1:{port}/v1"
        while True:
            assert process.poll() is None and time.time() < deadline, (tmp_path / "vllm.log").read_text()[-3000:]
            try:
                models = httpx.get(f"{url}/models", timeout=2).json()["data"]
                break
            except (httpx.HTTPError, KeyError, ValueError):
                time.sleep(2)
        assert "serve-tiny" in {m["id"] for m in models}
        r = httpx.post(f"{url}/completions", timeout=120, json={  # the plain template, by hand
            "model": "serve-tiny", "max_tokens": 8, "temperature": 0, "prompt": "Question: What treats gout?\nAnswer:"})
        assert r.status_code == 200 and r.json()["model"] == "serve-tiny", r.text
    finally:
        import os
        import signal

        os.killpg(process.pid, signal.SIGTERM)  # vllm serve and its engine workers: the group started here
        process.wait(timeout=60)
