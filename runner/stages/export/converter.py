"""Runs one of llama.cpp's converter scripts in a process of its own (they set up logging, import torch,
exit on error): `python converter.py SOURCE SCRIPT DECLARED_PRE -- ARGS...`; SCRIPT `quantize` runs
llama.cpp's quantizer (it prints per tensor to the process's own stderr, which the caller keeps).

SOURCE is llama.cpp's source folder (the scripts, `conversion/` and `gguf-py/` beside them, as the
scripts expect). DECLARED_PRE, unless "-", is the pre-tokenizer to declare for a byte-level BPE
tokenizer the converter's table does not know: the converter names a tokenizer's pre-tokenizer by
hashing how it splits a fixed text, and a vocabulary the project trained itself is in no table. The
table is asked first; the declaration is used only where the table has no answer, and only the
export stage, for a tokenizer it built, passes one. The parity gate then checks it on real prompts.

Imports nothing from `runner`: this file is executed by path.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any


def declare_pre_tokenizer(name: str) -> None:
    from conversion import base  # llama.cpp's package, on the path set by main()

    asked = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            found: str = asked(self, tokenizer)
            return found
        except NotImplementedError:  # "BPE pre-tokenizer was not recognized"
            print(f"converter: pre-tokenizer declared as {name!r} (a tokenizer this project built)", file=sys.stderr)
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]


def quantize(source: str, out: str, ftype: str, threads: int) -> None:
    """llama.cpp's quantizer (`llama-quantize`) through llama-cpp-python's binding of the same library."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = threads
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), params) != 0:
        sys.exit(f"llama_model_quantize failed for {ftype}")


def main() -> None:
    source, script, declared = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    args = sys.argv[sys.argv.index("--") + 1:]
    if script == "quantize":
        quantize(args[0], args[1], args[2], int(args[3]))
        return
    sys.path[:0] = [str(source), str(source / "gguf-py")]  # the gguf package of the same source, as the scripts do
    if declared != "-":
        declare_pre_tokenizer(declared)
    sys.argv = [str(source / script), *args]
    runpy.run_path(str(source / script), run_name="__main__")


if __name__ == "__main__":
    main()
