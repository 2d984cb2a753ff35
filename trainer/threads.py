"""The intra-op thread count of a trial's process: fixed by the trial, never by how it was launched.

On CPU, torch splits a convolution's or a matmul's reductions between its intra-op threads, so the
thread count changes the rounding: the same digits trial launched with `--max-parallel 1` (2
threads on a 2-core machine) and `--max-parallel 2` (1 thread each) differed after one epoch in
every CSI and loss column. Launchers give each worker a share of the cores (OMP_NUM_THREADS), which
depends on --max-parallel, the backend and the profile; so a trial sets its own count here, from its
spec's `threads` (a resource field: not in the trial id), and records it in status.json.

On a GPU the network's arithmetic does not use these threads, so the launcher's count stays (it
only speeds up the CPU-side work) unless the spec sets one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

CPU_DEFAULT_THREADS = 1  # the count with which results are comparable everywhere; also the fastest on a shared machine


def trial_threads(spec_threads: int | None, device: torch.device) -> int | None:
    """The intra-op threads a trial runs with; None: leave the process's count (a GPU trial, unset)."""
    if spec_threads is not None:
        return spec_threads
    return CPU_DEFAULT_THREADS if device.type == "cpu" else None


def use_threads(spec_threads: int | None, device: torch.device) -> dict[str, Any]:
    """Set the process's intra-op (and, once, inter-op) thread count for a trial; returns the
    provenance fields that record what it ran with."""
    n = trial_threads(spec_threads, device)
    if n is not None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):  # allowed once per process, before any inter-op work; never changes the numbers
            torch.set_num_interop_threads(n)
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}
