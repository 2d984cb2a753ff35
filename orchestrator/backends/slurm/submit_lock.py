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

The lock is orchestrator.sweep_lock's (`fcntl.flock`, like the trial lock): the kernel drops it
when its holder dies however it dies, so a killed launcher never leaves it stuck. A round is bounded
(every SLURM command it runs has a timeout), so the wait is bounded too: after WAIT_S the waiting
launcher ends with one line naming the holder. Within one process the lock is re-entrant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from orchestrator.sweep_lock import holding

LOCK = ".submit.lock"
WAIT_S = 900.0  # far longer than a round takes (a submit of 10,000 trials: ~40 s of CPU on the test SLURM)


@contextlib.contextmanager
def submitting(sweep: Path, wait_s: float = WAIT_S, doing: str = "submit") -> Iterator[None]:
    """Hold the sweep's submit lock; wait (saying so once) while another process holds it."""
    waiting = "slurm: another launcher is submitting this sweep's trials"
    with holding(Path(sweep) / LOCK, wait_s=wait_s, waiting=waiting, doing=doing, holder_is="another launcher"):
        yield
