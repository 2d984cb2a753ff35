"""A one-line progress display for launchers: redrawn in place on a terminal, a line per event otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from trainer.status import TrialState


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr  # looked up now, not at import: tests and tools swap it
        self.done = self.failed = self.running = 0
        self.start = time.monotonic()
        self.tty = self.stream.isatty()

    def update(self, done: int, failed: int, running: int, event: str = "") -> None:
        self.done, self.failed, self.running = done, failed, running
        elapsed = int(time.monotonic() - self.start)
        width = 24
        filled = int(width * (done + failed) / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} done, {failed} failed, {running} running, {elapsed // 60:02d}:{elapsed % 60:02d}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done + failed == self.total else ""))
        else:
            self.stream.write(line + (f"  ({event})" if event else "") + "\n")
        self.stream.flush()

    def show(self, states: Iterable[TrialState], running: int, event: str = "") -> None:
        """Redraw from trial states (the one place that counts them for a progress line)."""
        states = list(states)
        self.update(sum(s.state == "done" for s in states), sum(s.state == "failed" for s in states), running, event)
