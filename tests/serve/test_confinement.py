"""What the server reads and who may drive it, against real `runner serve` processes: report files
stay inside the store, a keyless server answers only loopback names (DNS rebinding), one key header,
spec paths stay inside the folders it was given, globs are bounded, and no error shows the store's
absolute path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import KEY, Server, _wait, free_port

from tests.integration.conftest import ROOT

AUTH = {"Authorization": f"Bearer {KEY}"}


def _post(server: Server, route: str, body: object, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, headers=AUTH, timeout=timeout)


def _eval_key(server: Server) -> Path:
    return next(p for p in (server.store / "eval").iterdir() if (p / "manifest.json").is_file())


def test_report_files_are_only_the_stores_own(server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the store")
    folder = _eval_key(server)
    (folder / "leak.txt").symlink_to(secret)
    try:
        assert httpx.get(f"{server.url}/v1/reports/{folder.name}/metrics.json", headers=AUTH).status_code == 200
        leak = httpx.get(f"{server.url}/v1/reports/{folder.name}/leak.txt", headers=AUTH)
        assert leak.status_code == 404 and "outside" not in leak.text
    finally:
        (folder / "leak.txt").unlink()
    elsewhere = tmp_path / "artifact"  # an eval key folder that is itself a link
    elsewhere.mkdir()
    (elsewhere / "manifest.json").write_text("{}")
    (elsewhere / "hostname.txt").write_text("outside the store")
    linked = server.store / "eval" / ("e" * 64)
    linked.symlink_to(elsewhere)
    try:
        assert httpx.get(f"{server.url}/v1/reports/{'e' * 64}/hostname.txt", headers=AUTH).status_code == 404
    finally:
        linked.unlink()


@pytest.fixture(scope="module")
def keyless(server: Server) -> Iterator[str]:
    """A second server over the same store, without a key (loopback only), reading the folder `shared`."""
    port = free_port()
    log = server.folder / "keyless.log"
    shared = server.folder / "shared"  # a folder only this server is given
    shared.mkdir(exist_ok=True)
    shutil.copyfile(server.folder / "data" / "medmc_train.jsonl", shared / "medmc_train.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_API_KEY"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(server.store),
                                    "--port", str(port), "--data-dir", str(shared)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_keyless_server_answers_only_loopback_names(keyless: str, server: Server) -> None:
    port = keyless.rsplit(":", 1)[1]
    for name in ("rebind.evil.example", f"rebind.evil.example:{port}", "10.0.0.1", "localhost.evil.example"):
        refused = httpx.get(f"{keyless}/v1/models", headers={"Host": name})
        assert refused.status_code == 403, (name, refused.text)
        assert "--api-key" in refused.json()["error"]["message"]
    for name in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2", f"[::1]:{port}"):
        assert httpx.get(f"{keyless}/v1/models", headers={"Host": name}).status_code == 200, name
    # with a key, any name: the key is what keeps a web page out
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH | {"Host": "rebind.evil.example"}).status_code == 200


def test_two_authorization_headers_are_refused(server: Server) -> None:
    headers = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {KEY}")]
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/v1/models", headers=headers[::-1]).status_code == 401


def test_a_long_lora_path_and_deep_json_are_4xx(server: Server) -> None:
    for path in ("x" * 300, "é" * 200, "a/" + "b" * 4000):
        answer = _post(server, "/v1/load_lora_adapter", {"lora_name": "long", "lora_path": path})
        assert 400 <= answer.status_code < 500, answer.text
    deep = "[" * 10_000 + "]" * 10_000 + "\n"
    upload = httpx.post(f"{server.url}/v1/files", headers=AUTH, files={"file": ("deep.jsonl", deep.encode())},
                        data={"purpose": "fine-tune"}, timeout=60)
    assert 400 <= upload.status_code < 500, upload.text


def test_a_prompt_past_the_context_is_a_400_at_once(server: Server) -> None:
    started = time.monotonic()
    answer = _post(server, "/v1/chat/completions", {"model": "serve-tiny", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "leukemia " * 20_000}]})
    assert answer.status_code == 400 and "context" in answer.json()["error"]["message"], answer.text
    assert time.monotonic() - started < 20
    short = _post(server, "/v1/chat/completions", {"model": "serve-tiny", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "hello"}]})
    assert short.status_code == 200, short.text


SPEC = """name: confined
model:
  source: init
  init: {{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 1024}}
data:
  train: {{path: {path!r}}}
  format: text
