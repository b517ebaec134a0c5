"""The lock: one file of exact versions (requirements.lock) that make, CI and both images install.

    python tools/lock.py write [LOCK]    pin what this interpreter has installed (make lock)
    python tools/lock.py check [LOCK]    fail unless what is installed is exactly what LOCK pins
    python tools/lock.py diff [LOCK]     print what is installed that LOCK pins differently

pyproject.toml keeps ranges for people who pip-install the package into an environment they
already have; the lock is what the tests last passed with. Standard library only.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Exact versions of everything `make` installs (run, test, extras), the versions the tests last
# passed with. Used as pip constraints by make, CI (.ci/run calls make) and both images
# (images/Dockerfile). torch is pinned without its build tag: the CPU wheel (2.13.0+cpu) and the
# CUDA one both satisfy it; torch's own CUDA packages come with the build and are not pinned.
# Do not edit by hand: `make test-latest` tries the newest versions pyproject's ranges allow,
# and `make lock` writes this file from that environment once its tests pass.
"""
# The project itself and pip's own tools are not pinned here.
SKIP = {"qlora-runner", "pip", "setuptools", "wheel"}
# torch's CUDA runtime comes with the torch build an image picks, not from this file.
CUDA = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    pins = {}
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name in SKIP or CUDA.match(name):
            continue
        pins[name] = dist.version.split("+")[0] if name == "torch" else dist.version
    return pins


def read(lock: Path) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{lock}:{number}: not an exact pin (NAME==VERSION): {line}")
        pins[normalise(name)] = version.strip()
    return pins


def differences(lock: Path) -> list[str]:
    want, have = read(lock), installed()
    lines = [f"{n}: locked {want[n]}, installed {have[n]}" for n in sorted(want.keys() & have.keys())
             if want[n] != have[n]]
    lines += [f"{n}: installed {have[n]}, not in the lock" for n in sorted(have.keys() - want.keys())]
    return lines


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    lock = Path(argv[1]) if len(argv) > 1 else ROOT / "requirements.lock"
    if command == "write":
        pins = installed()
        lock.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        print(f"lock: wrote {len(pins)} pins to {lock}")
        return 0
    if command not in ("check", "diff"):
        print(__doc__, file=sys.stderr)
        return 2
    lines = differences(lock)
    for line in lines:
        print(f"lock: {line}")
    if command == "check" and lines:
        print(f"lock: this environment is not what {lock.name} pins; rebuild it (rm -rf .venv; make test)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
