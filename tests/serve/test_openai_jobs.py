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

from runner.serve.jobs.jobqueue import JobQueue
from runner.serve.jobs.openai_fields import HYPERPARAMETERS, in_fields, job_fields, spec_from_openai
from runner.serve.registry import Entry
from runner.serve.routes.files import router as files_router
from runner.serve.routes.jobs import router
from runner.spec.typed import parse_spec

ROWS = [{"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{2 * i}."}]} for i in range(16)]
CHAT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def entry(name: str = "serve-tiny") -> Entry:
    spec = parse_spec(tiny_spec(name), source="tiny", base_dir=Path("/nowhere"))
    return Entry(name, "adapter", "k" * 64, Path("/nowhere/model"), spec, cast(Any, None), 0)


def files(known: dict[str, Path], kind: str = "jsonl") -> Any:
    return lambda file_id: (known[file_id], kind) if file_id in known else None


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
    assert spec["model"] == json.loads(json.dumps(base["model"])) and spec["lora"] == json.loads(json.dumps(base["lora"]))
    assert spec["train"]["save_steps"] == 10 and spec["eval"]["queries"] == list(base["eval"]["queries"])
    shown = job_fields(fields, spec)
    assert shown["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5,
                                        "learning_rate": pytest.approx(1.5e-3), "lora_r": 8, "lora_alpha": 16,
                                        "lora_dropout": 0.0}
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
    odd = {"training_file": "file-a", "method": {"type": "supervised", "supervised": [1]}}
    assert spec_from_openai(odd, entry(), files({"file-a": Path("/a")}))["train"]["epochs"] == 3  # no 500
    with pytest.raises(HTTPException, match="hyperparameters: 5 is not an object"):
        spec_from_openai({"training_file": "file-a", "hyperparameters": 5}, entry(), files({"file-a": Path("/a")}))
    with pytest.raises(HTTPException) as missing:
        spec_from_openai({}, entry(), files({}))
    assert "training_file: required" in missing.value.detail


def test_hyperparameters_are_bounded_and_unknown_keys_refused() -> None:
    def refused(given: dict[str, Any]) -> str:
        with pytest.raises(HTTPException) as caught:
            spec_from_openai({"training_file": "file-a", "hyperparameters": given}, entry(), files({"file-a": Path("/a")}))
        detail: str = caught.value.detail
        assert caught.value.status_code == 400 and not detail.startswith("the spec is not valid")
        return detail

    assert "hyperparameters.n_epochs: 1000000000 is above the maximum 50" in refused({"n_epochs": 1_000_000_000})
    assert "hyperparameters.batch_size: 100000 is above the maximum 256" in refused({"batch_size": 100_000})
    assert "learning_rate_multiplier: 1000.0 is above the maximum 10" in refused({"learning_rate_multiplier": 1e3})
    assert "hyperparameters.lora_r: 0 is below the minimum" in refused({"lora_r": 0})
    unknown = refused({"n_epoch": 2})
    assert "hyperparameters.n_epoch: not a known hyperparameter" in unknown
    assert all(name in unknown for name in HYPERPARAMETERS)
    lora = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1}
    spec = spec_from_openai({"training_file": "file-a", "hyperparameters": lora}, entry(), files({"file-a": Path("/a")}))
    assert spec["lora"]["r"] == 4 and spec["lora"]["alpha"] == 8 and spec["lora"]["dropout"] == 0.1


