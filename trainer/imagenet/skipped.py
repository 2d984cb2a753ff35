"""The images this process could not read or decode, for the trial's status.json.

One log per process (both loaders, train and val, every epoch): `count` distinct files, the
first FIRST of them by relative path, and the reason of each of those. A file met again in a later
epoch is not counted twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
FIRST = 10


@dataclass(frozen=True)
class Skipped:
    """What was skipped so far: `count` files, the first of them (relative paths) and why."""

    count: int
    first: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: {"count": n, "first": [relative paths], "reasons": {path: reason}}."""
        return {"count": self.count, "first": list(self.first), "reasons": dict(self.reasons)}


class SkipLog:
    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._first: list[str] = []
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, path: str, reason: str) -> bool:
        """Note that `path` (relative to the imagenet folder) was skipped; True if it is new."""
        with self._lock:
            if path in self._seen:
                return False
            self._seen.add(path)
            if len(self._first) < FIRST:
                self._first.append(path)
                self._reasons[path] = reason
        log.warning("imagenet: skipped unreadable image %s (%s)", path, reason)
        return True

    def reset(self) -> None:
        """Forget everything (tests; a process that opens another data set)."""
        with self._lock:
            self._seen.clear()
            self._first.clear()
            self._reasons.clear()

    def snapshot(self) -> Skipped:
        with self._lock:
            return Skipped(len(self._seen), tuple(self._first), dict(self._reasons))


SKIPPED = SkipLog()  # the process's log: what trainer code reads through data.skipped
