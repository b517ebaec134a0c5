"""GRPO on the tiny model, started from an SFT adapter through train.init_adapter (a chain of two specs).

The task is one the tiny model can learn in a few dozen CPU steps and the reward can verify. SFT
teaches the answer format on the same prompts (as qa rows whose question holds the options, so the
prompt renders exactly as the multiple_choice one, and whose answer is the bare letter: a one-token
answer the tiny model learns in seconds), with the answers spread evenly over A-D, so no preference
among the letters. The GRPO questions' key is always B: the answer_correct reward starts near a
quarter and GRPO must raise it, measured from the metrics log, not mocked.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import runner

WORDS = ("apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "jade", "kelp")
MODEL = "{source: init, init: {hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, " \
        "num_kv_heads: 2, vocab_size: 1024, initializer_range: 0.1}, quantization: nf4}"


def questions(n: int, key: str | None, seed: int) -> list[dict[str, object]]:
    """Multiple-choice rows; the answer is `key`, or when None B for half of them and A, C, D in turn
    for the rest (so sampling finds B in most groups of completions from the start, and is not bound to)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        options = rng.sample(WORDS, 4)
        answer = key or ("B" if i % 2 == 0 else "ACD"[i // 2 % 3])
        rows.append({"question": f"Which word is number {i}?", "options": dict(zip("ABCD", options)),
                     "answer_idx": answer, "id": str(i)})
    return rows


def as_qa(row: dict[str, object]) -> dict[str, object]:
    """The multiple_choice row as a qa row whose prompt renders the same and whose answer is the letter."""
    options = "\n".join(f"{k}. {v}" for k, v in row["options"].items())  # type: ignore[attr-defined]
    return {"question": f"{row['question']}\n{options}", "answer": row["answer_idx"]}


def write_chain(folder: Path, grpo: str = "") -> tuple[Path, Path]:
    """sft.yaml (SFT on evenly spread answers) and grpo.yaml (GRPO from its adapter, key always B)."""
    (folder / "sft.jsonl").write_text("".join(json.dumps(as_qa(r)) + "\n" for r in questions(32, None, 3)))
    (folder / "grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions(32, "B", 3)))
    common = f"seed: 5\nmodel: {MODEL}\nlora: {{r: 16, alpha: 32, dropout: 0.0}}\nexport: {{merged: false}}\n"
    sft = folder / "sft.yaml"
    sft.write_text(common + "name: sft\ndata: {train: {path: sft.jsonl}, format: qa, template: plain, validation_fraction: 0}\n"
                   "train: {max_steps: 80, learning_rate: 1e-2, batch_size: 8, save_steps: 100, warmup: 0}\n")
    spec = folder / "grpo.yaml"
    spec.write_text(common + "name: grpo\ndata: {train: {path: grpo.jsonl}, template: plain, validation_fraction: 0}\n"
                    "train:\n  method: grpo\n  init_adapter: {spec: sft.yaml}\n  max_steps: 24\n"
                    "  learning_rate: 1e-2\n  batch_size: 16\n  scheduler: constant\n  warmup: 0\n  save_steps: 8\n"
                    "  grpo: {num_generations: 8, max_completion_length: 2, temperature: 1.0" + grpo + "}\n")
    return sft, spec


def artifacts(stdout: str) -> dict[str, Path]:
    return {k: Path(v) for k, v in re.findall(r"^  (model|data|train|export|eval)\s+(/\S+)$", stdout, re.MULTILINE)}


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    folder = tmp_path_factory.mktemp("grpo")
    sft, spec = write_chain(folder)
    store = folder / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sft, spec, store, done.stdout + done.stderr


def test_grpo_raises_the_correct_answer_reward(chained: tuple[Path, Path, Path, str]) -> None:
    _, _, store, output = chained
    assert "chain: sft.yaml up to train first" in output
    [train] = [p for p in (store / "train").iterdir() if (p / "summary.json").is_file()
               and json.loads((p / "summary.json").read_text()).get("method") == "grpo"]
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    correct = [r["rewards/answer_correct/mean"] for r in rows if "rewards/answer_correct/mean" in r]
    assert len(correct) == 24
    first, last = sum(correct[:6]) / 6, sum(correct[-6:]) / 6
    # Measured (2 threads, busy machine): 0.10 -> 0.24, the share of unreadable answers 0.84 -> 0.74.
    assert last > first + 0.1, (first, last, correct)
    summary = json.loads((train / "summary.json").read_text())
    assert summary["rewards"]["rewards/answer_correct/mean"]["last_quarter"] == pytest.approx(last, abs=1e-3)
    for name in ("rewards/answer_correct/std", "rewards/answer_correct/share_correct",
                 "rewards/answer_correct/share_unreadable", "entropy", "completions/mean_length"):
        assert name in rows[-1], name
    adapter = json.loads((train / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and not (train / "adapter" / "ref").exists()



def grpo_artifact(store: Path) -> Path:
    [train] = [p for p in (store / "train").iterdir() if (p / "summary.json").is_file()
               and json.loads((p / "summary.json").read_text()).get("method") == "grpo"]
    return train


def test_sigkill_mid_grpo_resumes_to_the_same_adapter(chained: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    """Killed (SIGKILL) after a checkpoint, run again: the adapter is byte for byte the uninterrupted one's.

    It holds because everything GRPO draws is restored or rebuilt from the seed: the Trainer's checkpoint
    keeps the RNG states (Python, numpy, torch) it samples completions with and restores them on resume;
    the prompts come from TRL's RepeatSampler, seeded, whose order the resumed run skips through; and a
    generation batch is one optimizer step here (steps_per_generation is the gradient accumulation), so
    no generated completions are buffered across a checkpoint."""
    from tests.integration.test_crash import rows_in, start, wait_for

    _, spec, store, _ = chained
    whole = grpo_artifact(store)
    want = hashlib.sha256((whole / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    # The same store without the GRPO result: the chain's SFT and the shared stages stay cached.
    killed = tmp_path / "killed"
    shutil.copytree(store, killed)
    shutil.rmtree(grpo_artifact(killed))
    proc = start(spec, killed)
    assert wait_for(proc, rows_in(killed, 10, checkpoint=True)), "the run ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = runner("run", str(spec), "--store", str(killed), "--only", "train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming from checkpoint-8" in done.stdout + done.stderr
    again = grpo_artifact(killed)
    assert again.name == whole.name  # the same key
    got = hashlib.sha256((again / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert got == want
    rows = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 25))  # the log continues, no step twice


def test_out_of_memory_in_a_chained_grpo_with_a_kl_term_retries_against_the_start(
        chained: tuple[Path, Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With beta > 0, TRL copies the starting adapter as the KL reference ("ref"). An out-of-memory error
    (raised at step 10, after checkpoint-8: a CUDA one cannot happen on this CPU) rebuilds the trainer
    over the same model: it must not fail on the copy the first trainer made, and must keep the start as
    the reference while it trains on from the checkpoint at half the micro-batch."""
    import torch
    from safetensors.torch import load_file

    from runner import api
    from runner.stages.train import grpo
    from tests.integration.test_memory_fit import OutOfMemoryAt

    _, spec, store, _ = chained
    copy = tmp_path / "store"
    shutil.copytree(store, copy)  # the SFT link cached, the fixture's store untouched
    built: list[tuple[int, int]] = []
    references: list[dict[str, torch.Tensor]] = []
    real = grpo.build_grpo_trainer

    def build(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append((args[1].micro_batch_size, args[1].gradient_accumulation))
        trainer = real(model, *args, **kwargs)
        references.append({n.replace(".ref.", "."): p.detach().clone() for n, p in model.named_parameters()
                           if ".ref." in n})
        if len(built) == 1:
            trainer.add_callback(OutOfMemoryAt(step=10))
        return trainer

    monkeypatch.setattr(grpo, "build_grpo_trainer", build)
    logs: list[str] = []
    api.run(spec, store=copy, only="train", log=logs.append, sets=["train.grpo.beta=0.04", "train.max_steps=12"])
    (micro, accumulation), retried = built
    assert retried == (micro // 2, accumulation * 2), built
    assert f"train: out of memory at micro-batch {micro}: retrying with {micro // 2} x {accumulation * 2} " \
           "accumulation from checkpoint-8" in logs
    [sft] = [p for p in (copy / "train").iterdir() if (p / "summary.json").is_file()
             and json.loads((p / "summary.json").read_text()).get("method") is None]
    start = load_file(str(sft / "adapter" / "adapter_model.safetensors"))
    for reference in references:  # the first trainer's reference and the rebuilt one's: the start, exactly
        assert reference and all(torch.equal(t.float(), start[n].float()) for n, t in reference.items())
    trained = [p for p in (copy / "train").iterdir() if (p / "summary.json").is_file()
               and json.loads((p / "summary.json").read_text()).get("method") == "grpo" and p.name != grpo_artifact(store).name]
    [train] = trained
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13)) and "kl" in rows[-1]
    assert not (train / "adapter" / "ref").exists()

def test_plan_shows_the_chain_cached_and_a_changed_sft_moves_the_grpo_key(
        chained: tuple[Path, Path, Path, str]) -> None:
    sft, spec, store, _ = chained
    planned = runner("plan", str(spec), "--store", str(store))
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("chain: train.init_adapter starts from")))
    assert [line.split()[0] for line in lines[at + 1:at + 4]] == ["model", "data", "train"]
    assert all("cached" in line for line in lines[at + 1:at + 4]), lines
    own = next(line for line in lines if line.startswith("train "))
    assert "cached" in own, lines
    # A second SFT (another learning rate) is a new link: the GRPO train waits for it, with a reason.
    sft.write_text(sft.read_text().replace("learning_rate: 1e-2", "learning_rate: 5e-3"))
    replanned = runner("plan", str(spec), "--store", str(store)).stdout
    assert re.search(r"^train\s+\?+\s+will run, after sft.yaml's train \(train.init_adapter\)", replanned, re.MULTILINE), replanned
