"""What a container image is built from: the build arguments and the digest of its sources.

The same as images/build.sh computes (a test checks both agree), so `runner run --image` can tell
whether an image is older than the checkout and build it the way `make image-cpu` does.
"""

from __future__ import annotations

import filecmp
import hashlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from runner.core.errors import ContainerError
from runner.core.keys import file_digest

# A checkout: images/ beside the package is what a missing or outdated image is built from.
CHECKOUT = Path(__file__).resolve().parents[2]


def build_args(flavor: str, env: Mapping[str, str]) -> dict[str, str]:
    """What images/build.sh passes: the flavor's args file, then RUNNER_* overrides (files staged)."""
    images = CHECKOUT / "images"
    lines = (images / f"{flavor}.args").read_text("utf-8").splitlines()
    args = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    pyproject = (CHECKOUT / "pyproject.toml").read_text("utf-8")
    match = re.search(r'^version = "(.*)"', pyproject, re.MULTILINE)
    args |= {"VERSION": match.group(1) if match else "unknown", "SOURCE_DIGEST": source_digest(CHECKOUT)}
    lock = (CHECKOUT / "requirements.lock").read_text("utf-8")
    torch = re.search(r"^torch==(\S+)", lock, re.MULTILINE)
    if torch:  # the torch the lock pins, as images/build.sh passes it
        args["TORCH_VERSION"] = torch.group(1)
    for name, arg in (("RUNNER_BASE_IMAGE", "BASE_IMAGE"), ("RUNNER_TORCH_INDEX", "TORCH_INDEX")):
        if env.get(name):
            args[arg] = env[name]
    if env.get("RUNNER_TORCH_WHEEL"):
        args["TORCH_WHEEL"] = stage(Path(env["RUNNER_TORCH_WHEEL"]))
    if env.get("RUNNER_CONSTRAINTS"):
        args["CONSTRAINTS"] = "images/local/" + stage(Path(env["RUNNER_CONSTRAINTS"]))
    ca_bundle = env.get("RUNNER_CA_BUNDLE") or env.get("PIP_CERT")
    if ca_bundle:
        args["CA_BUNDLE"] = stage(Path(ca_bundle), "ca-bundle.crt")  # the name the Dockerfile copies
    return args


def stage(path: Path, name: str | None = None) -> str:
    """Copy `path` into images/local/ (the git-ignored part of the build context); its name there."""
    if not path.is_file():
        raise ContainerError(f"no such file {path} (named for the image build)")
    target = CHECKOUT / "images" / "local" / (name or path.name)
    if not (target.is_file() and filecmp.cmp(path, target, shallow=True)):
        shutil.copy2(path, target)
    return target.name


def source_digest(root: Path) -> str:
    """What the image's code is built from, as images/build.sh --source-digest computes it."""
    files = [root / "pyproject.toml", root / "requirements.lock", root / "images" / "Dockerfile",
             root / "images" / "install.sh"]
    files += [p for p in (root / "runner").rglob("*")
              if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts]
    names = sorted(p.relative_to(root).as_posix() for p in files)
    listing = "".join(f"{file_digest(root / name)}  {name}\n" for name in names)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()