lora: {{r: 8, alpha: 16}}
train: {{epochs: 1, learning_rate: 3e-3, batch_size: 8}}
"""


@pytest.mark.parametrize("route", ["/v1/specs/validate", "/v1/specs/plan"])
def test_spec_routes_read_only_the_store_and_data_dirs(server: Server, tmp_path: Path, route: str) -> None:
    loop = server.store / "files" / "loop"
    loop.mkdir(parents=True, exist_ok=True)
    if not (loop / "self").is_symlink():
        (loop / "self").symlink_to(loop)
    (loop / "out").unlink(missing_ok=True)
    (loop / "out").symlink_to("/")  # a link out of the store: never followed
    outside = tmp_path / "corpus.txt"
    outside.write_text("a document outside every allowed folder\n")
    for path in ("/etc/passwd", "/**/*.txt", str(outside), str(tmp_path / "missing.txt"), "../../../../etc/hostname",
                 str(loop / "out" / "etc" / "hostname")):
        started = time.monotonic()
        answer = _post(server, route, {"spec": SPEC.format(path=path)})
        assert answer.status_code == 400, (path, answer.text)
        message = answer.json()["error"]["message"]
        assert "outside the folders this server reads (<store>" in message and "--data-dir" in message, message
        assert str(server.store) not in message and time.monotonic() - started < 10
    started = time.monotonic()
    looped = _post(server, route, {"spec": SPEC.format(path=str(loop / "**" / "*.txt"))}, timeout=30)
    assert looped.status_code == 200 and time.monotonic() - started < 20, looped.text
    body = looped.json()
    assert body["valid"] is False and "no file matches" in body["text"] and str(server.store) not in body["text"]


def test_a_data_dir_is_readable_and_only_on_the_server_given_it(server: Server, keyless: str) -> None:
    spec = SPEC.format(path=str(server.folder / "shared" / "medmc_train.jsonl")).replace("  format: text\n", "")
    given = httpx.post(f"{keyless}/v1/specs/validate", json={"spec": spec}, timeout=60)
    assert given.status_code == 200 and given.json()["valid"], given.text
    assert _post(server, "/v1/specs/validate", {"spec": spec}).status_code == 400


def test_no_answer_shows_the_stores_absolute_path(server: Server) -> None:
    outside = _post(server, "/v1/load_lora_adapter", {"lora_name": "o", "lora_path": "/"})
    missing = _post(server, "/v1/load_lora_adapter", {"lora_name": "m", "lora_path": "export/nope"})
    relative = _post(server, "/v1/specs/validate", {"spec": SPEC.format(path="missing.txt").replace("  format: text\n", "")})
    planned = _post(server, "/v1/specs/plan", {"spec": SPEC.format(path="missing.txt").replace("  format: text\n", "")})
    assert outside.status_code == 400 and "<store>" in outside.text and missing.status_code == 404
    assert "no such file" in relative.json()["text"] and "<store>/jobs/missing.txt" in relative.json()["text"]
    for answer in (outside, missing, relative, planned):
        assert str(server.store) not in answer.text and str(server.store.resolve()) not in answer.text, answer.text


def test_a_job_reads_only_the_store_and_data_dirs(server: Server, tmp_path: Path) -> None:
    """A job's spec, and the `evaluation` a job from OpenAI's fields sends, are held to the same folders
    as the spec routes: refused with a 400 before the job exists, whether or not the path is there."""
    before = _get_jobs(server)
    for path in ("/etc/passwd", str(tmp_path / "missing.txt"), "../../../../etc/hostname"):
        answer = _post(server, "/v1/fine_tuning/jobs", {"model": "serve-tiny", "training_file": "unused",
                                                         "spec": SPEC.format(path=path)})
        assert answer.status_code == 400, (path, answer.text)
        message = answer.json()["error"]["message"]
        assert "outside the folders this server reads (<store>" in message and str(server.store) not in message
    bench = {"benchmarks": [{"name": "leak", "format": "qa", "path": "/etc/passwd"}]}
    answer = _post(server, "/v1/fine_tuning/jobs", {"model": "serve-tiny", "training_file": "file-" + "0" * 24,
                                                     "evaluation": bench})
    assert answer.status_code == 400 and "eval.benchmarks[0].path" in answer.json()["error"]["message"], answer.text
    assert _get_jobs(server) == before


def _get_jobs(server: Server) -> list[str]:
    listed = httpx.get(f"{server.url}/v1/fine_tuning/jobs?limit=1000", headers=AUTH, timeout=30)
    return [job["id"] for job in listed.json()["data"]]


def test_a_job_gets_no_secret_and_pushes_only_where_the_operator_allows(server: Server, tmp_path: Path) -> None:
    """The server's key and the Hub and tracker tokens stay out of a job's process (read from its
    /proc/PID/environ while it trains); a job that asks to push is refused without `--allow-push`;
    a spec job's training length is bounded."""
    from spec import tiny_spec

    port, store, log = free_port(), tmp_path / "store", tmp_path / "secrets.log"
    env = dict(os.environ, RUNNER_API_KEY=KEY, HF_TOKEN="hf_secret_token", WANDB_API_KEY="wandb-secret")
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(store), "--port", str(port),
                                    "--data-dir", str(server.folder / "data")], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, log)
        spec = tiny_spec("secrets", max_steps=100000, data=server.folder / "data")
        pushed = spec + "export: {push: {repo_id: someone/elsewhere}}\n"
        refused = httpx.post(f"{url}/v1/fine_tuning/jobs", json={"model": "x", "training_file": "u", "spec": pushed},
                             headers=AUTH, timeout=60)
        assert refused.status_code == 400 and "--allow-push" in refused.json()["error"]["message"], refused.text
        endless = spec.replace("epochs: 3", "epochs: 1e300")
        assert httpx.post(f"{url}/v1/fine_tuning/jobs", json={"model": "x", "training_file": "u", "spec": endless},
                          headers=AUTH, timeout=60).status_code == 400
        job = httpx.post(f"{url}/v1/fine_tuning/jobs", json={"model": "x", "training_file": "u", "spec": spec},
                         headers=AUTH, timeout=60).json()
        deadline, seen = time.monotonic() + 300, None
        while seen is None and time.monotonic() < deadline:
            record = httpx.get(f"{url}/v1/fine_tuning/jobs/{job['id']}", headers=AUTH, timeout=30).json()
            pid = record.get("pid")
            if record["status"] == "running" and pid and Path(f"/proc/{pid}/environ").exists():
                seen = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            time.sleep(0.2)
        httpx.post(f"{url}/v1/fine_tuning/jobs/{job['id']}/cancel", headers=AUTH, timeout=30)
        assert seen is not None, "the job never ran"
        names = {entry.split(b"=", 1)[0].decode() for entry in seen if entry}
        assert "PATH" in names and not names & {"RUNNER_API_KEY", "HF_TOKEN", "WANDB_API_KEY"}, sorted(names)
    finally:
        process.terminate()
        process.wait(timeout=30)