def test_a_document_upload_trains_as_text_and_evaluation_sets_eval_keys(tmp_path: Path) -> None:
    fields = {"training_file": "file-a", "evaluation": {"queries": ["What is CML?"], "compare_base": False}}
    spec = spec_from_openai(fields, entry(), files({"file-a": tmp_path / "notes.md"}, "text"))
    assert spec["data"]["format"] == "text" and spec["eval"]["queries"] == ["What is CML?"]
    assert spec["eval"]["compare_base"] is False
    with pytest.raises(HTTPException, match="evaluation.nope: not an `eval` key"):
        spec_from_openai({"training_file": "file-a", "evaluation": {"nope": 1}}, entry(), files({"file-a": Path("/a")}))
    with pytest.raises(HTTPException, match="training_file: 'file-a' is a job's result file"):
        spec_from_openai({"training_file": "file-a"}, entry(), files({"file-a": Path("/a")}, "csv"))
    assert in_fields("train.batch_size: must divide ... (spec:12:3)") == "hyperparameters.batch_size: must divide ..."


class Models:
    def __init__(self, known: Entry) -> None:
        self.known = known

    def get(self, model_id: str) -> Entry | None:
        return self.known if model_id == self.known.id else None


def test_the_endpoint_refuses_an_unknown_model_or_file_and_writes_the_spec(tmp_path: Path) -> None:
    app = FastAPI()
    app.include_router(router)
    app.include_router(files_router)
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
    assert job["model"] == "serve-tiny" and job["hyperparameters"]["n_epochs"] == 1
    assert job["status"] == "validating_files" and job["checks"] == [["training_file", uploaded["id"]]]
    written = yaml.safe_load((tmp_path / "jobs" / f"{job['id']}.yaml").read_text())
    assert written["name"] == "serve-tiny-oa" and written["data"]["format"] == "chat"
    assert Path(written["data"]["train"]["path"]).read_bytes() == CHAT


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _ended(client: openai.OpenAI, job_id: str, seconds: float = 240) -> Any:
    deadline = time.time() + seconds
    while (state := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, f"the job did not finish within {seconds} s"
        time.sleep(0.5)
    return state


def test_the_server_refuses_unbounded_or_unknown_hyperparameters_naming_them(server: Server) -> None:
    client = _client(server)
    uploaded = client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")
    for given, said in (({"n_epochs": 1_000_000_000}, "hyperparameters.n_epochs: 1000000000 is above the maximum 50"),
                        ({"batch_size": 0}, "hyperparameters.batch_size: 0 is below the minimum"),
                        ({"lora_r": 4096}, "hyperparameters.lora_r: 4096 is above the maximum 256"),
                        ({"n_epoch": 2}, "hyperparameters.n_epoch: not a known hyperparameter; the known ones are n_epochs")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id, hyperparameters=given)  # type: ignore[arg-type]
        body = cast(dict[str, Any], caught.value.body)
        assert said in body["message"] and body["type"] == "invalid_request_error"
        assert body["message"].startswith("the job's fields are not valid")  # no spec was sent: not "the spec"
    for evaluation, said in (({"nope": 1}, "evaluation.nope: not an `eval` key; the known ones are benchmarks"),
                             ({"compare_base": "yes"}, "evaluation.compare_base: ")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id,
                                           extra_body={"evaluation": evaluation})
        message = cast(dict[str, Any], caught.value.body)["message"]
        assert said in message and "(spec:" not in message, message
    assert not [j for j in client.fine_tuning.jobs.list(limit=1000) if j.training_file == uploaded.id]


def test_a_wrong_shape_file_fails_validating_files_in_the_rows_terms(server: Server) -> None:
    client = _client(server)
    rows = b"".join(json.dumps({"prompt": f"{i}?", "completion": f"{i}."}).encode() + b"\n" for i in range(4))
    uploaded = client.files.create(file=("prompts.jsonl", rows), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id)
    assert job.status == "validating_files"
    state = _ended(client, job.id)
    assert state.status == "failed" and state.error is not None and state.error.code == "invalid_training_file"
    assert state.error.param == "training_file"
    for part in (uploaded.id, "4 row(s)", "line 1", "no `messages` list", "prompt, completion"):
        assert part in state.error.message
    assert "data.format" not in state.error.message and "spec" not in state.error.message


def test_a_spec_jobs_record_shows_the_specs_seed_and_hyperparameters(server: Server) -> None:
    client = _client(server)
    spec = tiny_spec("serve-shown").replace("seed: 7", "seed: 11")
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file="unused", extra_body={"spec": spec})
    client.fine_tuning.jobs.cancel(job.id)
    assert job.seed == 11
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 8
    assert (job.hyperparameters.model_extra or {})["learning_rate"] == pytest.approx(3e-3)


