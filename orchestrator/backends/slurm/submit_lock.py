"""One launcher at a time submits a sweep's trials: a lock on `<sweep>/.submit.lock`.

    with submitting(sweep):      # look at the queue and the trial folders, submit, record
        ...

A submission round reads which trials are neither done nor queued, submits them and records each
job in the trial's slurm_job.json. Two launchers of one sweep at the same instant (a second
terminal, a cron job, a retry loop) would both read the same trials as unsubmitted and both submit
them; and the second would take the first's array, held until its release (launcher.release),
for one a killed launcher left behind, and cancel it. The per-trial lock keeps such a trial from
running twice, but the queue would hold it twice. So every round (the first submission, each
top-up of `wait: true`) and `orchestrator.cancel` hold this lock; a launcher that finds it taken
says so and waits for the round to end, then reads the folders afresh and submits only what is
still unsubmitted. The lock is not held while a launcher waits for its jobs to finish.

The lock is `fcntl.flock`, like the trial lock (trainer.lock): the kernel drops it when its
holder dies however it dies, so a killed launcher never leaves it stuck. A round is bounded
(every SLURM command it runs has a timeout), so the wait is bounded too: after WAIT_S the waiting
launcher ends with one line naming the holder. Within one process the lock is re-entrant.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from trainer.errors import UserError
from trainer.provenance import now

LOCK = ".submit.lock"
WAIT_S = 900.0  # far longer than a round takes (a submit of 10,000 trials: ~40 s of CPU on the test SLURM)
POLL_S = 0.2
NAME_WAIT_S = 1.0  # how long a waiter waits for the holder to write its name before saying it waits
UNKNOWN = "holder unknown"
_held: dict[str, int] = {}  # lock path -> depth, for this process


@contextlib.contextmanager
def submitting(sweep: Path, wait_s: float = WAIT_S, doing: str = "submit") -> Iterator[None]:
    """Hold the sweep's submit lock; wait (saying so once) while another process holds it."""
    path = os.path.abspath(os.path.join(sweep, LOCK))
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot open {path} ({err}); the sweep folder must be writable to {doing}") from None
    try:
        _acquire(fd, path, wait_s, doing)
        os.ftruncate(fd, 0)  # who holds it, for the message of the one that waits; the flock is what excludes
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode())
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: the next waiter must not name this process as the holder
    finally:
        os.close(fd)  # closing drops the flock


def _acquire(fd: int, path: str, wait_s: float, doing: str) -> None:
    start = time.monotonic()
    deadline = start + wait_s
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        # A holder writes who it is just after taking the lock: give it a moment before naming it.
        if not said and (holder(path) != UNKNOWN or time.monotonic() - start >= NAME_WAIT_S):
            print(f"slurm: another launcher is submitting this sweep's trials ({holder(path)}); waiting for it to finish", file=sys.stderr)
            said = True
        if time.monotonic() >= deadline:
            raise UserError(
                f"another launcher has held {path} for over {wait_s:g} s ({holder(path)}); if that process is stuck, "
                f"stop it and {doing} again"
            )
        time.sleep(POLL_S)


def holder(path: str) -> str:
    """Who holds the lock, as its holder wrote it (informative only)."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return UNKNOWN
    if not isinstance(info, dict) or "pid" not in info:
        return UNKNOWN
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
