"""A launcher's progress line: trials done/failed/running, and epochs done over all trials of the run.

    progress = Progress(total, "local", folders=folders)   # folders: the trial folders of this run
    with progress.ticking():                               # redraws from the trials' status.json
        ... run the groups; on each worker event: progress.show(states, running, event)

The trials' status.json files say which epoch each trial has finished (written every epoch), so
the line moves while a fused group of 16 trains, not only when a worker starts or ends:

    local [#########---------------] 0/15 done, 0 failed, 1 running, epochs 75/180, 01:02, ETA 01:40

On a terminal the line is redrawn in place every `every_s` seconds (5: the clock and the ETA move
even while no epoch ends); into a file or pipe a line is written per event and whenever the epoch
count changed, so logs stay short. The ETA is the epochs left over the rate measured since the
first epoch this launcher saw end (startup and data loading are not epochs); none before that.
Failed trials' epochs that will never run are left out of what is left.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from trainer import results as R

if TYPE_CHECKING:
    from trainer.status import TrialState

EVERY_S = 5.0  # the "redrawn at least every 5 s"


class Progress:
    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, folders: Sequence[Path] = (), every_s: float | None = None
    ) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr  # looked up now, not at import: tests and tools swap it
        self.done = self.failed = self.running = 0
        self.start = time.monotonic()
        self.tty = self.stream.isatty()
        self.folders, self.every_s = list(folders), every_s or EVERY_S
        self.planned = {f: _planned_epochs(f) for f in self.folders}  # read once: a spec does not change in a run
        self.epochs_done = self.epochs_left = 0
        self.trials_seen = (0, 0)  # (done, failed) at the last count
        self._first: tuple[float, int] | None = None  # (when, epochs done) at the first epoch seen to end
        self._rate: float | None = None  # epochs per second since then
        self._seen_epochs = -1
        self._counted = False  # epochs done at the first look (a resumed run) are not this run's
        self._lock = threading.Lock()  # the ticker thread and the launcher's events draw on one stream
        if self.folders:
            self.count_epochs()

    # ---- what the trial folders say ------------------------------------------------------------------
    def count_epochs(self) -> None:
        """Epochs done and left over the run's trials, from their status.json; updates the rate."""
        done = left = ended = failed = 0
        for folder, planned in self.planned.items():
            state, epoch = _status_epoch(folder)
            ended += state == "done"
            failed += state == "failed"
            got = planned if state == "done" else min(epoch, planned)
            done += got
            if state != "failed":
                left += planned - got
        now = time.monotonic()
        if self._counted and self._first is None and done > self.epochs_done:
            self._first = (now, done)  # the first epoch end this launcher saw: the rate is measured from here
        elif self._first is not None and done > self._first[1]:
            self._rate = (done - self._first[1]) / max(now - self._first[0], 1e-9)
        self._counted = True
        self.epochs_done, self.epochs_left = done, left
        self.trials_seen = (ended, failed)

    def eta_s(self) -> float | None:
        if not self.epochs_left:
            return 0.0 if self.folders else None
        return self.epochs_left / self._rate if self._rate else None

    # ---- drawing -------------------------------------------------------------------------------------
    def line(self) -> str:
        width = 24
        if self.folders:
            fraction = self.epochs_done / max(self.epochs_done + self.epochs_left, 1)
        else:
            fraction = (self.done + self.failed) / max(self.total, 1)
        filled = int(width * fraction)
        bar = "#" * filled + "-" * (width - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total} done, {self.failed} failed, {self.running} running"
        if self.folders:
            text += f", epochs {self.epochs_done}/{self.epochs_done + self.epochs_left}"
        text += f", {_clock(time.monotonic() - self.start)}"
        eta = self.eta_s()
        if self.folders and self.epochs_left:
            text += f", ETA {_clock(eta) if eta is not None else '--:--'}"
        return text

    def _draw(self, event: str = "") -> None:
        line = self.line()
        if self.tty:
            ended = self.done + self.failed == self.total
            self.stream.write("\r" + line + ("\n" if ended else ""))
        else:
            self.stream.write(line + (f"  ({event})" if event else "") + "\n")
        self.stream.flush()
        self._seen_epochs = self.epochs_done

    def update(self, done: int, failed: int, running: int, event: str = "") -> None:
        with self._lock:
            self.done, self.failed, self.running = done, failed, running
            if self.folders:
                self.count_epochs()
            self._draw(event)

    def show(self, states: Iterable[TrialState], running: int, event: str = "") -> None:
        """Redraw from trial states (the one place that counts them for a progress line)."""
        states = list(states)
        self.update(sum(s.state == "done" for s in states), sum(s.state == "failed" for s in states), running, event)

    def tick(self) -> None:
        """Count epochs again; redraw on a terminal, or when the count moved."""
        with self._lock:
            self.count_epochs()
            self.done, self.failed = self.trials_seen  # as the folders say now (an event may be a while away)
            if self.tty or self.epochs_done != self._seen_epochs:
                self._draw()

    @contextlib.contextmanager
    def ticking(self) -> Iterator[Progress]:
        """A daemon thread calls tick() every `every_s` seconds until the block ends."""
        if not self.folders:
            yield self
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.every_s):
                try:
                    self.tick()
                except (OSError, ValueError):  # a closed stream at exit: the line is only a display
                    return

        thread = threading.Thread(target=loop, name=f"{self.label}-progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=self.every_s + 1)


def _planned_epochs(folder: Path) -> int:
    """The trial's epochs from its spec.json (0 if unreadable: the trial then counts as nothing)."""
    try:
        epochs = json.loads((folder / R.SPEC).read_text()).get("epochs", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return epochs if isinstance(epochs, int) and epochs > 0 else 0


def _status_epoch(folder: Path) -> tuple[str, int]:
    """(state, last finished epoch) from status.json, read without the lock (a display may be a moment late)."""
    try:
        data = json.loads((folder / R.STATUS).read_text())
        epoch = data.get("epoch") or 0
        return str(data.get("state", "pending")), epoch if isinstance(epoch, int) else 0
    except (OSError, ValueError, AttributeError):  # not written yet, or replaced while read
        return "pending", 0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"
