"""One tiny training run into a store, and a real `runner serve` process over it on a free loopback
port (killed at the end: exactly the process started here)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec import demo_data, tiny_spec  # noqa: E402

from tests.integration.conftest import DEMO, ROOT  # noqa: E402

KEY = "test-key-not-secret"


@dataclass(frozen=True)
class Server:
    url: str
    store: Path
    folder: Path
    generations: list[dict[str, object]]  # the eval stage's generations.jsonl rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"runner serve exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("runner serve did not answer within 120 s")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    spec = folder / "serve-tiny.yaml"
    spec.write_text(tiny_spec(data=demo_data(folder / "data")))
    store = folder / "store"
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--store", str(store)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (evals,) = [p for p in (store / "eval").iterdir() if (p / "manifest.json").is_file()]
    rows = [json.loads(line) for line in (evals / "generations.jsonl").read_text().splitlines()]
    port = free_port()
    log = folder / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "--store", str(store), "--port", str(port),
                                    "--api-key", KEY, "--data-dir", str(folder / "data"), "--data-dir", str(DEMO)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, log)
        yield Server(url, store, folder, rows)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = log.read_text(errors="replace")
        assert KEY not in text, "the API key was logged"


ENDED = ("succeeded", "failed", "cancelled")


def until(check: Callable[[], object], what: str, seconds: float = 300) -> object:
    """`check()`'s first true answer, polled every half second; fails after `seconds`."""
    deadline = time.time() + seconds
    while not (found := check()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def ended(client: openai.OpenAI, job_id: str) -> object:
    """The job once it has ended, else None (for `until`)."""
    state = client.fine_tuning.jobs.retrieve(job_id)
    return state if state.status in ENDED else None
