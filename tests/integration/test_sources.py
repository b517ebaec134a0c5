"""Where models and data come from: broken rows counted, a local model folder, the Hub code path
run against a local Hugging Face cache (the Hub itself cannot be reached here, so the cache stands
in for it; snapshot_download and its commit resolution are the real library code)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.integration.conftest import DEMO, Tiny, only_artifact, runner

GOOD = {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "Vitamin C", "B": "Vitamin D",
        "C": "Vitamin K", "D": "Vitamin A"}, "answer_idx": "A"}


def test_broken_rows_are_dropped_and_counted(tiny: Tiny, tmp_path: Path) -> None:
    rows = [json.dumps(GOOD)] * 20 + ["{broken json", json.dumps({**GOOD, "answer_idx": "F"}),
                                      json.dumps({**GOOD, "question": ""}), json.dumps({**GOOD, "options": None})]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "broken.yaml"
    text = tiny.spec.read_text()
    start = text.index("  train: {path:")
    spec.write_text(text[:start] + f"  train: {{path: {tmp_path / 'rows.jsonl'}}}\n" + text[text.index("\n", start) + 1:])
    done = runner("run", str(spec), "--store", str(tiny.store), "--only", "data")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[runner] model: cached" in done.stdout  # the model is shared with the tiny spec's run
    data = sorted((tiny.store / "data").glob("*/stats.json"), key=lambda p: p.stat().st_mtime)[-1]
    stats = json.loads(data.read_text())
    assert stats["rows"] == {"train": 18, "validation": 2}
    assert stats["dropped"] == {"answer out of range (answer_idx)": 1, "empty question (question)": 1,
                                "missing options (options)": 1, "not valid JSON": 1}


def _model_folder(tiny: Tiny, folder: Path) -> Path:
    model = tiny.artifacts["model"]
    shutil.copytree(model / "weights", folder)
    for file in (model / "tokenizer").iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def _spec_with_model(tiny: Tiny, path: Path, model_yaml: str) -> Path:
    text = tiny.spec.read_text()
    start, end = text.index("model:"), text.index("data:")
    path.write_text(text[:start] + model_yaml + text[end:])
    return path


def test_local_model_folder_is_keyed_by_its_files(tiny: Tiny, tmp_path: Path) -> None:
    folder = _model_folder(tiny, tmp_path / "my-model")
    spec = _spec_with_model(tiny, tmp_path / "local.yaml", f"model:\n  source: local\n  path: {folder}\n")
    store = tmp_path / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "model")
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((only_artifact(store, "model") / "model.json").read_text())
    assert info == {"source": "local", "path": str(folder)}
    key = only_artifact(store, "model").name
    plan = runner("plan", str(spec), "--store", str(store))
    assert f"model   {key[:12]}  cached" in plan.stdout
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # one byte more
    plan = runner("plan", str(spec), "--store", str(store))
    assert "model   " in plan.stdout and "stale, files.model/config.json" in plan.stdout, plan.stdout


def test_hub_model_resolves_to_a_recorded_commit_from_the_cache(tiny: Tiny, tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--medlab--tiny-llama"
    _model_folder(tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = _spec_with_model(tiny, tmp_path / "hub.yaml", "model:\n  source: hub\n  id: medlab/tiny-llama\n  revision: main\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    store = tmp_path / "store"
    done = runner("run", str(spec), "--store", str(store), "--only", "model", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((only_artifact(store, "model") / "model.json").read_text())
    assert info == {"source": "hub", "id": "medlab/tiny-llama", "revision": "main", "commit": commit}
    assert (only_artifact(store, "model") / "tokenizer" / "tokenizer.json").is_file()


MEDMCQA = {"question": "Which vitamin deficiency causes scurvy?", "exp": "", "cop": 3, "opa": "Vitamin A",
           "opb": "Vitamin D", "opc": "Vitamin C", "opd": "Vitamin K", "subject_name": "Biochemistry",
           "topic_name": None, "id": "x", "choice_type": "single"}


def test_medmcqa_json_lines_with_a_deep_and_a_non_utf8_line_trains_and_scores(tiny: Tiny, tmp_path: Path) -> None:
    """MedMCQA's release is JSON Lines named `.json`; one line nested 100,000 deep and one of bad
    UTF-8 are dropped and counted, the other rows are kept: as training data and as a benchmark."""
    # Distinct questions here; identical ones are tested in test_eval_vs_reference.py.
    good = [json.dumps({**MEDMCQA, "id": f"q{i}", "question": f"{MEDMCQA['question']} ({i})"}).encode()
            for i in range(20)]
    dev = tmp_path / "dev.json"
    dev.write_bytes(b"\n".join(good[:10] + [b"[" * 100_000, b'{"question": "caf\xe9"}'] + good[10:]) + b"\n")
    text = tiny.spec.read_text()
    start = text.index("  train: {path:")
    fields = "{options: [opa, opb, opc, opd], answer_key: cop, answer_key_type: index1}"
    text = text[:start] + f"  train: {{path: {dev}}}\n  fields: {fields}\n" + text[text.index("\n", start) + 1:]
    start = text.index("  benchmarks:")
    text = text[:start] + ("  benchmarks: [{name: medmcqa, format: medmcqa, path: " + str(dev) +
                           ", fields: {answer_key_type: index1}}]\n") + text[text.index("\n", start) + 1:]
    spec = tmp_path / "medmcqa.yaml"
    spec.write_text(text)
    store = tmp_path / "store"
    for stage in ("model",):
        shutil.copytree(tiny.artifacts[stage], store / stage / tiny.artifacts[stage].name)
    done = runner("run", str(spec), "--store", str(store))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stats = json.loads((only_artifact(store, "data") / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 20
    assert stats["dropped"] == {"not UTF-8": 1, "not valid JSON (nested too deeply)": 1}
    scored = json.loads((only_artifact(store, "eval") / "metrics.json").read_text())["benchmarks"]["medmcqa"]
    assert scored["dropped"] == {"not UTF-8": 1, "not valid JSON (nested too deeply)": 1}


def _sharegpt(row: dict[str, object], n: int) -> dict[str, object]:
    options = row["options"]
    assert isinstance(options, dict)
    question = f"{row['question']}\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    return {"id": f"demo-{n}", "conversations": [{"from": "system", "value": "Answer with the option."},
                                                 {"from": "human", "value": question},
                                                 {"from": "gpt", "value": f"{row['answer_idx']}. {row['answer']}"}]}


def test_sharegpt_rows_train_and_a_chat_benchmark_is_scored(tiny: Tiny, tmp_path: Path) -> None:
    demo = [json.loads(line) for line in (DEMO / "medmc_train.jsonl").read_text().splitlines()[:40]]
    rows = [_sharegpt(r, n) for n, r in enumerate(demo)]
    rows += [{"conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "x"},
                                {"from": "gpt", "value": "a"}]},
             {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                                {"from": "gpt", "value": "a"}]}]
    (tmp_path / "share.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = [{"messages": [{"role": "user", "content": turn["conversations"][1]["value"]},  # type: ignore[index]
                           {"role": "assistant", "content": turn["conversations"][2]["value"]}]}  # type: ignore[index]
             for turn in rows[:4]]
    (tmp_path / "chat-bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bench))
    text = tiny.spec.read_text().split("data:")[0] + f"""data:
  train: {{path: {tmp_path / 'share.jsonl'}}}
  format: chat
  validation_fraction: 0.1
  max_length: 256