def test_a_job_from_openai_fields_trains_an_adapter_that_is_served(server: Server) -> None:
    client = _client(server)
    uploaded = client.files.create(file=("chat.jsonl", CHAT), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=uploaded.id, suffix="oa",
                                         hyperparameters={"n_epochs": 1, "batch_size": 4, "lora_r": 4, "lora_alpha": 8})  # type: ignore[arg-type]
    state = _ended(client, job.id)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    assert state.status == "succeeded", [e.message for e in events][-20:]
    assert state.fine_tuned_model == "serve-tiny-oa" and state.hyperparameters.n_epochs == 1
    assert (state.hyperparameters.model_extra or {})["lora_r"] == 4
    assert yaml.safe_load((server.store / "jobs" / f"{job.id}.yaml").read_text())["lora"]["r"] == 4
    assert "serve-tiny-oa" in {m.id for m in client.models.list()}
    # its metrics as OpenAI's result file, and the tokens it trained on
    (result,) = state.result_files
    assert client.files.retrieve(result).purpose == "fine-tune-results"
    table = client.files.content(result).text.splitlines()
    assert table[0] == "step,epoch,train_loss,valid_loss,learning_rate,seconds" and len(table) > 1
    assert state.trained_tokens is not None and state.trained_tokens > 0
    # its events: each stamped when its line was written, no progress bars, paged
    assert len({e.created_at for e in events}) > 1 and all(job.created_at <= e.created_at for e in events)
    assert not [e.message for e in events if "%|" in e.message or "it/s]" in e.message]
    assert any("train: running" in e.message for e in events)
    two = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert [e.id for e in two.data] == [e.id for e in events[:2]] and two.has_more
    after = client.fine_tuning.jobs.list_events(job.id, limit=2, after=two.data[-1].id)
    assert [e.id for e in after.data] == [e.id for e in events[2:4]]
    one = client.fine_tuning.jobs.list(limit=1)
    assert len(one.data) == 1 and one.has_more and one.data[0].id == job.id
    assert client.fine_tuning.jobs.list(limit=1, after=job.id).data[0].id != job.id


def test_events_are_the_logs_lines_stamped_as_read_without_progress_bars(tmp_path: Path) -> None:
    from runner.serve.jobs.outputs import Events, message

    bar = " 39%|███▉      | 13/33 [00:04<00:06, 3.1it/s, loss=6.5587]"
    assert message(f"\r{bar}\r{bar}") is None and message("\r  0%|          | 0/3 [00:00<?, ?it/s]") is None
    assert message("Map: 100%|██████████| 16/16 [00:00<00:00, 120.1 examples/s]") is None
    assert message(f"\r{bar}\r      \r[runner] train: done in 4.1s") == "[runner] train: done in 4.1s"
    assert message("   ") is None and message("error: no rows") == "error: no rows"
    events = Events(tmp_path, "ftjob-abc")
    log = tmp_path / "ftjob-abc.log"
    log.write_bytes(b"[runner] data: running 0123456789ab\n" + bar.encode() + b"\r")
    events.pump()
    log.write_bytes(log.read_bytes() + b"\n[runner] train: running\nhalf a li")
    time.sleep(1.1)  # a second later: the next line's own time
    events.pump()
    events.pump(final=True)
    listed = events.listed(0)
    assert [e["message"] for e in listed] == ["[runner] data: running 0123456789ab", "[runner] train: running",
                                             "half a li"]
    assert listed[0]["created_at"] < listed[1]["created_at"] and listed[0]["id"] == "ftevent-abc-0"
