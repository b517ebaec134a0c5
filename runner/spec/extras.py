"""The optional features a spec can ask for, and the extra that installs each: checked before any stage runs.

A fresh `make run` installs the core only (nothing that compiles), so a spec asking for GGUF export
or a tracker may meet an environment without the package. Found here, at plan and run time, it is
one line naming the install command, not an ImportError after the model and training stages.
Light: `importlib.util.find_spec` looks a module up without importing it (nor torch).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import ModuleSpec

from runner.core.errors import ProfileError
from runner.core.names import STAGE_NAMES
from runner.spec.typed import Spec

PACKAGE = "qlora-runner"  # the distribution's name (pyproject), as `pip install` spells it
# What each extra of pyproject.toml brings, as the modules the code imports.
MODULES: dict[str, tuple[str, ...]] = {
    "docker": ("docker",),  # runner run --image
    "gguf": ("gguf", "llama_cpp", "sentencepiece"),  # llama.cpp's converter and runtime (export.gguf)
    "track": ("tensorboard", "mlflow"),  # logging.report_to (mlflow-skinny provides `mlflow`)
    "serve": ("fastapi", "uvicorn", "sse_starlette", "multipart"),  # runner serve
}
# The make target that installs an extra into make's .venv.
TARGETS = {"gguf": "make gguf", "track": "make track", "serve": "make extras"}

Finder = Callable[[str], ModuleSpec | None]


@dataclass(frozen=True)
class Need:
    field: str  # the spec field that asks, as the user wrote it
    stage: str  # the first stage that uses it: a run that stops before it does not need it
    extra: str  # the extra of pyproject.toml that installs it
    modules: tuple[str, ...]


def needs(spec: Spec) -> list[Need]:
    """Every optional package the spec asks for."""
    found = []
    if spec.export.gguf is not None:
        found.append(Need("export.gguf", "export", "gguf", MODULES["gguf"]))
    # wandb is no extra: the train and eval stages check it themselves (runner/report/trackers.py).
    for tracker in spec.logging.report_to:
        if tracker != "wandb":
            found.append(Need(f"logging.report_to: {tracker}", "train", "track", (tracker,)))
    return found


def install_hint(extra: str) -> str:
    """The command that installs `extra`: make's target in a checkout, else pip (Colab, a container)."""
    pip = f"pip install '{PACKAGE}[{extra}]'"
    return f"run `{TARGETS[extra]}` (or `{pip}`)" if extra in TARGETS else f"run `{pip}`"


def missing(modules: tuple[str, ...], find: Finder | None = None) -> list[str]:
    """The modules not installed. `find`: importlib.util.find_spec, looked up at call time (tests fake it)."""
    look = find or importlib.util.find_spec
    absent = []
    for module in modules:
        try:
            found = look(module)
        except (ImportError, ValueError):  # a broken install, or a module whose __spec__ is None
            found = None
        if found is None:
            absent.append(module)
    return absent


def require_extras(spec: Spec, until: str | None = None) -> None:
    """Stop when a package the spec asks for is missing, naming how to install it. `until`: the last
    stage this run reaches (`run --only`); what only later stages use is not required."""
    last = STAGE_NAMES.index(until) if until else len(STAGE_NAMES)
    problems = []
    for need in needs(spec):
        absent = missing(need.modules)
        if not absent or STAGE_NAMES.index(need.stage) > last:
            continue
        problems.append(f"{need.field} needs the `{need.extra}` extra ({', '.join(absent)} not installed): "
                        f"{install_hint(need.extra)}, or remove it from the spec")
    if problems:
        raise ProfileError("; ".join(problems))


def require_extra(extra: str, what: str) -> None:
    """Stop when `extra` is missing for a command (`runner serve`), naming how to install it."""
    absent = missing(MODULES[extra])
    if absent:
        raise ProfileError(f"{what} needs the `{extra}` extra ({', '.join(absent)} not installed): "
                           f"{install_hint(extra)}")
