"""One of the processes `accelerate launch` starts for the train stage (see runner.stages.train.launch)."""

from __future__ import annotations

import sys
from pathlib import Path

from runner.stages.train.launch import context_from, rank
from runner.stages.train.loop import train_here

if __name__ == "__main__":
    import torch

    from runner.core.quiet import quiet_known_warnings

    quiet_known_warnings()
    if torch.cuda.is_available():  # before any model loads: each process on its own GPU, not all on GPU 0
        torch.cuda.set_device(rank(local=True))
    train_here(context_from(Path(sys.argv[1])))
