"""What `--verify` costs: a plain `run` trusts a cached artifact whose file sizes match its manifest;
`--verify` re-hashes every file (sha256) first. This times both checks, the store's own
`Store.check`, on a store holding one large file of random bytes (or on a store you already have).

    .venv/bin/python bench/verify_cost.py [--gib 2] [--dir /path/on/the/disk/to/measure] [--repeats 3]
    .venv/bin/python bench/verify_cost.py --store artifacts     # every artifact of an existing store

Hashing runs on one thread (hashlib, one file after another), so the rate is one core's sha256 rate
while the file is in the page cache, and the disk's read rate when it is not: both are measured,
the second after asking the kernel to drop the file's cached pages (posix_fadvise DONTNEED).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.core.store import Manifest, Store, read_manifest

CHUNK = 64 * 2**20
MERGED_8B = 16e9  # bytes of a merged 8B model in bf16: what a user would re-hash


def make_store(root: Path, gib: float) -> Manifest:
    """One export artifact holding a `gib`-GiB file of random bytes (random, so no file system or
    disk compresses or deduplicates it), committed through the store as a stage would be."""
    store = Store(root)
    key = "f" * 64
    with store.build("export", key, inputs={}, volatile=()) as out:
        (out / "merged").mkdir()
        with open(out / "merged" / "model.safetensors", "wb") as handle:
            left = int(gib * 2**30)
            while left:
                n = min(CHUNK, left)
                handle.write(os.urandom(n))
                left -= n
            handle.flush()
            os.fsync(handle.fileno())  # written to disk, so dropping its cached pages below can work
    manifest = store.lookup("export", key)
    assert manifest is not None
    return manifest


def artifacts(root: Path) -> list[Manifest]:
    found = (read_manifest(folder) for stage in sorted(root.iterdir()) if stage.is_dir() and stage.name != "runs"
             for folder in sorted(stage.iterdir()) if folder.is_dir() and not folder.name.startswith("."))
    return [m for m in found if m is not None]


def drop_cache(manifest: Manifest) -> None:
    """Ask the kernel to forget the files' cached pages, so the next read comes from the disk.
    Advice, not an order: on tmpfs, or for pages another process holds, nothing is dropped."""
    for rel in manifest.files:
        fd = os.open(manifest.path / rel, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_check(store: Store, manifests: list[Manifest], verify: bool, cold: bool) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of checking every artifact. On a busy machine the
    CPU time is what one free core would take; the wall time is what this run took."""
    if cold:
        for m in manifests:
            drop_cache(m)
    started, cpu = time.perf_counter(), time.process_time()
    for m in manifests:
        found, problem = store.check(m.stage, m.key, verify=verify)
        assert found is not None, problem
    return time.perf_counter() - started, time.process_time() - cpu


def median_of(repeats: int, *args: Any) -> tuple[float, float]:
    runs = [time_check(*args) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def fs_type(path: Path) -> str:
    """The file system under `path` (from /proc/mounts; '?' elsewhere)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    resolved = str(path.resolve())
    best = max((m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=["/", "?"])
    return best[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(root: Path, manifests: list[Manifest], repeats: int) -> dict[str, Any]:
    store = Store(root)
    size = sum(meta["size"] for m in manifests for meta in m.files.values())
    time_check(store, manifests, verify=True, cold=False)  # first read: into the page cache
    sizes, _ = median_of(repeats, store, manifests, False, False)
    warm, warm_cpu = median_of(repeats, store, manifests, True, False)
    cold, _ = median_of(repeats, store, manifests, True, True)
    return {"bytes": size, "files": sum(len(m.files) for m in manifests), "artifacts": len(manifests),
            "size_check_s": sizes, "verify_cached_s": warm, "verify_cached_cpu_s": warm_cpu, "verify_uncached_s": cold,
            "cached_gb_s": size / warm / 1e9, "cached_cpu_gb_s": size / warm_cpu / 1e9, "uncached_gb_s": size / cold / 1e9,
            "ratio_cached": warm / sizes, "ratio_uncached": cold / sizes,
            "fs": fs_type(root), "threads": 1, "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def report(r: dict[str, Any], where: Path) -> None:
    size, cached, uncached = r["bytes"], r["cached_gb_s"], r["uncached_gb_s"]
    print(f"store {where} ({r['fs']}; load {r['loadavg']:.1f}): {r['artifacts']} artifact(s), {r['files']} file(s), {size / 1e9:.2f} GB")
    print(f"  size check (plain run): {1e3 * r['size_check_s']:.2f} ms")
    print(f"  --verify, file in the page cache: {r['verify_cached_s']:.2f} s = {cached:.2f} GB/s "
          f"({r['ratio_cached']:,.0f}x the size check); CPU time {r['verify_cached_cpu_s']:.2f} s = "
          f"{r['cached_cpu_gb_s']:.2f} GB/s on a free core")
    print(f"  --verify, cached pages dropped:   {r['verify_uncached_s']:.2f} s = {uncached:.2f} GB/s "
          f"({r['ratio_uncached']:,.0f}x the size check)")
    print(f"  sha256 on 1 thread of {r['cpu']} ({r['cpu_count']} CPUs), Python {r['python']}: a {MERGED_8B / 1e9:.0f} GB merged 8B "
          f"model adds ~{MERGED_8B / cached / 1e9:.0f} s cached, ~{MERGED_8B / uncached / 1e9:.0f} s from this disk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the random file (GiB); default 2")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the temporary store (default: $TMPDIR)")
    parser.add_argument("--store", type=Path, default=None, help="measure this existing store instead (read only)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many timings; default 3")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.store is not None:
        root, temp = args.store, None
        manifests = artifacts(root)
        if not manifests:
            parser.error(f"--store {root}: no committed artifacts")
    else:
        temp = Path(tempfile.mkdtemp(prefix="verify-cost-", dir=args.dir))
        root = temp / "store"
        manifests = [make_store(root, args.gib)]
    try:
        figures = measure(root, manifests, args.repeats)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    report(figures, root)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
