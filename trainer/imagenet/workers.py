"""The multiprocessing context and start-up of every process pool of the ImageNet input.

Used by the portable loader's DataLoader workers and by the manifest's --check.

Why forkserver: a forked child inherits the parent's open file descriptions, among them the
trial's lock (`flock` on <trial>/.lock, trainer.lock): a forked DataLoader worker that outlives a
killed trial process keeps the trial locked. Children of the forkserver are forked from a clean
server process that was started by exec (which closes the non-inheritable lock descriptor), so
they never hold it. The server preloads torch/torchvision and our decoding modules once, so a
worker costs a fork, not an interpreter start plus an import of torch (as `spawn` would).
Caveat (as with spawn): the main module must be importable and guarded by
`if __name__ == "__main__":` (all our entry points are).

Why a watchdog: a worker's parent is the forkserver, not the trial, so torch's own check (exit
when the parent pid changes) never fires when the trial is SIGKILLed, and the server waits for
its children: both would live on. Each worker therefore polls the trial process and exits
within a second of its death.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.context import BaseContext

# Everything a worker imports, so that no worker pays for an import (torchvision.transforms.v2 is ~1 s).
PRELOAD = ["trainer.imagenet.portable", "trainer.imagenet.check", "torchvision.io", "torchvision.transforms.v2.functional", "PIL.Image"]
POLL_S = 0.5


def worker_context() -> BaseContext:
    """The forkserver context, preloading the loader's modules (no effect once the server runs)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _watch(pid: int) -> None:
    while True:
        time.sleep(POLL_S)
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            os._exit(0)  # the trial is gone: no clean-up to do for a decoder
        except PermissionError:
            pass  # exists (under another user: pid reused, at worst we linger)


def init_worker(worker_id: int = 0, main_pid: int | None = None) -> None:
    """Start-up of a worker: one intra-op thread (a worker is one core) and the trial watchdog."""
    import torch

    torch.set_num_threads(1)
    if main_pid is not None:
        threading.Thread(target=_watch, args=(main_pid,), name="trial-watchdog", daemon=True).start()
