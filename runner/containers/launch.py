"""`runner run SPEC --image cpu|cuda|auto`: the same run inside a container, through the Docker SDK.

The container sees the spec's folder, the local files the spec names and the artifact store at the
same absolute paths as the host, so every path in the spec, the run record and the summary means the
same thing inside and out. Docker and Podman's Docker-compatible socket both work (`$DOCKER_HOST`).
Only this module imports the SDK, and only the CLI's `--image` path imports this module.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from argparse import Namespace
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from runner.containers.images import CHECKOUT, build_args, source_digest
from runner.core.errors import ContainerError

IMAGE = "qlora-runner"  # the repository name; $RUNNER_IMAGE names another (a registry's, a test's)
LABEL = "io.qlora-runner"
# Passed through by name when set on the host; never printed, never written anywhere by the runner.
# OMP_NUM_THREADS too: it sets the profile's CPU thread count, which is in the keys on CPU, so a run
# in the image must see the host's value to reuse (and make) the same artifacts.
PASS_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
            "OMP_NUM_THREADS")
# Options of `run` that describe the host side; everything else in the namespace is forwarded.
HOST_ONLY = frozenset({"command", "spec", "store", "image"})
# After a Ctrl-C the run inside gets this long to stop as a native one does (training saves a
# checkpoint at the end of its step) before the container is killed.
STOP_GRACE_S = 30

Log = Callable[[str], None]


def run_in_image(args: Namespace, log: Log | None = None) -> int:
    """Run `runner run` for `args` inside the image; the container's exit code."""
    log = log or (lambda message: print(f"[runner] {message}", file=sys.stderr, flush=True))
    flavor = choose_flavor(args.image, log)
    volumes, environment = container_inputs(args.spec, args.store)
    client = engine()
    tag = ensure_image(client, flavor, log)
    log(f"{tag}: mounted " + ", ".join(f"{host} ({v['mode']})" for host, v in volumes.items()))
    container, output = start(client, tag, inner_argv(args), volumes, environment, gpus=flavor == "cuda")
    return follow(container, output)


def choose_flavor(requested: str, log: Log) -> str:
    if requested != "auto":
        return requested
    if nvidia_gpu():
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        log("Apple GPU (MPS) is not reachable from a container: using the CPU image; run natively for MPS")
    return "cpu"


def nvidia_gpu() -> bool:
    """An NVIDIA GPU on this host, judged without torch: the driver's device node or `nvidia-smi -L`."""
    if Path("/dev/nvidiactl").exists():
        return True
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0


