"""Stage `model`: resolve the base model and its tokenizer.

hub: a model id at a revision, resolved to its commit (weights stay in the Hugging Face cache);
local: a folder, keyed by the digests of its files; init: a tiny random model built here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from runner.core.stage import StageContext
from runner.rows.templates import chosen_template
from runner.spec.typed import Spec

name = "model"
version = 1
upstream: tuple[str, ...] = ()
volatile: tuple[str, ...] = ()
uses_profile = False
gate = None  # nothing to check before it builds
side_effect = None  # it acts on nothing outside the store

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def spec_slice(spec: Spec) -> dict[str, Any]:
    m = spec.model
    # The template written into the tokenizer: a preset enters as its text, the same key as writing it
    # out in model.chat_template; with neither, None, as before presets existed.
    common = {"source": m.source, "chat_template": chosen_template(m.chat_template, spec.data.chat_template)}
    if m.source == "hub":
        return {"model": {**common, "id": m.id, "revision": m.revision, "trust_remote_code": m.trust_remote_code}}
    if m.source == "local":
        return {"model": {**common, "trust_remote_code": m.trust_remote_code}}  # the folder enters by digests
    i = m.init
    init = {"vocab_size": i.vocab_size, "hidden_size": i.hidden_size, "intermediate_size": i.intermediate_size,
            "num_layers": i.num_layers, "num_heads": i.num_heads, "num_kv_heads": i.num_kv_heads,
            "max_position_embeddings": i.max_position_embeddings, "initializer_range": i.initializer_range}
    return {"model": {**common, "init": init}, "seed": spec.seed}


MAX_MODEL_FILES = 10_000  # a model folder holds tens of files; this many means `path` is not one


def local_files(spec: Spec) -> dict[str, Path]:
    """Every file under the local model folder: the key hashes them. The spec has checked that the
    folder looks like a model (config.json, weights); the count is capped so that a wrong but
    plausible folder (a home directory with a config.json) is refused instead of hashed for minutes."""
    if spec.model.source != "local" or spec.model.path is None:
        return {}
    folder = spec.resolve(spec.model.path)
    files = {}
    for p in folder.rglob("*"):
        if p.is_file():
            files[f"model/{p.relative_to(folder).as_posix()}"] = p
            if len(files) > MAX_MODEL_FILES:
                from runner.core.errors import SpecError

                raise SpecError([f"model.path: {str(folder)[:80]} holds more than {MAX_MODEL_FILES} files; "
                                 "point it at the model's own folder (config.json, tokenizer, weights)"])
    return dict(sorted(files.items()))


def run(ctx: StageContext) -> None:
    m = ctx.spec.model
    tokenizer_dir = ctx.out / "tokenizer"
    info: dict[str, Any] = {"source": m.source}
    if m.source == "init":
        from runner.models.tiny import build_model, build_tokenizer
        from runner.rows import demo

        ctx.log("model: building a tiny RANDOM-INITIALISED Llama (demo/test model: it knows nothing until trained)")
        build_tokenizer(m.init.vocab_size, demo.corpus(), tokenizer_dir)
        info["parameters"] = build_model(m.init, m.init.vocab_size, ctx.spec.seed, ctx.out / "weights")
        info["random_init"] = True
    elif m.source == "local":
        assert m.path is not None
        folder = ctx.spec.resolve(m.path)
        info["path"] = str(folder)
        _copy_tokenizer(folder, tokenizer_dir)
    else:
        assert m.id is not None
        info.update(_resolve_hub(m.id, m.revision, tokenizer_dir))
    template = chosen_template(m.chat_template, ctx.spec.data.chat_template)
    if template is not None:  # the one place a template is chosen: every later use reads this tokenizer
        _override_chat_template(tokenizer_dir, template)
    (ctx.out / "model.json").write_text(json.dumps(info, indent=1, sort_keys=True), "utf-8")


def _resolve_hub(model_id: str, revision: str, tokenizer_dir: Path) -> dict[str, Any]:
    """Download (or find in the cache) the snapshot at `revision` and record its commit."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(model_id, revision=revision,
                                    allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    _copy_tokenizer(folder, tokenizer_dir)
    # The snapshot folder is named after the commit it holds: that is the pin we record.
    return {"id": model_id, "revision": revision, "commit": folder.name}


def _copy_tokenizer(folder: Path, tokenizer_dir: Path) -> None:
    tokenizer_dir.mkdir(parents=True)
    found = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not any(f in found for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        from runner.core.errors import StageError

        raise StageError(f"model: no tokenizer files in {folder} (expected tokenizer.json or tokenizer.model)")
    for file in found:
        shutil.copy2(folder / file, tokenizer_dir / file)


def _override_chat_template(tokenizer_dir: Path, template: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.chat_template = template
    tok.save_pretrained(str(tokenizer_dir))
