"""The export as others load it: pushed to the Hub, read by PEFT without the runner, by vLLM's loader.

The Hugging Face Hub cannot be reached from the tests (no network), so the push goes to a local HTTP
stand-in for the Hub's API on loopback (hubstandin.py), through the real huggingface_hub client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

from tests.integration.conftest import TINY, Tiny, runner
from tests.integration.hubstandin import hub_standin

TOKEN = "hf_standin_SECRET_0123456789abcdef"


def push_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    return env | {"HF_ENDPOINT": url, "HF_TOKEN": TOKEN}


def test_push_uploads_the_export_with_the_hub_metadata_once_and_never_writes_the_token(tiny: Tiny) -> None:
    spec = tiny.folder / "push.yaml"
    spec.write_text(TINY.replace("export: {merged: true}", "export: {merged: true, push: {repo_id: me/tiny-lora}}"))
    with hub_standin() as hub:
        first = runner("run", str(spec), "--store", str(tiny.store), env=push_env(hub.url))
        assert first.returncode == 0, first.stderr[-3000:]
        assert "export: cached" in first.stdout  # a push is in no key: the export is the tiny run's
        again = runner("run", str(spec), "--store", str(tiny.store), env=push_env(hub.url))
        forced = runner("run", str(spec), "--store", str(tiny.store), "--push", env=push_env(hub.url))
    assert again.returncode == 0 and forced.returncode == 0, again.stderr[-2000:] + forced.stderr[-2000:]
    assert [c["repo"] for c in hub.commits] == ["me/tiny-lora", "me/tiny-lora"]  # the re-run did not push; --push did
    assert "push: already done by an earlier run" in again.stdout
    commit = hub.commits[0]
    files = commit["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "metadata.json",
            "merged/config.json", "merged/model.safetensors", "merged/tokenizer.json"} <= set(files)
    export = tiny.artifacts["export"]
    assert files["adapter_model.safetensors"] == (export / "adapter" / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    metrics = json.loads((tiny.artifacts["eval"] / "metrics.json").read_text())
    assert meta["library_name"] == "peft" and "base_model" not in meta  # a random-initialised base has no Hub id
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "demo" and result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == metrics["benchmarks"]["demo"]["tuned"]["acc"]
    created = hub.repos["me/tiny-lora"]
    assert created.get("visibility") == "private" or created.get("private") is True, created  # the schema's default
    # The record holds the commit the push made; the skipped re-run points at it.
    records = sorted((tiny.store / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)[-3:]
    pushes = [json.loads(p.read_text())["side_effects"]["push"] for p in records]
    assert pushes[0]["result"]["commit"] == commit["oid"] and pushes[1]["skipped"] is True
    assert pushes[1]["earlier"]["commit"] == commit["oid"] and pushes[2]["result"]["commit"] == hub.commits[1]["oid"]
    # The token went to the Hub in the Authorization header and nowhere else.
    assert all(h.get("authorization") in (None, f"Bearer {TOKEN}") for _, _, h in hub.requests)
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)
    written = [p for p in tiny.store.rglob("*") if p.is_file()] + [spec]
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert TOKEN not in first.stdout + first.stderr + again.stdout + again.stderr + forced.stdout + forced.stderr
    assert not [path for path, data in files.items() if TOKEN.encode() in data]


def test_push_without_a_token_is_one_line_and_keeps_the_stages(tiny: Tiny) -> None:
    spec = tiny.folder / "push-no-token.yaml"
    spec.write_text(TINY.replace("export: {merged: true}", "export: {merged: true, push: {repo_id: me/other}}"))
    env = {k: v for k, v in push_env("http://127.0.0.1:9").items() if k != "HF_TOKEN"}
    done = runner("run", str(spec), "--store", str(tiny.store), env=env)
    assert done.returncode == 5
    assert done.stderr.strip().splitlines()[-1].startswith("error: export.push: set HF_TOKEN")


def test_the_adapter_loads_with_peft_in_a_process_without_the_runner(tiny: Tiny, tmp_path: Path) -> None:
    adapter = tiny.artifacts["export"] / "adapter"
    base = tiny.artifacts["model"] / "weights"
    # -I and -S: no PYTHONPATH, no user site, no .pth files (the editable install's finder is one);
    # site-packages is put on the path by hand, so torch, transformers and peft are there and runner is not.
    code = f"""
import importlib.util, sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
assert importlib.util.find_spec("runner") is None, "runner is importable"
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base)!r}), {str(adapter)!r})
ids = torch.tensor([[1, 20, 30, 40]])
with torch.no_grad():
    tuned = model(input_ids=ids).logits
    with model.disable_adapter():
        plain = model(input_ids=ids).logits
print("loaded", type(model).__name__, float((tuned - plain).abs().max()))
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, diff = done.stdout.split()[1:]
    assert kind == "PeftModelForCausalLM" and float(diff) > 0  # the adapter's weights are applied


def test_adapter_config_has_what_vllms_lora_loader_reads(tiny: Tiny) -> None:
    # vLLM's PEFTHelper.from_dict (vllm/lora/peft_helper.py): r, lora_alpha, target_modules required;
    # modules_to_save must be empty and use_dora false; bias read; use_rslora chooses the scaling.
    config = json.loads((tiny.artifacts["export"] / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 8 and config["lora_alpha"] == 16
    # PEFT writes "all-linear" resolved to module paths; vLLM matches a module by its last name part.
    assert isinstance(config["target_modules"], list)
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"}
    assert not config.get("modules_to_save") and config.get("use_dora") is False
    assert config["bias"] == "none" and config.get("use_rslora") is False
    assert "base_model_name_or_path" in config


def test_the_pushed_adapter_config_names_a_hub_base_by_id_and_commit(tmp_path: Path) -> None:
    from runner.stages.export.push import _stage_files

    adapter = tmp_path / "export" / "adapter"
    adapter.mkdir(parents=True)
    snapshot = "/root/.cache/huggingface/hub/models--org--base/snapshots/" + "c" * 40
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": snapshot}))
    (adapter / "metadata.json").write_text(json.dumps({"base_model": {"id": "org/base", "commit": "c" * 40}, "metrics": {}}))
    upload = tmp_path / "upload"
    assert sorted(_stage_files(tmp_path / "export", upload)) == ["adapter_config.json", "metadata.json"]
    pushed = json.loads((upload / "adapter_config.json").read_text())
    assert pushed == {"r": 8, "base_model_name_or_path": "org/base", "revision": "c" * 40}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == snapshot  # untouched
