"""Sharded training as configured (FSDP2, DeepSpeed ZeRO-2/3): the launch options, DeepSpeed's file,
the profile's decisions, each process's share of the memory, and the check on the world that trained.
Pure: no torch (tests/integration/test_sharding.py runs them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from runner.core.errors import ProfileError, StageError
from runner.machine.memory import Setup, Shape, estimate, sharded_setup
from runner.machine.probe import Gpu, Probe
from runner.machine.profile import resolve_profile
from runner.machine.world import (
    Nodes,
    deepspeed_settings,
    fsdp_version,
    launch_command,
    sharing_arguments,
    sharing_environment,
)
from runner.spec.typed import parse_spec
from runner.stages.train.launch import check_world

CPU = Probe(cpu_count=2, cores=2, ram_mib=24000, torch="2.13.0+cpu", bitsandbytes="0.50.2")
TWO_GPUS = Probe(gpus=(Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81920, 81000),) * 2, cpu_count=32, cores=16,
                 ram_mib=200000, torch="2.13.0", bitsandbytes="0.50.2")


def spec(tmp_path: Path, hardware: str, extra: str = ""):  # type: ignore[no-untyped-def]
    (tmp_path / "t.jsonl").write_text("{}\n")
    return parse_spec(f"model: {{source: init}}\ndata: {{train: {{path: t.jsonl}}}}\nhardware: {hardware}\n" + extra,
                      base_dir=tmp_path)


def test_fsdp_is_fsdp2_from_torch_2_6_and_fsdp1_before() -> None:
    assert fsdp_version("2.13.0+cpu") == 2 and fsdp_version("2.6.0") == 2 and fsdp_version("2.5.1+cu124") == 1
    two = sharing_arguments("fsdp", version=2)
    assert two[:3] == ["--use_fsdp", "--fsdp_version", "2"]
    # FSDP2 has no flat parameters, no sync_module_states, no backward_prefetch: Accelerate warns on them
    assert not {"--fsdp_use_orig_params", "--fsdp_sync_module_states", "--fsdp_backward_prefetch"} & set(two)
    assert "--fsdp_reshard_after_forward" in two and "FULL_STATE_DICT" in two
    one = sharing_arguments("fsdp", version=1)
    assert one[:3] == ["--use_fsdp", "--fsdp_version", "1"] and "FULL_SHARD" in one
    assert sharing_arguments("ddp") == ["--multi_gpu"]


def test_zero_launches_deepspeed_with_the_file_beside_the_context(tmp_path: Path) -> None:
    command = launch_command(2, "zero3", Nodes(), tmp_path / "launch.json")
    at = command.index("--deepspeed_config_file")
    assert "--use_deepspeed" in command and command[at + 1] == str(tmp_path / "deepspeed.json")
    assert "--multi_gpu" not in command and "--use_fsdp" not in command
    # across nodes, torchrun's rendezvous (as DDP and FSDP), not DeepSpeed's ssh launcher
    assert "standard" in launch_command(4, "zero2", Nodes(2, 1, "10.0.0.1", 29500), tmp_path / "launch.json")
    assert sharing_environment("zero2", "cpu") == {"DS_ACCELERATOR": "cpu"} and sharing_environment("zero2") == {}


def test_deepspeed_settings_for_each_stage() -> None:
    two, three = deepspeed_settings("zero2", "fp32", "cpu"), deepspeed_settings("zero3", "bf16", "cuda")
    json.dumps(two)  # a file Accelerate reads
    assert two["zero_optimization"]["stage"] == 2 and "stage3_gather_16bit_weights_on_model_save" not in two["zero_optimization"]
    assert three["zero_optimization"]["stage"] == 3
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # a whole adapter on save
    # the Trainer fills what it already knows (the fitted micro-batch, accumulation, clipping)
    assert {three[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")} == {"auto"}
    assert three["bf16"] == {"enabled": True} and two["bf16"] == {"enabled": False} and two["fp16"] == {"enabled": False}
    assert three["zero_allow_untested_optimizer"] is True  # the Trainer's adamw_torch, partitioned by ZeRO


def test_the_profile_shards_only_where_the_machine_can(tmp_path: Path) -> None:
    with_ds = replace(TWO_GPUS, deepspeed="0.19.8")
    zero3 = resolve_profile(spec(tmp_path, "{distributed: zero3}"), with_ds)
    assert zero3.distributed == "zero3" and zero3.key_fields()["distributed"] == "zero3"
    assert zero3.optimizer == "adamw_torch" and any("DeepSpeed ZeRO-3 over the 2 processes" in r for r in zero3.reasons)
    # DeepSpeed is an extra: without it, DDP and why, or (strict) one line saying what to install
    missing = resolve_profile(spec(tmp_path, "{distributed: zero2}"), TWO_GPUS)
    assert missing.distributed == "ddp"
    assert any("pip install 'qlora-runner[deepspeed]'" in r for r in missing.reasons)
    with pytest.raises(ProfileError, match=r"^hardware.distributed zero2: DeepSpeed is not installed"):
        resolve_profile(spec(tmp_path, "{distributed: zero2, on_unsupported: error}"), TWO_GPUS)
    on_cpu = resolve_profile(spec(tmp_path, "{processes: 2, distributed: zero2}"), replace(CPU, deepspeed="0.19.8"))
    assert on_cpu.distributed == "zero2" and any("(gloo on CPU)" in r for r in on_cpu.reasons)
    # one process: nothing to shard, and the key is the one-process key
    one = resolve_profile(spec(tmp_path, "{distributed: zero3}"), replace(with_ds, gpus=TWO_GPUS.gpus[:1]))
    assert one.distributed == "none" and "distributed" not in one.key_fields()
    mps = Probe(mps=True, cpu_count=8, ram_mib=32768, torch="2.13.0")
    assert resolve_profile(spec(tmp_path, "{processes: 2, distributed: fsdp}"), mps).distributed == "ddp"


# A small model, by hand: hidden 64, 4 layers, MLP 128, vocabulary 1000, untied; fp32, LoRA r 8 on
# q_proj and v_proj, fp32 Adam. Per block the linears hold 4 x 64 x 64 + 3 x 64 x 128 = 40,960
# parameters (163,840 in all); embeddings and head 2 x 1000 x 64 = 128,000 and norms 64 x 9 = 576:
# 292,416 parameters, 1,169,664 bytes. LoRA: (64 + 64) x 8 x 2 modules x 4 layers = 8,192 parameters
# at 16 bytes (weight, gradient, two moments) = 131,072 bytes.
SMALL = Shape(vocab=1000, hidden=64, layers=4, intermediate=128, heads=4, kv_heads=4, head_dim=16, tied=False)
FP32 = Setup(quantization="none", double_quant=False, compute_bytes=4, lora_r=8, lora_dropout=0.0,
             targets=("q_proj", "v_proj"), eight_bit_optimizer=False, micro_batch=1, seq_len=16,
             checkpointing=False, fused_attention=True, device="cuda")


def test_each_process_holds_its_share_of_the_states() -> None:
    whole = estimate(SMALL, FP32)
    assert (whole.weights, whole.lora, whole.load) == (1_169_664, 131_072, 0)
    fsdp, zero3 = estimate(SMALL, sharded_setup(FP32, "fsdp", 4)), estimate(SMALL, sharded_setup(FP32, "zero3", 4))
    # a quarter of the weights, plus two layers gathered whole (the one running, the one prefetched):
    # 1,169,664 / 4 + 2 x 1,169,664 / 4 layers; a quarter of the LoRA state; the whole model while loading
    assert (fsdp.weights, fsdp.lora, fsdp.load) == (292_416 + 584_832, 32_768, 1_169_664)
    assert zero3 == fsdp
    zero2 = estimate(SMALL, sharded_setup(FP32, "zero2", 4))
    # the weights and the LoRA matrices whole (8,192 x 4 bytes), a quarter of their gradients and
    # moments (8,192 x 12 / 4), and the bucket gradients are reduced through: min(64^2, 8,192) x 4 bytes
    assert (zero2.weights, zero2.lora, zero2.load) == (1_169_664, 32_768 + 24_576 + 16_384, 0)
    assert zero2.activations == fsdp.activations == whole.activations  # each process its own micro-batch
    assert sharded_setup(FP32, "ddp", 4) == FP32 and sharded_setup(FP32, "zero3", 1) == FP32


def test_a_trainer_in_another_world_than_launched_stops_before_saving(tmp_path: Path) -> None:
    profile = resolve_profile(spec(tmp_path, "{processes: 2, distributed: fsdp}"), CPU)
    world = {"world_size": 2, "nodes": 1, "processes_per_node": 2, "backend": "gloo", "sharding": "fsdp", "device": "cpu"}
    check_world(world, profile)
    with pytest.raises(StageError, match=r"^train: launched 2 process\(es\) with fsdp, but the trainer ran at world size 1 "):
        check_world({**world, "world_size": 1, "sharding": "none"}, profile)  # each process alone (Axolotl #3839)
    with pytest.raises(StageError, match="ran at world size 2 with ddp: nothing was saved"):
        check_world({**world, "sharding": "ddp"}, profile)  # FSDP asked, DDP done (Accelerate on CPU, unpatched)
    one = resolve_profile(spec(tmp_path, "{processes: 1}"), CPU)
    check_world({**world, "world_size": 1, "sharding": "none"}, one)


def test_the_plan_names_each_sharding_as_its_own_docs_write_it() -> None:
    from types import SimpleNamespace

    from runner.core.recap import sharing

    names = [sharing(SimpleNamespace(processes=2, distributed=d, device="cuda", threads=1))
             for d in ("ddp", "fsdp", "zero2", "zero3")]
    assert names == [" x 2 processes (DDP)", " x 2 processes (FSDP)", " x 2 processes (ZeRO-2)", " x 2 processes (ZeRO-3)"]


def test_the_run_record_names_deepspeed_only_for_the_runs_it_trains() -> None:
    """The CPU image lacks the extra: a ddp run recorded in it must list the versions it lists outside."""
    from runner.core.records import library_versions

    assert "deepspeed" not in library_versions("ddp") and "deepspeed" not in library_versions(None)
    assert "deepspeed" in library_versions("zero3") and "torch" in library_versions("zero3")
