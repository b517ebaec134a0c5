"""GGUF export, read back by llama.cpp (llama-cpp-python) and the gguf package's reader, not by our code.

The tests' tiny model (conftest's TINY) is exported again with `export.gguf` into the same store, so
only export and eval run. The llama.cpp converter comes from the llama-cpp-python source release
(downloaded once into ~/.cache/qlora-runner; about 45 s and 77 MB the first time).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from llama_cpp import Llama

from runner.scoring.benchmarks import benchmark_items
from runner.spec.typed import load_spec
from runner.stages.data import read_rows
from tests.integration.conftest import TINY, Tiny, runner

GGUF_EXPORT = "export: {merged: true, gguf: {types: [f16, q8_0, q4_k_m]}, parity: {samples: 24}}"


def gguf_spec(tiny: Tiny, name: str, export: str) -> Path:
    spec = tiny.folder / f"{name}.yaml"
    spec.write_text(TINY.replace("export: {merged: true}", export))
    return spec


@pytest.fixture(scope="module")
def exported(tiny: Tiny) -> tuple[Path, Path, str]:
    """(export artifact, eval artifact, output) of the tiny spec exported to GGUF f16 and q8_0."""
    spec = gguf_spec(tiny, "gguf", GGUF_EXPORT)
    done = runner("run", str(spec), "--store", str(tiny.store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "model: cached" in done.stdout and "train: cached" in done.stdout  # only export and eval ran
    export = Path(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("  export ")))
    evaluated = Path(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("  eval ")))
    return export, evaluated, done.stdout + done.stderr


def choice_logliks(llm: Llama, prompt: str, choices: tuple[str, ...]) -> list[float]:
    """log P(" " + choice | prompt) for each choice, from llama.cpp's own tokens and logits."""
    out = []
    context = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    for choice in choices:
        whole = llm.tokenize((prompt + " " + choice).encode(), add_bos=True, special=True)
        continuation = whole[len(context):]
        llm.reset()
        llm.eval(whole[:-1])
        logits = np.asarray(llm.scores[: len(whole) - 1], dtype=np.float64)[len(context) - 1:]
        logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        out.append(float(sum(logprobs[k, t] for k, t in enumerate(continuation))))
    return out


def gguf_predictions(path: Path, tiny: Tiny, lora: Path | None = None, count: int = 24) -> list[int]:
    spec = load_spec(tiny.spec)
    bench = spec.eval.benchmarks[0]
    items = benchmark_items(bench, read_rows(bench, spec.resolve(bench.path or ""), None), None)[0][:count]
    llm = Llama(str(path), lora_path=str(lora) if lora else None, n_ctx=1024, n_batch=1024, n_ubatch=1024,
                logits_all=True, n_threads=1, verbose=False)
    preds = []
    for item in items:
        ll = choice_logliks(llm, item.prompt, item.choices)
        preds.append(int(np.argmax(ll)))
    return preds


def test_the_f16_gguf_predicts_what_the_adapter_predicts_in_eval(exported: tuple[Path, Path, str], tiny: Tiny) -> None:
    export, evaluated, _ = exported
    rows = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
    adapter = [r["tuned"] for r in rows if r["benchmark"] == "demo"][:24]
    assert gguf_predictions(export / "gguf" / "model-f16.gguf", tiny) == adapter
    q8 = gguf_predictions(export / "gguf" / "model-q8_0.gguf", tiny)
    agreement = sum(a == b for a, b in zip(q8, adapter)) / len(adapter)
    print(f"q8_0 agrees with the adapter on {agreement:.1%} of {len(adapter)} demo questions")
    parity = json.loads((export / "parity.json").read_text())
    assert parity["forms"]["q8_0"]["agreement"] == pytest.approx(agreement)  # the gate measured what llama.cpp does
    assert parity["forms"]["f16"]["agreement"] == 1.0 and parity["forms"]["f16"]["tokens_identical"] == 1.0
    assert parity["forms"]["merged"]["max_logprob_diff"] < 1e-3
    assert list(parity["forms"]) == ["adapter", "merged", "f16", "q8_0", "q4_k_m", "lora"]
    print("parity:", json.dumps(parity["forms"]))


def test_q4_k_m_comes_from_llama_cpps_quantizer(exported: tuple[Path, Path, str]) -> None:
    export, _, _ = exported
    fields = GGUFReader(export / "gguf" / "model-q4_k_m.gguf").fields
    assert fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    f16 = (export / "gguf" / "model-f16.gguf").stat().st_size
    assert (export / "gguf" / "model-q4_k_m.gguf").stat().st_size < 0.6 * f16


def test_the_gguf_lora_over_the_base_gguf_predicts_what_the_merged_gguf_predicts(exported: tuple[Path, Path, str],
                                                                                  tiny: Tiny) -> None:
    export, _, _ = exported
    folder = export / "gguf"
    merged = gguf_predictions(folder / "model-f16.gguf", tiny)
    assert gguf_predictions(folder / "base-f16.gguf", tiny, lora=folder / "adapter-f16.gguf") == merged
    assert gguf_predictions(folder / "base-f16.gguf", tiny) != merged  # the LoRA changes something


def test_the_gguf_carries_the_chat_template_and_eos(exported: tuple[Path, Path, str]) -> None:
    export, _, _ = exported
    config = json.loads((export / "merged" / "tokenizer_config.json").read_text())
    template = (export / "merged" / "chat_template.jinja").read_text()
    tokens = json.loads((export / "merged" / "tokenizer.json").read_text())["added_tokens"]
    eos_id = next(t["id"] for t in tokens if t["content"] == config["eos_token"])
    for name in ("model-f16.gguf", "model-q8_0.gguf"):
        fields = GGUFReader(export / "gguf" / name).fields
        assert fields["tokenizer.chat_template"].contents() == template
        assert fields["tokenizer.ggml.eos_token_id"].contents() == eos_id
        assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # declared for our own tokenizer
    modelfile = (export / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf\n")
    assert f'PARAMETER stop "{config["eos_token"]}"' in modelfile
    assert "{{ .Prompt }}" in modelfile and "<|assistant|>" in modelfile


def test_a_form_past_its_tolerance_stops_the_stage_naming_it(tiny: Tiny) -> None:
    spec = gguf_spec(tiny, "strict", "export: {merged: true, gguf: {types: [q8_0]}, "
                                     "parity: {samples: 8, q8: {max_logprob_diff: 1.0e-9}}}")
    done = runner("run", str(spec), "--store", str(tiny.store))
    assert done.returncode == 5, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"error: export parity: q8_0 .*log-likelihoods differ by up to [0-9.e-]+ \(allowed 1e-09\); "
                    r"loosen export.parity.q8 or set export.parity.on_fail: warn", last), last
    # The merged model passed its own (unquantized) tolerance: the gate went on to the GGUF.


def test_a_model_the_converter_does_not_know_is_refused_before_any_work(tmp_path: Path) -> None:
    from runner.core.errors import StageError
    from runner.stages.export.gguf import check_supported, llama_cpp_source

    source = llama_cpp_source(print)
    assert check_supported(source, {"architectures": ["LlamaForCausalLM"]}) == "LlamaForCausalLM"
    with pytest.raises(StageError, match=r"does not support FooForCausalLM \(model_type 'foo'\)"):
        check_supported(source, {"architectures": ["FooForCausalLM"], "model_type": "foo"})
