"""A fine-tuning job from OpenAI's own fields (no `spec`): the mapping onto a spec as a pure function,
the endpoint's refusals through a bare app, and one job through the real server with the openai client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import openai
import pytest
import yaml
from conftest import KEY, Server
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from spec import tiny_spec

from runner.serve.jobs import JobQueue, router
from runner.serve.models import Entry
from runner.serve.openai_jobs import job_fields, spec_from_openai, stored_file
from runner.spec import parse_spec

ROWS = [{"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{2 * i}."}]} for i in range(16)]
CHAT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def entry(name: str = "serve-tiny") -> Entry:
    spec = parse_spec(tiny_spec(name), source="tiny", base_dir=Path("/nowhere"))
    return Entry(name, "adapter", "k" * 64, Path("/nowhere/model"), spec, cast(Any, None), 0)


def files(known: dict[str, Path]) -> Any:
    return known.get


def test_openai_fields_map_onto_the_base_runs_spec(tmp_path: Path) -> None:
    train, val = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    fields = {"model": "serve-tiny", "training_file": "file-a", "validation_file": "file-b", "suffix": "oa",
              "seed": 3, "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}
    spec = spec_from_openai(fields, entry(), files({"file-a": train, "file-b": val}))
    assert spec["name"] == "serve-tiny-oa" and spec["seed"] == 3
    assert spec["data"]["format"] == "chat" and spec["data"]["fields"]["messages"] == "messages"
    assert spec["data"]["template"] == "chat" and spec["data"]["system_prompt"] is None  # rows bring their own
    assert spec["data"]["train"]["path"] == str(train) and spec["data"]["validation"]["path"] == str(val)
    assert spec["data"]["max_rows"] is None  # the base's cap was for its own data
    assert spec["train"]["epochs"] == 2 and spec["train"]["batch_size"] == 4
    assert spec["train"]["learning_rate"] == pytest.approx(3e-3 * 0.5)
    base = entry().spec.as_dict()
    assert spec["model"] == json.loads(json.dumps(base["model"])) and spec["lora"] == base["lora"]
    assert spec["train"]["save_steps"] == 10 and spec["eval"]["queries"] == list(base["eval"]["queries"])
    shown = job_fields(fields, spec)
    assert shown["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert shown["validation_file"] == "file-b" and shown["seed"] == 3
    train.write_bytes(CHAT)
    val.write_bytes(CHAT)
    assert parse_spec(yaml.safe_dump(spec), base_dir=tmp_path).data.format == "chat"  # plain data, a valid spec


def test_auto_and_absent_keep_the_base_specs_values(tmp_path: Path) -> None:
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    for given in ({"hyperparameters": auto}, {}, {"method": {"type": "supervised", "supervised": {"hyperparameters": auto}}}):
        spec = spec_from_openai({"training_file": "file-a", **given}, entry(), files({"file-a": tmp_path}))
        assert spec["train"]["epochs"] == 3 and spec["train"]["batch_size"] == 8
        assert spec["train"]["learning_rate"] == 3e-3 and spec["seed"] == 7 and spec["name"] == "serve-tiny-ft"
    nested = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "learning_rate_multiplier": 2}}}
    spec = spec_from_openai({"training_file": "file-a", "method": nested}, entry(), files({"file-a": tmp_path}))
    assert spec["train"]["epochs"] == 1 and spec["train"]["learning_rate"] == pytest.approx(6e-3)


def test_unknown_files_and_bad_values_are_all_listed() -> None:
    bad = {"training_file": "file-nope", "validation_file": "file-gone", "method": {"type": "dpo"},
           "hyperparameters": {"n_epochs": 0, "batch_size": 2.5, "learning_rate_multiplier": "x"}}
    with pytest.raises(HTTPException) as caught:
        spec_from_openai(bad, entry(), files({}))
    assert caught.value.status_code == 400
    for part in ("'file-nope'", "'file-gone'", "'dpo'", "n_epochs", "batch_size", "learning_rate_multiplier"):
        assert part in caught.value.detail
    odd = {"training_file": "file-a", "method": {"type": "supervised", "supervised": [1]}, "hyperparameters": 5}
    assert spec_from_openai(odd, entry(), files({"file-a": Path("/a")}))["train"]["epochs"] == 3  # no 500
    with pytest.raises(HTTPException) as missing:
        spec_from_openai({}, entry(), files({}))
    assert "training_file: required" in missing.value.detail


def test_stored_file_finds_uploads_by_id_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    digest = "ab" * 32
    (tmp_path / "files" / f"{digest}.jsonl").write_bytes(CHAT)
    assert stored_file(tmp_path, f"file-{digest[:24]}") == (tmp_path / "files" / f"{digest}.jsonl").resolve()
    for wrong in ("file-cd", "file-*", "file-../x", "ab", "file-"):
        assert stored_file(tmp_path, wrong) is None


class Models:
    def __init__(self, known: Entry) -> None:
        self.known = known

    def get(self, model_id: str) -> Entry | None:
        return self.known if model_id == self.known.id else None


def test_the_endpoint_refuses_an_unknown_model_or_file_and_writes_the_spec(tmp_path: Path) -> None:
    app = FastAPI()
    app.include_router(router)
    app.state.store, app.state.registry = tmp_path, Models(entry())
    app.state.jobs = JobQueue(tmp_path)  # not started: nothing trains
    web = TestClient(app)
    missing = web.post("/v1/fine_tuning/jobs", json={"model": "nope", "training_file": "file-ab"})
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]
    unknown = web.post("/v1/fine_tuning/jobs", json={"model": "serve-tiny", "training_file": "file-ab"})
    assert unknown.status_code == 400 and "'file-ab'" in unknown.json()["detail"]
    assert web.post("/v1/fine_tuning/jobs", json={}).status_code == 400
    uploaded = web.post("/v1/files", files={"file": ("t.jsonl", CHAT)}, data={"purpose": "fine-tune"}).json()
    made = web.post("/v1/fine_tuning/jobs", json={"model": "serve-tiny", "training_file": uploaded["id"],
                                                  "hyperparameters": {"n_epochs": 1}, "suffix": "oa"})
    assert made.status_code == 200, made.text
    job = made.json()
    assert job["model"] == "serve-tiny" and job["hyperparameters"]["n_epochs"] == 1 and job["status"] == "queued"
    written = yaml.safe_load((tmp_path / "jobs" / f"{job['id']}.yaml").read_text())
    assert written["name"] == "serve-tiny-oa" and written["data"]["format"] == "chat"
    assert Path(written["data"]["train"]["path"]).read_bytes() == CHAT


def test_a_job_from_openai_fields_trains_an_adapter_that_is_served(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    uploaded = client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4}, suffix="oa")
    deadline = time.time() + 90
    while (state := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "the job did not finish within 90 s"
        time.sleep(0.5)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert state.status == "succeeded", events[-20:]
    assert state.fine_tuned_model == "serve-tiny-oa" and state.hyperparameters.n_epochs == 1
    assert "serve-tiny-oa" in {m.id for m in client.models.list()}
