"""Cross-field rules of the training methods (train.method) and the LoRA variants (lora.*): which
record formats each method trains on, and which PEFT options work with the base the spec loads."""

from __future__ import annotations

from typing import Any

Problems = list[tuple[tuple[Any, ...], str]]

# The record formats each method reads; grpo's are the GRPO rules' to say (the prompt and the key it checks).
FORMATS = {"sft": ("multiple_choice", "qa", "alpaca", "chat", "text", "reasoning"), "dpo": ("preference",),
           "orpo": ("preference",), "kto": ("kto",)}
PREFERENCE_METHODS = ("dpo", "orpo", "kto")


def method_problems(doc: dict[str, Any]) -> Problems:
    """Every training and validation source in a format its method trains on."""
    method = doc["train"]["method"]
    allowed = FORMATS.get(method)
    if allowed is None:
        return []
    found: Problems = []
    for where, src in _sources(doc["data"]):
        fmt = src.get("format") or doc["data"]["format"]
        if fmt not in allowed:
            want = " or ".join(allowed) if method != "sft" else "one of " + ", ".join(allowed)
            hint = ("; set train.method dpo or orpo to train on pairs, kto on labelled completions"
                    if method == "sft" else "")
            found.append((where if src.get("format") else ("data", "format"),
                          f"train.method {method} reads {want} rows, got {fmt}{hint}"))
    if method in PREFERENCE_METHODS and doc["train"]["packing"]:
        found.append((("train", "packing"), f"train.method {method} trains on whole pairs: remove packing"))
    if method in PREFERENCE_METHODS and doc["train"]["early_stopping"] is not None:
        found.append((("train", "early_stopping"), f"not with train.method {method} yet (it stops on the SFT "
                                                   "validation loss): remove it"))
    return _unique(found)


def lora_problems(doc: dict[str, Any]) -> Problems:
    """LoRA variants PEFT offers that our base or method cannot use, a line each saying why."""
    lora, found = doc["lora"], []
    init = lora["init"]
    if init == "pissa" and doc["model"]["quantization"] != "none":
        found.append((("lora", "init"), "pissa takes an SVD of the full-precision weights and PEFT refuses a 4-bit "
                                        "base; it also rewrites the base, which export and eval load unchanged: use "
                                        "init default, gaussian or orthogonal"))
    elif init in ("pissa", "olora"):
        found.append((("lora", "init"), f"{init} moves the base's principal directions into the adapter and "
                                        "rewrites the base, which export and eval load unchanged: use init default, "
                                        "gaussian or orthogonal"))
    if "lm_head" in lora["modules_to_save"] and doc["train"]["method"] in PREFERENCE_METHODS:
        found.append((("lora", "modules_to_save"), f"train.method {doc['train']['method']}: TRL computes "
                      "log-probabilities from lm_head's own weight, so a trained copy would be ignored: remove lm_head"))
    return found


def _sources(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, source) of every training and validation source (as runner.spec.rules.data_sources, which
    imports this module)."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    for role in ("train", "validation"):
        value = data[role]
        out += [(("data", role, i), src) for i, src in enumerate(value)] if isinstance(value, list) else (
            [(("data", role), value)] if value is not None else [])
    return out


def _unique(found: Problems) -> Problems:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for where, message in found:
        if (where, message) not in seen:
            seen.add((where, message))
            out.append((where, message))
    return out
