"""The Colab install path: a fresh virtual environment where torch and friends are already there,
`pip install` of the repository (a real wheel build, not editable), and a run from another working
directory, with the artifact store elsewhere (on Colab: a mounted Drive)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.integration.conftest import ROOT, Tiny


def test_pip_install_then_run_from_another_directory(tiny: Tiny, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Colab ships torch, transformers & co.: here the test environment's packages stand in for them.
    (site / "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "content"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import runner, sys; print(runner.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    validate = subprocess.run([str(python), "-m", "runner", "validate", str(ROOT / "specs" / "medqa.yaml")],
                              cwd=elsewhere, capture_output=True, text=True, env=env)
    assert validate.returncode == 0, validate.stderr  # the schema ships inside the package
    drive = tmp_path / "drive" / "runner"
    api = ("from runner import api\n"
           f"result = api.run({str(tiny.spec)!r}, store={str(drive)!r}, only='data')\n"
           "print([(o.stage, o.action) for o in result.outcomes])\n")
    done = subprocess.run([str(python), "-c", api], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[('model', 'ran'), ('data', 'ran')]" in done.stdout
    cli = subprocess.run([str(python), "-m", "runner", "plan", str(tiny.spec), "--store", str(drive)], cwd=elsewhere,
                         capture_output=True, text=True, env=env)
    assert [line.split()[2] for line in cli.stdout.splitlines() if line.startswith(("model ", "data "))] == ["cached"] * 2


def test_run_without_an_extra_the_spec_asks_for_stops_before_the_model_stage(tmp_path: Path) -> None:
    """`runner run` of a GGUF spec where llama_cpp cannot be found (a core-only `make run` install): one
    line naming the install, exit 3, and no stage built (the export stage would meet it after training)."""
    store = tmp_path / "store"
    code = ("import importlib.util as u, sys\n"
            "real = u.find_spec\n"
            "u.find_spec = lambda name, package=None: None if name == 'llama_cpp' else real(name, package)\n"
            "from runner.cli import main\n"
            f"sys.exit(main(['run', {str(ROOT / 'specs' / 'smoke-export.yaml')!r}, '--store', {str(store)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.startswith("error: export.gguf needs the `gguf` extra (llama_cpp not installed): run `make gguf`")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (store / "model").exists() and "model:" not in done.stdout
