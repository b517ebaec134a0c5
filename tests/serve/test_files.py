"""/v1/files through the real server and the official client: list (limit/after), retrieve, content,
delete; ids matched exactly; empty or non-JSONL uploads refused; a raw document trained on by its id
(`format: text`); an upload named by id in a spec."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import yaml
from conftest import KEY, Server
from spec import tiny_spec

ROWS = "".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                        {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(12))
NOTES = "# Imatinib\n\nImatinib inhibits the BCR-ABL tyrosine kinase of chronic myeloid leukemia.\n" * 20


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_files_are_listed_paged_read_and_deleted(client: openai.OpenAI) -> None:
    first = client.files.create(file=("first.jsonl", ROWS.encode()), purpose="fine-tune")
    second = client.files.create(file=("second.md", NOTES.encode()), purpose="fine-tune")
    assert first.id != second.id and first.bytes == len(ROWS.encode()) and second.filename == "second.md"
    ids = [f.id for f in client.files.list()]
    assert first.id in ids and second.id in ids
    one = client.files.list(limit=1)
    assert len(one.data) == 1 and one.has_more
    rest = client.files.list(limit=1000, after=one.data[0].id)
    assert one.data[0].id not in {f.id for f in rest.data} and len(rest.data) == len(ids) - 1
    assert client.files.retrieve(first.id).filename == "first.jsonl"
    assert client.files.content(first.id).text == ROWS and client.files.content(second.id).text == NOTES
    assert client.files.delete(second.id).deleted
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.files.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(second.id)
    assert second.id not in {f.id for f in client.files.list()}


def test_an_id_matches_exactly_never_by_prefix(client: openai.OpenAI) -> None:
    upload = client.files.create(file=("exact.jsonl", ROWS.encode()), purpose="fine-tune")
    for partial in (upload.id[:6], upload.id[:12], upload.id + "0"):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(partial)
        with pytest.raises(openai.BadRequestError, match="training_file"):
            client.fine_tuning.jobs.create(model="serve-tiny", training_file=partial)


def test_empty_or_non_row_uploads_are_refused_saying_why(client: openai.OpenAI) -> None:
    for name, data, said in (("empty.jsonl", b"", "empty"), ("blank.jsonl", b"\n  \n", "empty"),
                             ("list.jsonl", b"[1, 2]\n", "line 1 is a JSON list"),
                             ("bad.jsonl", b'{"a": 1}\nnot json\n', "line 2 is not JSON"),
                             ("empty.md", b"  \n", "needs some text")):
        with pytest.raises(openai.BadRequestError, match=said):
            client.files.create(file=(name, data), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("rows.jsonl", ROWS.encode()), purpose="batch")


def _ended(client: openai.OpenAI, job_id: str, seconds: float = 240) -> openai.types.fine_tuning.FineTuningJob:
    deadline = time.time() + seconds
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, f"job {job_id} did not end within {seconds} s"
        time.sleep(0.5)
    return job


def test_a_raw_document_trains_by_its_file_id(client: openai.OpenAI, server: Server) -> None:
    notes = client.files.create(file=("notes.md", NOTES.encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=notes.id, suffix="notes",
                                         hyperparameters={"n_epochs": 1})
    written = yaml.safe_load((server.store / "jobs" / f"{job.id}.yaml").read_text())
    assert written["data"]["format"] == "text" and written["data"]["train"]["path"].endswith(".md")
    done = _ended(client, job.id)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert done.status == "succeeded", events[-20:]
    assert done.fine_tuned_model == "serve-tiny-notes"


def test_a_spec_names_an_upload_by_its_id(client: openai.OpenAI, server: Server) -> None:
    rows = (server.folder / "data" / "medmc_train.jsonl").read_bytes()
    upload = client.files.create(file=("medmc.jsonl", rows), purpose="fine-tune")
    spec = yaml.safe_load(tiny_spec("serve-by-id"))
    spec["data"]["train"]["path"] = upload.id
    job = client.fine_tuning.jobs.create(model="serve-tiny", training_file=upload.id, extra_body={"spec": spec})
    try:
        written = yaml.safe_load((server.store / "jobs" / f"{job.id}.yaml").read_text())
        stored = written["data"]["train"]["path"]
        assert stored.startswith(str(server.store / "files")) and Path(stored).read_bytes() == rows
    finally:
        client.fine_tuning.jobs.cancel(job.id)
    spec["data"]["train"]["path"] = "file-" + "0" * 24
    with pytest.raises(openai.BadRequestError, match=r"data\.train\.path: no upload 'file-0+'"):
        client.fine_tuning.jobs.create(model="serve-tiny", training_file=upload.id, extra_body={"spec": spec})
