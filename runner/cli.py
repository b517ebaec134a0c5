"""`python -m runner` / `runner`: thin commands over the library.

Importing this module must not import torch: `validate` and `plan` are instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.stage import STAGE_NAMES


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except RunnerError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to go on", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `runner plan x | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Declarative QLoRA fine-tuning runner.")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func, help: str, spec: bool = True) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(command=func)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print tracebacks")
        if spec:
            p.add_argument("spec", type=Path, help="the spec YAML file")
        return p

    command("validate", cmd_validate, "check a spec against the schema and the cross-field rules")
    for name, func, text in (("plan", cmd_plan, "show each stage's key and whether it is cached or must run, and why"),
                             ("run", cmd_run, "run every stage that is not cached")):
        p = command(name, func, text)
        p.add_argument("--store", type=Path, default=Path(os.environ.get("RUNNER_STORE", "artifacts")),
                       help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
        p.add_argument("--force", action="append", default=[], choices=STAGE_NAMES, metavar="STAGE",
                       help="rebuild STAGE even if cached (repeatable)")
        p.add_argument("--verify", action="store_true",
                       help="rehash every file of cached artifacts; a damaged one is rebuilt")
        if name == "run":
            p.add_argument("--only", choices=STAGE_NAMES, metavar="STAGE",
                           help="stop after STAGE (the stages it needs run too, nothing after it)")
            p.add_argument("--push", action="store_true",
                           help="push (export.push) even when an earlier run pushed this export to the same place")
            p.add_argument("--image", choices=("cpu", "cuda", "auto"),
                           help="run inside the CPU or CUDA container image (built when missing; "
                                "auto: cuda when an NVIDIA GPU is present)")
    gc = command("gc", cmd_gc, "remove artifacts that no run record refers to", spec=False)
    gc.add_argument("--store", type=Path, default=Path(os.environ.get("RUNNER_STORE", "artifacts")),
                    help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    srv = command("serve", cmd_serve, "serve the store's models and adapters over an OpenAI-compatible API",
                  spec=False)
    srv.add_argument("--store", type=Path, default=Path(os.environ.get("RUNNER_STORE", "artifacts")),
                     help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--engine", choices=("runner", "vllm"), default="runner",
                     help="runner (built in) or vllm (a `vllm serve` subprocess; CUDA with vllm installed)")
    srv.add_argument("--api-key", default=os.environ.get("RUNNER_API_KEY"),
                     help="require `Authorization: Bearer KEY` on every route (default: $RUNNER_API_KEY); "
                          "needed for any host but loopback")
    _sweep_commands(command)
    command("profile", cmd_profile, "show this machine and the profile a spec would get", spec=False).add_argument(
        "spec", type=Path, nargs="?", help="spec to resolve the profile for (default: specs/smoke.yaml settings)")
    return parser


def _sweep_commands(command) -> None:  # type: ignore[no-untyped-def]
    store = Path(os.environ.get("RUNNER_STORE", "artifacts"))
    sw = command("sweep", cmd_sweep, "run variants of a spec (a grid, or a variants file) and compare them")
    sw.add_argument("--set", action="append", default=[], metavar="PATH=V1,V2",
                    help="a field and its values, e.g. lora.r=8,16,64 (repeatable: the grid of all combinations)")
    sw.add_argument("--variants", type=Path, metavar="FILE",
                    help="a YAML list of variants, each {name: ..., set: {PATH: VALUE, ...}}")
    sw.add_argument("--store", type=Path, default=store, help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    sw.add_argument("--plan", action="store_true", help="show every variant's plan and the sweep's cost; run nothing")
    sw.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N variants at once, each a `runner run` process (on its own GPUs where there are several)")
    sw.add_argument("--write", type=Path, metavar="DIR", help="only write the variant specs to DIR (for a scheduler)")
    sw.add_argument("--max-variants", type=int, metavar="N",
                    help="refuse a sweep of more than N variants, counted before any is made (default 256)")
    sw.add_argument("--against", choices=("baseline", "best"), default="baseline",
                    help="test each variant against the first (baseline) or the most accurate one")
    cp = command("compare", cmd_compare, "one report over several runs: accuracy, paired tests (Holm), loss, cost",
                 spec=False)
    cp.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_SPEC",
                    help="a run record (store/runs/*.json) or a spec file (its newest completed run); the first is the baseline")
    cp.add_argument("--store", type=Path, default=store, help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    cp.add_argument("--against", choices=("baseline", "best"), default="baseline",
                    help="test each run against the first (baseline) or the most accurate one")
    cp.add_argument("--out", type=Path, help="report folder (default: STORE/compare/<digest of the runs>)")


def cmd_validate(args: argparse.Namespace) -> int:
    from runner.spec import load_spec

    print(valid_line(args.spec, load_spec(args.spec)))
    return 0


def profile_line(profile: Any) -> str:
    """The profile in one line, as `plan` prints it (the server's /v1/specs/plan says the same)."""
    return (f"{profile.device} {profile.dtype}, quantization {profile.quantization}, "
            f"micro-batch {profile.micro_batch_size} x {profile.gradient_accumulation}")


def valid_line(source: object, spec: Any) -> str:
    """What `validate` prints for a valid spec (the server's /v1/specs/validate says the same)."""
    from runner.mixture import is_mixture

    what = (f"a mixture of {len(spec.data.train)} sources" if is_mixture(spec)
            else f"{spec.data.format} data")
    return f"{source}: valid ({spec.name}: {spec.model.source} model, {what}, {len(spec.eval.benchmarks)} benchmark(s))"


def cmd_plan(args: argparse.Namespace) -> int:
    from runner import api

    planned = api.plan(args.spec, args.store, args.force, args.verify)
    profile = planned.profile
    print(f"profile: {profile_line(profile)}{_sharing(profile)}")
    for reason in profile.reasons:
        print(f"  - {reason}")
    print("\n".join(planned.lines))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.image:  # the same command inside a container; this process never imports torch
        from runner.docker import run_in_image

        return run_in_image(args)
    from runner import api, signals
    from runner.summary import print_summary

    signals.install()
    result = api.run(args.spec, args.store, args.only, args.force, args.verify, again=args.push)
    print_summary(result.outcomes, result.record, result.seconds)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner import api, signals
    from runner.errors import StageError

    signals.install(hangup=True)  # SIGTERM and SIGHUP too stop the sweep's runs at a checkpoint
    swept = api.sweep(args.spec, args.set, args.variants, args.store, args.jobs, args.plan, args.write, args.against,
                      show=lambda line: print(line, flush=True), max_variants=args.max_variants)
    if args.write:
        print("\n".join(str(path) for path in swept.specs))
    failed = [name for name, code in swept.codes.items() if code != 0]
    if failed:
        raise StageError(f"sweep: {len(failed)} of {len(swept.codes)} variant(s) failed ({', '.join(failed)}); their "
                         "output is above: fix what made them fail, then run the same sweep again (it runs only what is missing)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from runner import api

    print("\n".join(api.compare(args.runs, args.store, args.against, args.out).lines))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from runner.gc import collect

    removed, freed = collect(args.store, dry_run=args.dry_run, note=print)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} folder(s), {freed / 2**20:.1f} MiB")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False  # a host name: where it points is not ours to guess
    if not loopback and not args.api_key:
        print(f"error: --host {args.host} listens beyond this machine: set --api-key (or RUNNER_API_KEY)",
              file=sys.stderr)
        return 2
    from runner.serve.app import serve

    return serve(args.store, args.host, args.port, args.api_key, args.engine)


def cmd_profile(args: argparse.Namespace) -> int:
    from runner.probe import probe_machine
    from runner.profile import resolve_profile
    from runner.spec import load_spec

    probe = probe_machine()
    for gpu in probe.gpus:
        print(f"gpu: {gpu.name}, sm_{gpu.capability[0]}{gpu.capability[1]}, {gpu.total_mib} MiB ({gpu.free_mib} free)")
    print(f"cpu: {probe.cpu_count} CPUs ({probe.cores} physical cores), {probe.ram_mib} MiB RAM; "
          f"mps: {'yes' if probe.mps else 'no'}")
    print(f"torch {probe.torch or 'not installed'}, bitsandbytes {probe.bitsandbytes or 'not installed'}")
    spec_path = args.spec or Path(__file__).resolve().parent.parent / "specs" / "smoke.yaml"
    if args.spec is None and not spec_path.is_file():
        return 0
    profile = resolve_profile(load_spec(spec_path), probe)
    print(f"profile for {spec_path}: {profile.device} {profile.dtype}, quantization {profile.quantization}, "
          f"optimizer {profile.optimizer}, micro-batch {profile.micro_batch_size} x {profile.gradient_accumulation}"
          f"{_sharing(profile)}")
    for reason in profile.reasons:
        print(f"  - {reason}")
    return 0


def _sharing(profile: Any) -> str:
    """The processes and, on CPU, the threads each trains on (the count is in the keys there)."""
    threads = f", {profile.threads} CPU thread{'s' if profile.threads != 1 else ''}" if profile.device == "cpu" else ""
    if profile.processes == 1:
        return threads
    return f" x {profile.processes} processes ({profile.distributed.upper()}){threads}"
