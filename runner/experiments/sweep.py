"""Planning and running a sweep's variants: which stages they share, what the sweep really costs, and
one `runner run` process per variant, N at once, each on its own GPUs where there are several.

Each variant is a separate process running an ordinary spec, so the store's locks keep two writers
of one stage apart and a killed sweep run again finishes only what is missing. Light: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner.core.chain import chained_spec
from runner.core.plan import Step, plan, stage_inputs
from runner.core.records import latest_record
from runner.core.signals import PARENT, STOPS
from runner.core.stage import Stage, upstream_part, upstream_stage
from runner.core.store import Store
from runner.experiments.variants import Written
from runner.machine.probe import Probe
from runner.machine.profile import Profile, resolve_profile
from runner.spec.typed import Spec

CHAINED = ("model", "data", "train")  # what a chained spec runs before the spec that starts from it


def visible_gpus(environ: dict[str, str], probe: Probe) -> list[str]:
    """The GPU ids this process may hand out: CUDA_VISIBLE_DEVICES when set, else every GPU found."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(len(probe.gpus))]


def device_slots(jobs: int, gpus: Sequence[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each of `jobs` concurrent variants: the GPUs split evenly (8 GPUs, 2 jobs:
    4 each, so a variant's `hardware.processes: auto` trains on 4), round robin when there are more
    jobs than GPUs (they share), None without GPUs (the environment is left as it is)."""
    if not gpus:
        return [None] * jobs
    if jobs >= len(gpus):
        return [gpus[i % len(gpus)] for i in range(jobs)]
    each = len(gpus) // jobs
    return [",".join(gpus[i * each:(i + 1) * each]) for i in range(jobs)]


@dataclass(frozen=True)
class VariantPlan:
    written: Written
    profile: Profile
    steps: list[Step]
    ids: dict[str, str]  # stage -> its key, or what its key will be made of while upstream is pending
    # The stages up to train of the specs this one starts from (train.init_adapter), each with the
    # chained spec's file name and its identity: run first by the variant's `runner run`, shared.
    chain: tuple[tuple[str, Step, str], ...] = ()


def plan_variants(stages: tuple[Stage, ...], written: list[Written], store: Store, probe: Probe,
                  slot: str | None) -> list[VariantPlan]:
    """Each variant's plan as `runner run` in a slot would make it (the slot's GPUs only)."""
    if slot is not None:
        probe = replace(probe, gpus=probe.gpus[: len(slot.split(","))])
    out = []
    for w in written:
        profile = resolve_profile(w.spec, probe)
        steps = plan(stages, w.spec, profile, store, latest_record(store.root, w.path))
        out.append(VariantPlan(w, profile, steps, stage_ids(stages, w.spec, profile, steps),
                               chain_steps(stages, w.spec, store, probe)))
    return out


def stage_ids(stages: tuple[Stage, ...], spec: Spec, profile: Profile, steps: list[Step]) -> dict[str, str]:
    """Each stage's key, or for a pending one the digest of what its key will be made of."""
    ids: dict[str, str] = {}
    for stage, step in zip(stages, steps):
        # A pending stage's key needs its upstream's output; equal inputs and equal upstream
        # identities make equal keys, since a stage's output is keyed by exactly these.
        upstream = {ref: f"{ids[upstream_stage(ref)]}:{upstream_part(ref)}" for ref in stage.upstream}
        ids[stage.name] = step.key or hashlib.sha256(json.dumps(
            stage_inputs(stage, spec, profile, upstream), sort_keys=True, default=str).encode()).hexdigest()
    return ids


def chain_steps(stages: tuple[Stage, ...], spec: Spec, store: Store,
                probe: Probe) -> tuple[tuple[str, Step, str], ...]:
    """The chained specs' stages up to train, first link first, as `runner run` of each alone plans them."""
    found: list[tuple[str, Step, str]] = []
    link = chained_spec(spec)
    while link is not None:
        linked, path = link
        profile = resolve_profile(linked, probe)
        steps = plan(stages, linked, profile, store, latest_record(store.root, path))
        ids = stage_ids(stages, linked, profile, steps)
        found = [(path.name, s, ids[s.stage]) for s in steps if s.stage in CHAINED] + found
        link = chained_spec(linked)
    return tuple(found)


def plan_lines(plans: list[VariantPlan]) -> list[str]:
    """Per variant and stage: key, status, and which other variants share it; then the real cost."""
    sharers: dict[tuple[str, str], list[str]] = {}
    for p in plans:
        for step, ident in identified(p):
            names = sharers.setdefault((step.stage, ident), [])
            if p.written.variant.label not in names:  # its own model and its chain's may be one
                names.append(p.written.variant.label)
    lines = [line for p in plans for line in variant_lines(p, sharers, len(plans))]
    return lines + [cost_line(plans)]


def variant_lines(p: VariantPlan, sharers: dict[tuple[str, str], list[str]], count: int) -> list[str]:
    """The variant's path, then each stage's plan line and who shares its output."""
    lines = [f"{p.written.variant.name}  ({p.written.path})"]
    labelled = [(f"{name}: ", step, ident) for name, step, ident in p.chain]
    for prefix, step, ident in labelled + [("", s, p.ids[s.stage]) for s in p.steps]:
        others = [label for label in sharers[(step.stage, ident)] if label != p.written.variant.label]
        shared = (f"shared by all {count}" if len(others) == count - 1 and others
                  else f"shared with {_names(others)}" if others else "own")
        lines.append(f"  {prefix + step.line():<60}  {shared}")
    return lines


def identified(p: VariantPlan) -> list[tuple[Step, str]]:
    """The variant's steps, its chained specs' first, each with its identity."""
    return [(step, ident) for _, step, ident in p.chain] + [(s, p.ids[s.stage]) for s in p.steps]


def cost_line(plans: list[VariantPlan]) -> str:
    """Stage executions once shared outputs run once, against running every variant alone (a chained
    spec's stages count with the stage they are: model, data, train)."""
    steps = [step for p in plans for step in identified(p)]
    runs = {(s.stage, ident) for s, ident in steps if s.status != "cached"}
    per_stage = {step.stage: [stage for stage, _ in runs].count(step.stage) for step in plans[0].steps}
    cached = [s.status for s, _ in steps].count("cached")
    naive = len(steps) - cached
    return (f"cost: {len(runs)} stage execution(s) "
            f"({', '.join(f'{stage} {n}' for stage, n in per_stage.items())}) for {len(plans)} variant(s); "
            f"{naive} without sharing; {cached} of {len(steps)} cached")


def _names(labels: list[str]) -> str:
    return ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")


@dataclass
class Job:
    written: Written
    slot: int
    process: subprocess.Popen[str]
    reader: threading.Thread | None


def run_variants(written: list[Written], store: Path, jobs: int, slots: list[str | None],
                 log: Callable[[str], None]) -> dict[str, int]:
    """Run each variant as `runner run SPEC --store STORE`, `jobs` at once; returns each name's exit code.

    One at a time, a variant's output goes straight to the terminal (progress bars included); with
    several, each line is prefixed with the variant's label. A variant that fails does not stop the others."""
    waiting = list(written)
    running: list[Job] = []
    codes: dict[str, int] = {}
    try:
        while waiting or running:
            free = [i for i in range(jobs) if all(j.slot != i for j in running)]
            while waiting and free:
                # A signal between the fork and the append would leave the new run unsignalled (it has a
                # session of its own): held until the run is on the list (the run unblocks them itself).
                held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS) if hasattr(signal, "pthread_sigmask") else None
                try:
                    running.append(_start(waiting.pop(0), free.pop(0), slots, store, jobs > 1, log))
                finally:
                    if held is not None:
                        signal.pthread_sigmask(signal.SIG_SETMASK, held)
            time.sleep(0.2)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                if job.reader is not None:
                    job.reader.join()
                codes[job.written.variant.name] = code = job.process.returncode
                log(f"sweep: {job.written.variant.name} " + ("finished" if code == 0 else f"FAILED (exit {code})"))
    except BaseException as exc:
        # Ctrl-C, SIGTERM or SIGHUP: pass it on (a hangup as SIGTERM); each run stops at a checkpoint,
        # and the same sweep goes on later. Killed outright, the sweep's runs get SIGTERM from the kernel.
        signum = getattr(exc, "signum", signal.SIGINT)
        signum = signal.SIGTERM if signum == getattr(signal, "SIGHUP", None) else signum
        for job in running:
            job.process.send_signal(signum)
        for job in running:
            job.process.wait()
        raise
    return codes


def _start(w: Written, slot: int, slots: list[str | None], store: Path, prefix: bool,
           log: Callable[[str], None]) -> Job:
    env = dict(os.environ) | {PARENT: str(os.getpid())}  # the run stops when the sweep is gone
    if slots[slot] is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slots[slot])
    where = f" on GPU {slots[slot]}" if slots[slot] is not None else ""
    log(f"sweep: starting {w.variant.name}{where}")
    command = [sys.executable, "-m", "runner", "run", str(w.path), "--store", str(store)]
    # A session of its own: a Ctrl-C at the terminal reaches the sweep alone, which passes it on once.
    if not prefix:
        return Job(w, slot, subprocess.Popen(command, env=env, text=True, start_new_session=True), None)
    process = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               bufsize=1, errors="replace", start_new_session=True)
    reader = threading.Thread(target=_relay, args=(process, w.variant.label), daemon=True)
    reader.start()
    return Job(w, slot, process, reader)


def _relay(process: subprocess.Popen[str], label: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        # A progress bar redraws with \r: only its latest state is worth a line.
        print(f"[{label}] {line.rstrip().rsplit(chr(13), 1)[-1]}", flush=True)
