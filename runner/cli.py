"""`python -m runner` / `runner`: thin commands over the library.

Importing this module must not import torch: `validate` and `plan` are instant.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path

from runner.core.errors import ProfileError, RunnerError
from runner.core.names import STAGE_NAMES
from runner.core.recap import sharing
from runner.spec.describe import valid_line
from runner.spec.extras import MODULES as EXTRAS
from runner.spec.extras import PACKAGE, install_hint, require_extra


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except (RunnerError, ModuleNotFoundError) as exc:
        extra = missing_extra(exc, f"runner {args.command.__name__.removeprefix('cmd_')}")
        if extra is None and not isinstance(exc, RunnerError):
            raise  # a module no extra brings: a broken install, and its traceback says which
        if args.debug:
            traceback.print_exc()
        print(f"error: {extra or exc}", file=sys.stderr)
        return ProfileError.exit_code if extra else exc.exit_code  # type: ignore[union-attr]
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to go on", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `runner plan x | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def missing_extra(exc: BaseException, what: str) -> str | None:
    """One line naming the extra when `exc` (or what it was raised from: a stage wraps what it met) is a
    module of an optional extra that is not installed, e.g. a tracker's package in the train stage."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            top = seen.name.split(".")[0]
            extra = next((name for name, modules in EXTRAS.items() if top in modules), None)
            if extra is not None:
                return f"{what} needs the `{extra}` extra ({top} not installed): {install_hint(extra)}"
        seen = seen.__cause__  # `raise ... from`: what the error says it came from, not whatever was being handled
    return None


