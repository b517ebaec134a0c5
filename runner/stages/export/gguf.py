"""GGUF for llama.cpp and Ollama, made with llama.cpp's own converter.

The converter scripts are not in llama-cpp-python's wheel, only in its source release, which holds the
very llama.cpp that wheel was compiled from: a GGUF written by them is one the installed llama.cpp
reads. They are taken from that release once (`pip download` of the sdist, ~77 MB and ~45 s here)
into a cache folder, `$RUNNER_LLAMA_CPP` if set (a llama.cpp checkout of your own), else
`~/.cache/qlora-runner/llama.cpp-<version>`. Only the scripts, `conversion/`, `gguf-py/` and the
licence are kept; nothing of llama.cpp is in this repository.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.signals import child_dies_with_parent
from runner.core.stage import Log

CONVERTER = Path(__file__).with_name("converter.py")
DIRECT = ("f16", "bf16", "q8_0")  # the converter's own output types
QUANTIZED = {"q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
             "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # made by llama.cpp's quantizer from the f16 file
KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE", "conversion/", "gguf-py/")
PIDFILE = "converter.pid"  # in the stage's work folder, while a converter runs
DEMO_PRE_TOKENIZER = "gpt-2"  # our demo tokenizer: byte-level BPE with GPT-2's split pattern (model/tiny.py)


def llama_cpp_source(log: Log) -> Path:
    """The folder holding llama.cpp's converter scripts for the installed llama-cpp-python."""
    own = os.environ.get("RUNNER_LLAMA_CPP")
    if own:
        if not (Path(own) / "convert_hf_to_gguf.py").is_file():
            raise StageError(f"RUNNER_LLAMA_CPP={own}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout")
        return Path(own)
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise StageError("export.gguf needs llama-cpp-python: pip install 'qlora-runner[gguf]'") from None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qlora-runner" / f"llama.cpp-{version}"
    if (cache / "convert_hf_to_gguf.py").is_file():
        return cache
    log(f"export: fetching llama.cpp's converter from the llama-cpp-python {version} source release (once)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={version}", "-d", tmp], capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"export.gguf: cannot download the llama-cpp-python {version} source from the package "
                             f"index ({last}); with no network, set RUNNER_LLAMA_CPP to a checkout of the llama.cpp "
                             f"that llama-cpp-python {version} was built from")
        unpacked = Path(tmp) / "src"
        _extract(archives[0], unpacked)
        try:
            os.replace(unpacked, cache)  # whole or not at all
        except OSError:  # a second run (a sweep's other job) put it there first: theirs is as good
            if not (cache / "convert_hf_to_gguf.py").is_file():
                raise
    return cache


def _extract(archive: Path, out: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/vendor/llama.cpp/")
            if inner and member.isfile() and any(inner == k or inner.startswith(k) for k in KEEP if k):
                member.name = inner
                tar.extract(member, out, filter="data")


def check_supported(source: Path, config: dict[str, Any]) -> str:
    """The model's architecture, if llama.cpp's converter has it; else a one-line error, before any work."""
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    table = (source / "conversion" / "__init__.py").read_text("utf-8")
    if f'"{arch}"' not in table.partition("TEXT_MODEL_MAP")[2].partition("}")[0]:
        raise StageError(f"export.gguf: llama.cpp's converter does not support {arch} "
                         f"(model_type {config.get('model_type')!r}); remove export.gguf for this model")
    return arch


def convert(source: Path, script: str, args: list[str], declared: str | None, work: Path, log: Log) -> None:
    """One converter process, tied to this one (killed with it, even by SIGKILL: no orphan goes on
    writing), its pid kept in the work folder so a rerun can stop a leftover (see stop_leftover)."""
    cmd = [sys.executable, str(CONVERTER), str(source), script, declared or "-", "--", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          preexec_fn=child_dies_with_parent()) as proc:
        try:
            (work / PIDFILE).write_text(f"{proc.pid}\n", "utf-8")
            _, stderr = proc.communicate()
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: the converter stops with us
            proc.kill()
            raise
    (work / PIDFILE).unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()] or ["no output"]
        if _disk_full(stderr, work):  # mapped by the runner to its disk-full line (exit 6)
            raise OSError(errno.ENOSPC, f"No space left on device, in llama.cpp's {script}")
        raise StageError(f"export.gguf: llama.cpp's {script} failed: {lines[-1][:300]}")
    for line in stderr.splitlines():
        if line.startswith("converter:"):
            log(f"export: {line.removeprefix('converter: ')}")


