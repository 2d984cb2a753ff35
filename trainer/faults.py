"""Fault injection for the fault-tolerance suite: really kill this process at a chosen moment.

    SWEEP_FAULT=<site>:<n>          SIGKILL this process the n-th time (1-based) it reaches <site>
    SWEEP_FAULT=<site>:<n>:<SIGNAL> send it <SIGNAL> instead (e.g. USR1: a time limit ahead)
    SWEEP_FAULT=<site>:<n>:OOM      raise torch.OutOfMemoryError there, as a GPU out of memory does

Sites (where a crash is most dangerous): `parquet-tmp` and `json-tmp` and `checkpoint-tmp` (a temp
file is complete but not yet renamed), `rows-written` (results written, checkpoint not yet), `train-step`
(inside an epoch), `decode-batch` (an image loader worker, counted per process), the SLURM
launcher's `slurm-release` (an array submitted held, not yet released), and the collector's
`collect-rows`, `collect-tables`, `collect-figures`, `collect-report` (orchestrator.collect). Unset
(always, outside tests) it costs one global lookup per call.
"""

from __future__ import annotations

import os
import signal

SITES = (
    "parquet-tmp", "json-tmp", "checkpoint-tmp", "rows-written", "train-step", "decode-batch", "slurm-release",
    "collect-rows", "collect-tables", "collect-figures", "collect-report",
)  # fmt: skip
_TARGET = os.environ.get("SWEEP_FAULT")
OOM_MESSAGE = (  # torch 2.x's words, on an 80 GB GPU
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free. "
    "Including non-PyTorch memory, this process has 78.12 GiB memory in use. Of the allocated memory 76.50 GiB is allocated "
    "by PyTorch. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
)
_counts: dict[str, int] = {}


def point(site: str) -> None:
    if _TARGET is None:
        return
    name, _, rest = _TARGET.partition(":")
    if name != site:
        return
    nth, _, sig = rest.partition(":")
    _counts[site] = _counts.get(site, 0) + 1
    if _counts[site] == int(nth or 1):
        if sig == "OOM":  # what torch raises when the device's memory runs out (the tests have no GPU)
            import torch

            raise torch.OutOfMemoryError(OOM_MESSAGE)
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}") if sig else signal.SIGKILL)