def version() -> str:
    """The installed package's version; from a checkout with no metadata, pyproject's."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        text = pyproject.read_text("utf-8") if pyproject.is_file() else ""
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "unknown"


def exit_codes() -> str:
    """The exit codes, from the error classes themselves (each class's exit_code and docstring)."""
    import signal

    from runner.core.signals import STOPS

    classes, todo = [], [RunnerError]
    while todo:  # runner.core.errors' classes; signals.Interrupted's code is the signal's, listed below
        cls = todo.pop()
        classes += [cls] if cls.__module__ == RunnerError.__module__ else []
        todo += cls.__subclasses__()
    also = {RunnerError: "any other error the runner stops on; the message says what to change (a crash's "
                          "traceback exits 1 too)"}
    more = {2: " Also: a command line that does not parse.", ProfileError.exit_code: " Also: a missing optional extra."}
    lines = ["exit codes:", "  0    done"]
    for cls in sorted(classes, key=lambda c: (c.exit_code, c.__name__)):
        what = also.get(cls) or (cls.__doc__ or cls.__name__).strip().split(". ")[0].rstrip(".") + "."
        lines.append(f"  {cls.exit_code:<4} {cls.__name__}: {what}{more.get(cls.exit_code, '')}")
    ends = [(128 + stop, f"interrupted by {signal.Signals(stop).name}: finished stages are kept; run the same command "
                         "again to go on") for stop in STOPS]
    ends.append((141, "the reader of the output went away (`runner plan SPEC | head`)"))
    lines += [f"  {code:<4} {what}" for code, what in sorted(ends)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Declarative QLoRA fine-tuning runner.",
                                     epilog=exit_codes(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    parser.add_argument("--version", action="version", version=f"runner {version()}",
                        help="print the runner's version and exit")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func, help: str, spec: bool = True) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(command=func)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print tracebacks")
        if spec:
            p.add_argument("spec", type=Path, help="the spec YAML file")
        return p

    _spec_commands(command)
    gc = command("gc", cmd_gc, "remove artifacts that no run record refers to", spec=False)
    gc.add_argument("--store", type=Path, default=Path(os.environ.get("RUNNER_STORE", "artifacts")),
                    help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    srv = command("serve", cmd_serve, "serve the store's models and adapters over an OpenAI-compatible API",
                  spec=False)
    srv.add_argument("--store", type=Path, default=Path(os.environ.get("RUNNER_STORE", "artifacts")),
                     help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    srv.add_argument("--engine", choices=("runner", "vllm"), default="runner",
                     help="runner (built in) or vllm (a `vllm serve` subprocess; CUDA with vllm installed)")
    srv.add_argument("--api-key", default=os.environ.get("RUNNER_API_KEY"),
                     help="require `Authorization: Bearer KEY` on every route (default: $RUNNER_API_KEY); "
                          "needed for any host but loopback")
    srv.add_argument("--data-dir", type=Path, action="append", default=[], metavar="DIR",
                     help="a folder whose files a client's spec may name (repeatable); the store and uploads "
                          "always may, nothing else may")
    srv.add_argument("--allow-push", action="store_true",
                     help="let a job's spec push to the Hub (export.push) with this server's HF_TOKEN; without it "
                          "such a job is refused and no job's process sees HF_TOKEN")
    _sweep_commands(command)
    command("profile", cmd_profile, "show this machine and the profile a spec would get", spec=False).add_argument(
        "spec", type=Path, nargs="?", help="spec to resolve the profile for (default: specs/smoke.yaml settings)")
    return parser


def _spec_commands(command) -> None:  # type: ignore[no-untyped-def]
    """validate, plan, run: a spec, and --set on each, so what is planned is what runs."""
    for name, func, text in (("validate", cmd_validate, "check a spec against the schema and the cross-field rules"),
                             ("plan", cmd_plan, "show each stage's key and whether it is cached or must run, and why"),
                             ("run", cmd_run, "run every stage that is not cached")):
        p = command(name, func, text)
        p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                       help="set a spec field as if the YAML said it, e.g. --set train.epochs=1 (repeatable; "
                            "recorded in the run record)")
        if name == "validate":
            continue
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
            _node_arguments(p)


def _node_arguments(p) -> None:  # type: ignore[no-untyped-def]
    """Training across machines, as torchrun says it (docs/scale-out.md)."""
    p.add_argument("--nodes", type=int, metavar="N", help="train across N machines, each running this same "
                   "command with its --node-rank (hardware.processes is the total over all of them)")
    p.add_argument("--node-rank", type=int, metavar="R", help="this machine's rank, 0 to N-1; node 0 runs the "
                   "stages and writes the store, the others join its training")
    p.add_argument("--master", metavar="HOST:PORT", help="node 0's address and a free port (torch's c10d rendezvous)")


def _sweep_commands(command) -> None:  # type: ignore[no-untyped-def]
    store = Path(os.environ.get("RUNNER_STORE", "artifacts"))
    sw = command("sweep", cmd_sweep, "run variants of a spec (a grid, a variants file, or a search) and compare them")
    sw.add_argument("--set", action="append", default=[], metavar="PATH=V1,V2",
                    help="a field and its values, e.g. lora.r=8,16,64 (repeatable: the grid of all combinations)")
    sw.add_argument("--variants", type=Path, metavar="FILE",
                    help="a YAML list of variants, each {name: ..., set: {PATH: VALUE, ...}}")
    sw.add_argument("--store", type=Path, default=store, help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    sw.add_argument("--plan", action="store_true", help="show every variant's plan and the sweep's cost; run nothing")
    sw.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N variants at once, each a `runner run` process (on its own GPUs where there are several)")
    sw.add_argument("--on", choices=("local", "ray", "slurm"), default="local",
                    help="where the variants run: here (default), each a Ray task, or one SLURM array job (submitit)")
    sw.add_argument("--address", metavar="HOST:PORT",
                    help="with --on ray: the Ray cluster to join (default: a local Ray started for the sweep)")
    sw.add_argument("--write", type=Path, metavar="DIR", help="only write the variant specs to DIR (for a scheduler)")
    sw.add_argument("--max-variants", type=int, metavar="N",
                    help="refuse a sweep of more than N variants, counted before any is made (default 256)")
    sw.add_argument("--against", choices=("baseline", "best"), default="baseline",
                    help="test each variant against the first (baseline) or the most accurate one")
    sw.add_argument("--search", choices=("optuna",),
                    help="a search instead of a grid: Optuna (seeded TPE) proposes each trial's values within --range")
    sw.add_argument("--range", action="append", default=[], metavar="PATH=LOW:HIGH[:log]|PATH=V1,V2",
                    help="with --search: a field's range, e.g. train.learning_rate=1e-4:1e-2:log or lora.r=4,8,16 (repeatable)")
    sw.add_argument("--trials", type=int, metavar="N", help="with --search: how many trials the search holds in all")
    sw.add_argument("--objective", metavar="BENCH/accuracy|validation_loss",
                    help="with --search: what a trial scores, a benchmark's accuracy or the validation loss")
    sw.add_argument("--direction", choices=("max", "min"),
                    help="with --search: maximise or minimise the objective (default: max accuracy, min loss)")
    cp = command("compare", cmd_compare, "one report over several runs: accuracy, paired tests (Holm), loss, cost",
                 spec=False)
    cp.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_SPEC",
                    help="a run record (store/runs/*.json) or a spec file (its newest completed run); the first is the baseline")
    cp.add_argument("--store", type=Path, default=store, help="artifact store folder (default: ./artifacts, or $RUNNER_STORE)")
    cp.add_argument("--against", choices=("baseline", "best"), default="baseline",
                    help="test each run against the first (baseline) or the most accurate one")
    cp.add_argument("--out", type=Path, help="report folder (default: STORE/compare/<digest of the runs>)")


def cmd_validate(args: argparse.Namespace) -> int:
    from runner import api

    print(valid_line(args.spec, api.validate(args.spec, args.set)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from runner import api

    print(api.plan(args.spec, args.store, args.force, args.verify, args.set).summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.image:  # the same command inside a container; this process never imports torch
        require_extra("docker", "runner run --image")
        from runner.containers.launch import run_in_image

        return run_in_image(args)
    from runner import api
    from runner.core import signals
    from runner.core.recap import print_summary
    from runner.machine.world import nodes_given

    signals.install()
    nodes = nodes_given(args.nodes, args.node_rank, args.master)
    os.environ.update(nodes.environment() if nodes.many else {})  # the train stage reads them there
    if nodes.rank > 0:
        print(api.follow(args.spec, args.store, nodes, sets=args.set), flush=True)
        return 0
    result = api.run(args.spec, args.store, args.only, args.force, args.verify, again=args.push, sets=args.set)
    print_summary(result.outcomes, result.record, result.seconds)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner import api
    from runner.core import signals
    from runner.core.errors import StageError

    signals.install(hangup=True)  # SIGTERM and SIGHUP too stop the sweep's runs at a checkpoint
    if args.search or args.range or args.trials is not None or args.objective or args.direction:
        swept = _search(args)
    else:
        swept = api.sweep(args.spec, args.set, args.variants, args.store, args.jobs, args.plan, args.write, args.against,
                          show=lambda line: print(line, flush=True), max_variants=args.max_variants, on=args.on,
                          address=args.address)
    if args.write:
        print("\n".join(str(path) for path in swept.specs))
    failed = [name for name, code in swept.codes.items() if code != 0]
    if failed:
        raise StageError(f"sweep: {len(failed)} of {len(swept.codes)} variant(s) failed ({', '.join(failed)}); their "
                         "output is above: fix what made them fail, then run the same sweep again (it runs only what is missing)")
    return 0


def _search(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """`runner sweep --search optuna`: its own flags only (a search has no grid, and its trials are run, not written)."""
    from runner import api
    from runner.core.errors import SpecError

    given = [flag for flag, on in (("--set", args.set), ("--variants", args.variants), ("--write", args.write)) if on]
    if not args.search:
        raise SpecError(["sweep: --range, --trials, --objective and --direction belong to --search optuna"])
    if given:
        raise SpecError([f"sweep --search optuna: {' and '.join(given)} belong to a grid; a search takes --range "
                         "(fields it does not search are the spec's)"])
    if args.trials is None or not args.objective:
        raise SpecError(["sweep --search optuna: give --trials N and --objective BENCH/accuracy or validation_loss"])
    return api.search(args.spec, args.range, args.objective, args.trials, args.direction, args.store, args.jobs,
                      args.plan, args.against, show=lambda line: print(line, flush=True),
                      max_variants=args.max_variants, on=args.on, address=args.address)


def cmd_compare(args: argparse.Namespace) -> int:
    from runner import api

    print("\n".join(api.compare(args.runs, args.store, args.against, args.out).lines))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from runner.core.cleanup import collect

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
    require_extra("serve", "runner serve")  # one line naming the install, not a ModuleNotFoundError
    from runner.serve.app import serve

    return serve(args.store, args.host, args.port, args.api_key, args.engine, tuple(args.data_dir), args.allow_push)


def cmd_profile(args: argparse.Namespace) -> int:
    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.spec.typed import load_spec

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
          f"{sharing(profile)}")
    for reason in profile.reasons:
        print(f"  - {reason}")
    return 0
