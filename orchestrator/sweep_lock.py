"""A lock on one kind of work on a sweep, that a killed holder never leaves stuck: `<sweep>/<name>`.

    with holding(sweep / ".collect.lock", waiting="another collect of this sweep is running", doing="collect"):
        ...

Used for the work two processes must not interleave on one sweep: a SLURM submission round
(orchestrator/backends/slurm/submit_lock.py) and a collect (orchestrator/collect). A process that
finds the lock taken says so once, naming the holder, and waits; it gives up after `wait_s` with
one line (a holder that is alive but stuck). `fcntl.flock`, as the trial lock (trainer.lock): the
kernel drops it when its holder dies however it dies, and on NFS Linux emulates it with byte-range
locks that the server releases too. Within one process the lock is re-entrant.
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

POLL_S = 0.2
NAME_WAIT_S = 1.0  # how long a waiter waits for the holder to write its name before saying it waits
UNKNOWN = "holder unknown"
_held: dict[str, int] = {}  # lock path -> depth, for this process


@contextlib.contextmanager
def holding(path: Path, *, wait_s: float, waiting: str, doing: str, holder_is: str = "another process") -> Iterator[bool]:
    """Hold the lock at `path`; wait (saying `waiting (holder); waiting for it to finish` once) while another process holds it.

    Yields whether it had to wait (the other process may have done this one's work meanwhile).
    `doing`: the verb of the one-line refusal after `wait_s` ("... stop it and {doing} again").
    """
    path_s = os.path.abspath(path)
    if _held.get(path_s):
        _held[path_s] += 1
        try:
            yield False
        finally:
            _held[path_s] -= 1
        return
    try:
        fd = os.open(path_s, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot open {path_s} ({err.strerror}); the sweep folder must be writable to {doing}") from None
    try:
        waited = _acquire(fd, path_s, wait_s, waiting, doing, holder_is)
        from trainer.provenance import now  # here: importing it (importlib.metadata) costs ~25 ms

        os.ftruncate(fd, 0)  # who holds it, for the message of the one that waits; the flock is what excludes
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode())
        _held[path_s] = 1
        try:
            yield waited
        finally:
            del _held[path_s]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: the next waiter must not name this process as the holder
    finally:
        os.close(fd)  # closing drops the flock


def _acquire(fd: int, path: str, wait_s: float, waiting: str, doing: str, holder_is: str) -> bool:
    start = time.monotonic()
    deadline = start + wait_s
    said = blocked = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return blocked
        except BlockingIOError:
            blocked = True
        # A holder writes who it is just after taking the lock: give it a moment before naming it.
        if not said and (holder(path) != UNKNOWN or time.monotonic() - start >= NAME_WAIT_S):
            print(f"{waiting} ({holder(path)}); waiting for it to finish", file=sys.stderr)
            said = True
        if time.monotonic() >= deadline:
            raise UserError(
                f"{holder_is} has held {path} for over {wait_s:g} s ({holder(path)}); if that process is stuck, stop it and {doing} again"
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


# ---- the launch lock: is a launcher of the sweep alive? ---------------------------------------------
LAUNCH_LOCK = ".launch.lock"  # <sweep>/.launch.lock, held shared by every `orchestrator.sweep` while it launches


@contextlib.contextmanager
def launching(sweep: Path) -> Iterator[None]:
    """Held (shared: two launchers of one sweep may run side by side) while a launcher prepares and
    runs the sweep's trials, so `launcher_running` tells a sweep whose trials wait for a worker of
    a live launcher (pending, not yet running) from one that nothing will run until it is launched
    again: `status --watch` keeps watching the first, `cancel` says there is nothing to cancel in the second."""
    sweep.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep / LAUNCH_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # never blocks: only launcher_running takes it exclusively, without waiting
        yield
    finally:
        os.close(fd)  # closing drops the flock (and the kernel drops it for a killed launcher)


def launcher_running(sweep: Path) -> bool:
    """Does a live process hold the sweep's launch lock (`launching`) right now?"""
    try:
        fd = os.open(Path(sweep) / LAUNCH_LOCK, os.O_RDONLY)
    except OSError:  # no launch lock: no launcher since this code (or not readable: not known to run)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
