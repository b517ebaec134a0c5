"""The Colab guide as written: docs/colab.md's cells, top to bottom, in a fresh virtual environment where
the test environment's packages stand in for Colab's preinstalled ones (torch & co.).

What is not Colab is swapped, and only that: `/content` is a temporary folder, `REPO` the checkout,
port 8000 a free one; a cell marked `<!-- colab-only -->` (Drive) or `<!-- coming: ... -->` is left
out. Shell lines (`!...`) run in bash, `%cd` moves the working directory as the notebook's does, and
consecutive Python cells share one interpreter, as a notebook's kernel does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT

_spec = importlib.util.spec_from_file_location("tools_docblocks", ROOT / "tools" / "docblocks.py")
assert _spec is not None and _spec.loader is not None
docblocks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = docblocks
_spec.loader.exec_module(docblocks)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _venv(tmp_path: Path) -> Path:
    """A fresh environment whose site-packages also see this one's, as Colab's torch is simply there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


class Notebook:
    def __init__(self, venv: Path, content: Path, names: dict[str, str], swaps: dict[str, str]) -> None:
        self.cwd = content
        self.names = names  # what IPython interpolates into `!` lines ({REPO})
        self.swaps = swaps
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env["PATH"] = f"{venv / 'bin'}:{self.env['PATH']}"
        self.python = str(venv / "bin" / "python")
        self.output: list[str] = []

    def swap(self, text: str) -> str:
        for old, new in self.swaps.items():
            text = text.replace(old, new)
        return text

    def shell(self, line: str) -> None:
        line = self.swap(line.strip())
        if line.startswith("%cd "):
            self.cwd = Path(line.removeprefix("%cd ").strip())
            return
        assert line.startswith("!"), f"a Colab cell line that is neither `!...` nor `%cd`: {line}"
        command = re.sub(r"\{(\w+)\}", lambda m: self.names[m.group(1)], line[1:])
        self._run(["bash", "-c", command], command)

    def python_cells(self, cells: list[str]) -> None:
        if cells:
            self._run([self.python, "-c", "\n".join(self.swap(c) for c in cells)], "the Python cells")

    def _run(self, argv: list[str], what: str) -> None:
        # Its own session: a server a failed cell leaves behind is ended with it, by its group id.
        process = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        try:
            out, _ = process.communicate(timeout=1800)  # a smoke run on a busy 2-core machine: 15 min
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.output.append(out)
        assert process.returncode == 0, f"{what} failed in {self.cwd}:\n{out[-4000:]}"


@pytest.mark.slow
def test_colab_guide_runs_as_written(tmp_path: Path) -> None:
    cells = [b for b in docblocks.blocks(ROOT / "docs" / "colab.md") if b.lang in ("", "python") and b.mark is None]
    assert [b.lang for b in cells].count("") >= 2, "the guide lost its shell cells?"
    content = tmp_path / "content"
    content.mkdir()
    port = str(_free_port())
    book = Notebook(_venv(tmp_path), content, {"REPO": str(ROOT)}, {"8000": port, "/content": str(content)})
    waiting: list[str] = []
    for cell in cells:
        if cell.lang == "python":
            waiting.append(cell.text)
            continue
        book.python_cells(waiting)
        waiting = []
        for line in cell.text.splitlines():
            if line.strip():
                book.shell(line)
    book.python_cells(waiting)
    out = "\n".join(book.output)
    assert (content / "qlora-runner" / "specs" / "smoke.yaml").is_file()
    assert ": valid (" in out  # validate
    assert "summary (" in out and "report  " in out  # the run's summary, ending with the report's path
    assert "ran nothing; reused model, data, train, export, eval" in out  # api.run after the CLI's run
    assert "'smoke'" in out  # the served adapter is listed
