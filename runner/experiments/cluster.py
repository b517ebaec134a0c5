"""A sweep's variants on a cluster, through the engines clusters already run: each variant a Ray task
(`runner sweep --on ray`) or a task of one SLURM array job through submitit (`--on slurm`).

Whatever the engine, a variant is what a local sweep runs: `runner run SPEC --store STORE` in a
process of its own, on a node that sees the same store folder. So the stages variants share are
still built once (the store's locks are files in the store, held across processes and nodes), a
variant run again resumes or finds its stages cached, and the comparison at the end is the local
sweep's. The engines only place the processes. Light: ray and submitit are imported when used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.core.errors import ProfileError
from runner.core.signals import PARENT
from runner.experiments.variants import Written

ENGINES = ("local", "ray", "slurm")
SUBMITIT_CLUSTER = "RUNNER_SUBMITIT_CLUSTER"  # "local": run the SLURM path through submitit's local executor
RETRIES = 2  # a variant whose node or worker died is started again (it resumes from its checkpoint)


def run_variant(spec: str, store: str) -> int:
    """One variant, on whichever node the engine chose: `runner run` as a child that stops (at a
    checkpoint) when this process dies, so a killed Ray worker or a cancelled job trains no further."""
    env = dict(os.environ) | {PARENT: str(os.getpid())}
    return subprocess.run([sys.executable, "-m", "runner", "run", spec, "--store", store], env=env).returncode


def run_on_ray(written: list[Written], store: Path, address: str | None, log: Callable[[str], None]) -> dict[str, int]:
    """Each variant a Ray task on the cluster at `address` (None: a Ray started here for the sweep),
    with a GPU where the cluster has GPUs; returns each variant's exit code."""
    # Ray folds lines that look alike from several tasks into one: the variants' own lines, all shown.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    # No --address: RAY_ADDRESS when the user set it (Ray's own convention), else a Ray of our own,
    # never whatever cluster a `ray start` on this machine left behind (address=None would join it).
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address or "local", log_to_driver=True, include_dashboard=False, configure_logging=False)
    try:
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        task = ray.remote(run_variant).options(num_cpus=1, num_gpus=gpus, max_retries=RETRIES)
        log(f"sweep: {len(written)} variant(s) as Ray tasks on {address or 'a local Ray'} "
            f"({resources.get('CPU', 0):.0f} CPUs, {gpus} GPU each)")
        pending = {task.remote(str(w.path.resolve()), str(store.resolve())): w.variant.name for w in written}
        codes: dict[str, int] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(ready[0])
                codes[name] = _code(ray, ready[0], RETRIES)
                log(f"sweep: {name} " + ("finished" if codes[name] == 0 else f"FAILED (exit {codes[name]})"))
        except BaseException:
            for ref in pending:  # Ctrl-C or SIGTERM: the tasks' runs stop at a checkpoint, as a local sweep's
                ray.cancel(ref)
            raise
        return codes
    finally:
        ray.shutdown()


def _code(ray: Any, ref: Any, retries: int) -> int:
    """A task's exit code; a task Ray gave up on (its worker died more than `retries` times) as 1."""
    try:
        return int(ray.get(ref))
    except ray.exceptions.RayError as exc:
        print(f"[runner] sweep: a Ray task failed after {retries} retries: {str(exc).splitlines()[0]}", flush=True)
        return 1


def slurm_parameters(variants: int, gpus: int, cpus: int, hours: float) -> dict[str, Any]:
    """submitit's settings for the sweep's array job: one task per variant, all at once, each on one
    node with its GPUs; USR2 shortly before the time limit, which submitit turns into a requeue."""
    where = {"gpus_per_node": gpus} if gpus else {}  # a CPU partition may refuse any GPU request, 0 included
    return {"timeout_min": int(hours * 60), "nodes": 1, "tasks_per_node": 1, **where, "cpus_per_task": cpus,
            "name": "runner-sweep", "slurm_array_parallelism": variants, "slurm_signal_delay_s": 120}


def sbatch_script(folder: Path, variants: int, parameters: dict[str, Any]) -> str:
    """The sbatch file submitit would write for the array (what `sbatch` is given), for a reader."""
    from submitit.slurm.slurm import _make_sbatch_string

    plain = {k.removeprefix("slurm_"): v for k, v in parameters.items()}
    plain = {"array_parallelism": plain.pop("array_parallelism"), "time": plain.pop("timeout_min"),
             "job_name": plain.pop("name"), "ntasks_per_node": plain.pop("tasks_per_node"), **plain}
    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {folder}", folder=folder,
                               map_count=variants, **plain)


def run_on_slurm(written: list[Written], store: Path, folder: Path, gpus: int, log: Callable[[str], None]) -> dict[str, int]:
    """The variants as one array job through submitit; waits for it; returns each variant's exit code.
    Without SLURM here, RUNNER_SUBMITIT_CLUSTER=local runs the same jobs through submitit's local executor."""
    import submitit

    cluster = os.environ.get(SUBMITIT_CLUSTER, "slurm")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ProfileError("sweep --on slurm: no `sbatch` here; run the sweep on a SLURM login node (or "
                           f"{SUBMITIT_CLUSTER}=local to try the same jobs on this machine)")
    executor = submitit.AutoExecutor(folder=folder / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**slurm_parameters(len(written), gpus, 4 if gpus else 2, hours=24))
    jobs = executor.map_array(run_variant, [str(w.path.resolve()) for w in written], [str(store.resolve())] * len(written))
    log(f"sweep: {len(written)} variant(s) submitted as {cluster} job(s) {', '.join(j.job_id for j in jobs)}; "
        f"their output is in {folder / 'slurm'}")
    codes: dict[str, int] = {}
    for w, job in zip(written, jobs):
        try:
            codes[w.variant.name] = int(job.result())
        except Exception as exc:  # submitit raises the job's failure (killed, timed out, ...) here
            print(f"[runner] sweep: {w.variant.name}: job {job.job_id} failed: {str(exc).splitlines()[0]}", flush=True)
            codes[w.variant.name] = 1
        log(f"sweep: {w.variant.name} " + ("finished" if codes[w.variant.name] == 0 else "FAILED"))
    return codes
