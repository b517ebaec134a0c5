"""Beyond one device: two real gloo processes on CPU through `accelerate launch`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from runner.stages.train.launch import sharing_environment
from tests.integration.conftest import Tiny, only_artifact, runner


def test_two_processes_train_one_adapter_and_the_loss_falls(tiny: Tiny, tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(tiny.spec.read_text().replace("seed: 7", "seed: 7\nhardware: {processes: 2}"))
    store = tmp_path / "store"
    for stage in ("model", "data"):  # shared with the single-process run: same keys
        (store / stage).mkdir(parents=True)
        only = tiny.artifacts[stage]
        (store / stage / only.name).symlink_to(only)
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train: launching 2 processes with accelerate (gloo on CPU)" in done.stdout
    assert "train: trained in 2 processes (gloo)" in done.stdout
    train = only_artifact(store, "train")
    assert len(list(train.glob("adapter/*.safetensors"))) == 1
    summary = json.loads((train / "summary.json").read_text())
    assert summary["train_loss_last"] < summary["train_loss_first"] and summary["eval_loss_after"] < summary["eval_loss_before"]
    assert train.name != tiny.artifacts["train"].name  # two processes is another computation


def test_fsdp_launch_options_are_what_accelerate_turns_into_fsdp_qlora_settings() -> None:
    # Checked with Accelerate's own parser and environment builder, as `accelerate launch` hands them to
    # each process (tests/integration/test_sharding.py runs FSDP2 itself, on CPU).
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from runner.stages.train.launch import sharing_arguments

    args = launch_command_parser().parse_args([*sharing_arguments("fsdp"), "--num_processes", "2", "--num_machines",
                                               "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                               "-m", "runner.stages.train.worker", "launch.json"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    assert {k: env[k] for k in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD",
                                "FSDP_AUTO_WRAP_POLICY", "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_STATE_DICT_TYPE")} == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # the model's own _no_split_modules decide the units
    assert sharing_arguments("ddp") == ["--multi_gpu"] and sharing_environment("ddp") == {}


def test_fsdp_leaves_the_rotary_frequencies_out_of_its_mixed_precision(tiny: Tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Accelerate's plugin reads the ignored modules from the environment; the pattern names exactly
    # the rotary embedding of the LoRA-wrapped model the worker trains.
    import re

    from accelerate.utils import FullyShardedDataParallelPlugin

    from runner.machine.probe import probe_machine
    from runner.machine.profile import resolve_profile
    from runner.models.loading import load_base
    from runner.spec.typed import load_spec
    from runner.stages.train.trainer import attach_lora

    for name, value in sharing_environment("fsdp").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # its device lookup needs a GPU; not what is checked
    pattern = FullyShardedDataParallelPlugin().ignored_modules
    spec = load_spec(tiny.spec)
    model = attach_lora(load_base(tiny.artifacts["model"], spec, resolve_profile(spec, probe_machine())), spec, False,
                        sharded=True)
    matched = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    assert matched == ["base_model.model.model.rotary_emb"]
    assert dict(model.named_modules())[matched[0]].inv_freq.dtype == torch.float32


def test_a_stopped_run_stops_every_process_and_the_next_run_resumes(tiny: Tiny, tmp_path: Path) -> None:
    # SIGTERM (docker stop, a scheduler) reaches the runner only: it must stop the launcher and both
    # workers with it, or they would go on training, and writing, after the runner has gone.
    import contextlib
    import os
    import signal
    import time

    from tests.integration.test_crash import rows_in, start, wait_for

    spec = tmp_path / "two.yaml"
    spec.write_text(tiny.spec.read_text().replace("seed: 7", "seed: 7\nhardware: {processes: 2}")
                    .replace("epochs: 2", "epochs: 30"))
    store = tmp_path / "store"
    for stage in ("model", "data"):
        (store / stage).mkdir(parents=True)
        (store / stage / tiny.artifacts[stage].name).symlink_to(tiny.artifacts[stage])
    proc = start(spec, store)
    assert wait_for(proc, rows_in(store, 12, checkpoint=True)), proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)  # not communicate(): it would wait for every holder of the output pipe

    def survivors() -> dict[int, str]:
        """pid: command line of every process still working in this store."""
        lines = {int(p.parent.name): _text(p) for p in Path("/proc").glob("[0-9]*/cmdline")}
        return {pid: text for pid, text in lines.items() if str(store) in text}

    deadline = time.time() + 3  # the kernel's reaping; an orphaned worker would still be training
    while survivors() and time.time() < deadline:
        time.sleep(0.1)
    left = survivors()
    for pid in left:  # do not leave them to the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143 and left == {}, out[-3000:]
    again = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "train: resuming from checkpoint-" in again.stdout
    assert len(list(only_artifact(store, "train").glob("adapter/*.safetensors"))) == 1


def _text(cmdline: Path) -> str:
    try:
        return cmdline.read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # the process has gone
        return ""
