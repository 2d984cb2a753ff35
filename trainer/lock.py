"""A per-trial lock that a killed holder never leaves stuck.

`fcntl.flock` on `<trial>/.lock`: the kernel drops it when the holding process dies, however it
dies (kill -9, node reboot of a local disk, OOM), so there is no stale-lock timeout to guess.
On NFS, Linux emulates flock with POSIX byte-range locks, which the server also releases when
the client process goes away.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

LOCK = ".lock"


class TrialBusy(RuntimeError):
    """Another live process is running this trial."""


class TrialLock:
    """Exclusive, non-blocking lock on one trial folder; use as a context manager."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> TrialLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TrialBusy(f"{self.path.parent} is being run by another process ({holder(self.path.parent)})") from None
        # Who holds it, for `status`; informative only, the flock is what excludes.
        from trainer.provenance import now  # here: importing it (importlib.metadata) cost every `status` ~25 ms

        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def is_locked(folder: Path) -> bool:
    """True if a live process holds the trial's lock right now."""
    try:  # a str path, and no stat before the open: issue 25 (status of 10,000 trials)
        fd = os.open(f"{os.fspath(folder)}/{LOCK}", os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder(folder: Path) -> str:
    try:
        info = json.loads((Path(folder) / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
