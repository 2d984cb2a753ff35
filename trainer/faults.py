"""Fault injection for the fault-tolerance suite: really kill this process at a chosen moment.

    SWEEP_FAULT=<site>:<n>          SIGKILL this process the n-th time (1-based) it reaches <site>
    SWEEP_FAULT=<site>:<n>:<SIGNAL> send it <SIGNAL> instead (e.g. USR1: a time limit ahead)

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
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}") if sig else signal.SIGKILL)
