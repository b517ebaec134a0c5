"""One of the processes `accelerate launch` starts for the train stage (see runner.stages.train.launch)."""

from __future__ import annotations

import sys
from pathlib import Path

from runner.stages import train
from runner.stages.train.launch import context_from

if __name__ == "__main__":
    import os

    import torch

    from runner.quiet import quiet_known_warnings

    quiet_known_warnings()
    if torch.cuda.is_available():  # before any model loads: each process on its own GPU, not all on GPU 0
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    train.train_here(context_from(Path(sys.argv[1])))