lora: {{r: 8, alpha: 16, dropout: 0.0}}
train: {{epochs: 1, max_steps: 3, learning_rate: 3e-3, batch_size: 8}}
eval:
  benchmarks: [{{name: chat, format: chat, path: {tmp_path / 'chat-bench.jsonl'}}}]
  generation: {{max_new_tokens: 6}}
  contamination: {{check: false}}
"""
    spec = tmp_path / "chat.yaml"
    spec.write_text(text)
    done = runner("run", str(spec), "--store", str(tmp_path / "store"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = json.loads((only_artifact(tmp_path / "store", "data") / "stats.json").read_text())
    assert stats["rows"]["train"] + stats["rows"]["validation"] == 40
    assert stats["dropped"] == {"a function_call turn: tool calls are not trained": 1, "unknown role 'narrator'": 1}
    metrics = json.loads((only_artifact(tmp_path / "store", "eval") / "metrics.json").read_text())
    chat = metrics["free_text"]["chat"]
    assert chat["format"] == "chat" and chat["n"] == 4
    assert set(chat["tuned"]) == {"rougeL", "bleu"} and set(chat["base"]) == {"rougeL", "bleu"}


def test_validate_names_a_column_no_row_has_before_any_stage(tiny: Tiny, tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"instruction": "i", "input": "", "output": "o"}) + "\n")
    text = tiny.spec.read_text().split("data:")[0] + f"data:\n  train: {{path: {tmp_path / 'rows.jsonl'}}}\n" \
                                                     "  format: alpaca\n  fields: {output: response}\n"
    (tmp_path / "bad.yaml").write_text(text)
    done = runner("validate", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2
    assert "data.fields.output: no column 'response' in the first rows of" in done.stdout + done.stderr


def test_every_preset_renders_in_transformers_as_in_the_unit_tests(tiny: Tiny) -> None:
    from transformers import AutoTokenizer

    from runner.rows.templates import PRESETS
    from tests.unit.test_chat_templates import CHAT, render

    tok = AutoTokenizer.from_pretrained(str(tiny.artifacts["model"] / "tokenizer"))
    for name, template in PRESETS.items():
        tok.chat_template = template
        for messages, generation in ((CHAT, False), (CHAT[:2], True)):
            ours = render(template, messages, generation, tok.bos_token, tok.eos_token)
            assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation) == ours, name


def test_a_preset_is_the_template_the_model_stage_stores(tiny: Tiny, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from runner.rows.templates import PRESETS

    text = tiny.spec.read_text().replace("  template: plain\n", "  chat_template: chatml\n")
    (tmp_path / "preset.yaml").write_text(text)
    store = tmp_path / "store"
    done = runner("run", str(tmp_path / "preset.yaml"), "--store", str(store), "--only", "model")
    assert done.returncode == 0, done.stderr[-2000:]
    tok = AutoTokenizer.from_pretrained(str(only_artifact(store, "model") / "tokenizer"))
    assert tok.chat_template == PRESETS["chatml"]