def container_inputs(spec_path: Path, store: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Volumes (host path -> bind at the same path) and environment for the container."""
    from runner.rows.mixture import resolved
    from runner.spec.typed import load_spec

    spec = load_spec(spec_path)  # a bad spec is reported before any engine is contacted
    reads = [spec_path.resolve().parent]
    if spec.model.source == "local" and spec.model.path is not None:
        reads.append(spec.resolve(spec.model.path))
    sources = [s.source for role in ("train", "validation") for s in resolved(spec, role)] + list(spec.eval.benchmarks)
    reads += [spec.resolve(s.path.split("*")[0]).parent for s in sources if s.path is not None]
    if spec.eval.perplexity is not None:
        reads.append(spec.resolve(spec.eval.perplexity.path).parent)
    volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in outermost(reads)}
    if spec.logging.report_to and spec.logging.dir is not None:  # the trackers write there (by default: the store)
        logs = spec.resolve(spec.logging.dir)
        logs.mkdir(parents=True, exist_ok=True)
        volumes[str(logs)] = {"bind": str(logs), "mode": "rw"}
    environment = {name: os.environ[name] for name in PASS_ENV if name in os.environ}
    if spec.model.source == "hub" or any(s.hub is not None for s in sources):
        # Hub downloads land in the host's cache, so a second run (or a native one) reuses them.
        hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").resolve()
        hf_home.mkdir(parents=True, exist_ok=True)
        volumes[str(hf_home)] = {"bind": str(hf_home), "mode": "rw"}
        environment["HF_HOME"] = str(hf_home)
    store = store.resolve()
    store.mkdir(parents=True, exist_ok=True)  # an engine would create a missing one owned by root
    volumes[str(store)] = {"bind": str(store), "mode": "rw"}
    return volumes, environment


def outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths not inside another one of them: nested folders need no mount of their own."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and p.is_relative_to(q) for q in unique)]


def inner_argv(args: Namespace) -> list[str]:
    """The `runner run` command line for inside: absolute paths, every other option as given."""
    argv = ["run", str(args.spec.resolve()), "--store", str(args.store.resolve())]
    for name, value in sorted(vars(args).items()):
        flag = "--" + name.replace("_", "-")
        if name in HOST_ONLY or value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        else:
            for item in value if isinstance(value, (list, tuple, frozenset, set)) else [value]:
                argv += [flag, str(item)]
    return argv


def engine() -> Any:
    import docker

    try:
        # No read timeout: a silent stretch of a run (a long merge, a big download) must not end the
        # output stream, and a first build downloads for minutes.
        client = docker.from_env(timeout=None)
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise ContainerError(f"no container engine answers at {where} ({exc}): start Docker, or run "
                             "`podman system service` and set DOCKER_HOST=unix:///run/podman/podman.sock") from None
    return client


def ensure_image(client: Any, flavor: str, log: Log) -> str:
    """The image's tag, building it first when it is missing or was built from other sources."""
    import docker

    repository = os.environ.get("RUNNER_IMAGE") or IMAGE
    tag = f"{repository}:{flavor}"
    buildable = (CHECKOUT / "images" / "Dockerfile").is_file()
    try:
        have = client.images.get(tag).labels.get(f"{LABEL}.source-digest")
    except docker.errors.ImageNotFound:
        if not buildable:
            raise ContainerError(f"image {tag} not found and no images/ folder to build it from: "
                                 f"build it in a checkout with `make image-{flavor}`") from None
        log(f"image {tag} not found: building it (minutes; later runs reuse it)")
    else:
        if not buildable or have == source_digest(CHECKOUT):
            return tag
        log(f"image {tag} was built from other sources than {CHECKOUT}: rebuilding what changed")
    build_image(client, flavor, repository, log)
    return tag


def build_image(client: Any, flavor: str, repository: str, log: Log) -> None:
    """`images/build.sh FLAVOR` through the SDK, with the same build arguments and tags."""
    import docker

    args = build_args(flavor, os.environ)
    tag = f"{repository}:{flavor}"
    try:
        for chunk in client.api.build(path=str(CHECKOUT), dockerfile="images/Dockerfile", tag=tag, buildargs=args,
                                      rm=True, forcerm=True, decode=True):
            if "error" in chunk:
                raise ContainerError(f"building {tag} failed: {chunk['error'].strip()}")
            if chunk.get("stream", "").strip():
                log(chunk["stream"].rstrip())
    except docker.errors.APIError as exc:
        raise ContainerError(f"building {tag} failed: {exc.explanation or exc}") from None
    client.images.get(tag).tag(repository, f"{args['VERSION']}-{flavor}")


def start(client: Any, tag: str, argv: list[str], volumes: dict[str, dict[str, str]], environment: dict[str, str],
          gpus: bool) -> tuple[Any, Iterable[tuple[bytes | None, bytes | None]]]:
    """Create the container, attach to its output, then start it, so no early line is lost."""
    import docker

    try:
        container = client.containers.create(
            tag, argv, volumes=volumes, environment=environment, labels={LABEL: tag},
            # The caller's uid: the artifacts in the store stay theirs (the image's HOME allows any uid).
            user=f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None,
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
            shm_size="1g",  # the default 64 MB of /dev/shm is too little for torch's shared tensors
        )
    except docker.errors.APIError as exc:
        raise ContainerError(f"cannot create a container of {tag}: {exc.explanation or exc}") from None
    try:
        output = container.attach(stream=True, logs=True, demux=True)
        container.start()
    except docker.errors.APIError as exc:
        container.remove(force=True)
        hint = ": install the NVIDIA Container Toolkit, or use --image cpu" if gpus else ""
        raise ContainerError(f"cannot start {tag}: {exc.explanation or exc}{hint}") from None
    return container, output


def follow(container: Any, output: Iterable[tuple[bytes | None, bytes | None]],
           out: BinaryIO | None = None, err: BinaryIO | None = None) -> int:
    """Stream the container's output until it exits and return its exit code; remove it after.

    Ctrl-C (or SIGTERM) is forwarded as SIGINT, so the run inside stops as a native one does.
    """
    import docker

    out, err = out or sys.stdout.buffer, err or sys.stderr.buffer
    try:
        with _sigterm_as_interrupt():
            try:
                copy(output, out, err)
                return int(container.wait()["StatusCode"])
            except KeyboardInterrupt:
                interrupt(container, out, err)
                raise
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass  # already gone


def interrupt(container: Any, out: BinaryIO, err: BinaryIO) -> None:
    """Forward a Ctrl-C as SIGINT and show what the run says while it stops; kill it after the grace."""
    import docker

    err.write(b"[runner] stopping the container (Ctrl-C again to kill it now)\n")
    err.flush()
    timer = threading.Timer(STOP_GRACE_S, _kill, [container])
    try:
        container.kill(signal="SIGINT")
        timer.start()
        copy(container.attach(stream=True, logs=False, demux=True), out, err)
    except (KeyboardInterrupt, docker.errors.APIError):
        pass  # a second Ctrl-C, or it had already exited: `follow` removes it either way
    finally:
        timer.cancel()


def copy(chunks: Iterable[tuple[bytes | None, bytes | None]], out: BinaryIO, err: BinaryIO) -> None:
    for stdout, stderr in chunks:
        for data, stream in ((stdout, out), (stderr, err)):
            if data:
                stream.write(data)
                stream.flush()


def _kill(container: Any) -> None:
    import docker

    try:
        container.kill()
    except docker.errors.APIError:
        pass


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to this process stops the container too, instead of leaving it running unattended."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