def _disk_full(stderr: str, folder: Path) -> bool:
    """The converter's own words for a full disk (Python's OSError), or hardly any space left (the
    quantizer's C code says only that it failed)."""
    if any(words in stderr for words in ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")):
        return True
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def stop_leftover(work: Path, log: Log) -> None:
    """A converter still running from a killed earlier build of this key (where the parent-death signal
    is not there to stop it, or came too late): the stage's lock says no live build owns this work
    folder, so it is stopped before anything is written here again."""
    try:
        pid = int((work / PIDFILE).read_text("utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except (OSError, ValueError):
        return  # none recorded, or gone (or no /proc): nothing is left to stop
    if str(CONVERTER) not in cmdline or str(work) not in cmdline:
        return  # the pid was reused by another process
    log(f"export: stopping llama.cpp's converter (pid {pid}) left running by an earlier, killed run")
    try:
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):  # its new parent reaps it
            if not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                break
            time.sleep(0.05)
    except OSError:
        pass  # already gone
    (work / PIDFILE).unlink(missing_ok=True)


def write_ggufs(source: Path, merged: Path, adapter: Path, base: Path, out: Path, work: Path, types: tuple[str, ...],
                declared: str | None, threads: int, log: Log) -> dict[str, Path]:
    """Every asked type of the merged model, the adapter as a GGUF LoRA, and the base it applies to in
    f16 (llama.cpp's `-m base --lora adapter`, Ollama's FROM + ADAPTER). Returns the files by form name."""
    stop_leftover(work, log)  # before anything is written where a leftover converter could write
    if out.exists():  # made by that leftover (a converter makes its output's folder): never trusted
        shutil.rmtree(out)
    out.mkdir()
    files: dict[str, Path] = {}
    f16 = out / "model-f16.gguf" if "f16" in types else work / "model-f16.gguf"
    for kind in [t for t in DIRECT if t in types or (t == "f16" and set(types) & set(QUANTIZED))]:
        path = f16 if kind == "f16" else out / f"model-{kind}.gguf"
        log(f"export: converting the merged model to GGUF {kind}")
        convert(source, "convert_hf_to_gguf.py", [str(merged), "--outfile", str(path), "--outtype", kind], declared, work, log)
        if kind in types:
            files[kind] = path
    for kind in [t for t in types if t in QUANTIZED]:
        log(f"export: quantizing to GGUF {kind}")
        convert(source, "quantize", [str(f16), str(out / f"model-{kind}.gguf"), QUANTIZED[kind], str(threads)], None, work, log)
        files[kind] = out / f"model-{kind}.gguf"
    log("export: converting the adapter to a GGUF LoRA")
    convert(source, "convert_lora_to_gguf.py", [str(adapter), "--base", str(merged), "--outtype", "f16",
                                                "--outfile", str(out / "adapter-f16.gguf")], declared, work, log)
    files["lora"] = out / "adapter-f16.gguf"
    log("export: converting the base the adapter applies to (dequantized when 4-bit) to GGUF f16")
    convert(source, "convert_hf_to_gguf.py", [str(base), "--outfile", str(out / "base-f16.gguf"), "--outtype", "f16"],
            declared, work, log)
    files["base"] = out / "base-f16.gguf"
    return files


def modelfile(tok: Any, gguf_name: str) -> str:
    """An Ollama Modelfile: the GGUF, the chat template in Ollama's Go template form, the stop tokens.
    The template is the tokenizer's own, rendered around placeholders (what Ollama fills in)."""
    def render(messages: list[dict[str, str]]) -> str:
        text: str = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    plain = render([{"role": "user", "content": "{{ .Prompt }}"}])
    try:
        with_system = render([{"role": "system", "content": "{{ .System }}"}, {"role": "user", "content": "{{ .Prompt }}"}])
    except Exception:  # a template that refuses a system message: Ollama's .System is then unused
        with_system = plain
    head = with_system[: len(with_system) - len(plain)] if with_system.endswith(plain) else ""
    template = ("{{ if .System }}" + head + "{{ end }}" if head else "") + plain
    stops = sorted({t for t in (tok.eos_token, *_end_tokens(tok)) if t})
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def _end_tokens(tok: Any) -> list[str]:
    """Special tokens that end a turn in the template (<|end|>, <|eot_id|>, <|im_end|>), besides EOS."""
    template = tok.chat_template or ""
    return [t for t in tok.all_special_tokens if t in template and any(w in t for w in ("end", "eot"))]


def write_summary(out: Path, files: dict[str, Path]) -> None:
    summary = {"files": {form: {"file": p.name, "bytes": p.stat().st_size} for form, p in files.items()},
               "llama_cpp_python": metadata.version("llama-cpp-python")}
    (out / "gguf.json").write_text(json.dumps(summary, indent=1, sort_keys=True), "utf-8")
