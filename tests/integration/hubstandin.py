"""A local HTTP stand-in for the Hugging Face Hub's API, on loopback.

The real Hub cannot be reached from the tests (no network at all), so this answers the few routes
`huggingface_hub.HfApi` calls for create_repo, create_branch and upload_folder, and keeps what it was
sent: the requests (with their headers, so a test can see the token went only where it should) and
each commit's files. Small files only: every file is offered the "regular" upload mode (base64 in the
commit body), never LFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Hub:
    url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"repo", "revision", "summary", "files": {path: bytes}}
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    validated: list[dict[str, Any]] = field(default_factory=list)  # cards sent to /api/validate-yaml


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # http.server names its handlers so
            hub.requests.append(("GET", self.path, dict(self.headers)))
            self._answer(404, {"error": f"stand-in has no GET {self.path}"})

        def do_POST(self) -> None:
            hub.requests.append(("POST", self.path, dict(self.headers)))
            body = self._body()
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:3] == ["api", "repos", "create"]:
                doc = json.loads(body)
                repo = f"{doc.get('organization') or 'me'}/{doc['name']}"
                hub.repos[repo] = doc
                return self._answer(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
            if parts[:2] == ["api", "validate-yaml"]:  # the Hub checks a model card's metadata before the commit
                hub.validated.append(json.loads(body))
                return self._answer(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and "preupload" in parts:
                files = json.loads(body)["files"]
                return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                    for f in files], "commitOid": "0" * 40})
            if parts[:2] == ["api", "models"] and "commit" in parts:
                return self._commit(parts, body)
            if parts[:2] == ["api", "models"] and "branch" in parts:
                return self._answer(200, {})
            self._answer(404, {"error": f"stand-in has no POST {self.path}"})

        def _commit(self, parts: list[str], body: bytes) -> None:
            at = parts.index("commit")
            repo, revision = "/".join(parts[2:at]), "/".join(parts[at + 1:])
            files: dict[str, bytes] = {}
            summary = ""
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "header":
                    summary = entry["value"]["summary"]
                elif entry["key"] == "file":
                    files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            oid = hashlib.sha1(body).hexdigest()
            hub.commits.append({"repo": repo, "revision": revision, "summary": summary, "files": files, "oid": oid})
            self._answer(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    return Handler


@contextmanager
def hub_standin() -> Iterator[Hub]:
    hub = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
