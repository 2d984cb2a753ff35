"""`wait: true`: follow a sweep's jobs until every one has left the queue, topping up what submit
limits held back, and say once why a queued job cannot start as it is.

Polls `squeue` (every 2 s for a minute, then 10 s, then 30 s) and shows the progress line from
the trial folders. Ctrl-C leaves the jobs running and says how to follow or cancel them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm.cluster import cluster_min_job_age
from orchestrator.backends.slurm.queue import queue_info, stuck, stuck_lines
from orchestrator.backends.slurm.sbatch import Task, count_trials
from orchestrator.progress import Progress
from trainer.errors import UserError
from trainer.status import observe

if TYPE_CHECKING:  # the launcher imports this module
    from orchestrator.backends.slurm.launcher import Submitter

# With `wait: true`, a try every TOPUP_EVERY_S besides those that follow our jobs out of the queue
# (room may come from other jobs); after TOPUP_TRIES_WITHOUT_ROOM in a row find none while none of
# the sweep's jobs is in the queue (so none of ours can leave and make room), the launcher stops waiting.
TOPUP_EVERY_S = 60
TOPUP_TRIES_WITHOUT_ROOM = 10


def wait_for_jobs(
    submitter: Submitter, left: list[Task], folders: list[Path], name: str, queued: list[str], poll_s: float = 2.0
) -> list[Task]:
    """Block until every task is submitted and none of the jobs is in the queue; show progress from the trial folders.

    Tasks a submit limit held back go out as ours leave the queue (or every minute, in case the
    room came from other jobs). Returns the tasks still unsubmitted when it stopped waiting for
    room: after TOPUP_TRIES_WITHOUT_ROOM fruitless tries in a row with none of ours in the queue.
    """
    progress = Progress(len(folders), "slurm", folders=folders)
    with progress.ticking():  # epochs move the line between polls of the queue (which slow down to 30 s)
        return _wait(submitter, left, folders, name, queued, poll_s, progress)


def _wait(
    submitter: Submitter, left: list[Task], folders: list[Path], name: str, queued: list[str], poll_s: float, progress: Progress
) -> list[Task]:
    shown: tuple[str, ...] | None = None
    said_stuck: frozenset[str] = frozenset()  # the reasons for jobs that cannot start, said once each
    start, failures = time.monotonic(), 0
    mark, last_try = None, time.monotonic()  # our tasks in the queue when the limit last refused, and when
    idle = 0  # tries in a row that found no room while none of ours was queued
    # A full controller (MaxJobCount) frees a finished job's record MinJobAge after it ends, not when it
    # leaves squeue: a try triggered by ours leaving is repeated once then (read when first needed).
    recheck: float | None = None
    min_job_age: int | None = None
    try:
        while True:
            ids = submitter.job_ids + queued
            try:
                live = queue_info(ids)
                failures = 0
            except UserError as err:  # the controller may be restarting: keep waiting
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    print(f"slurm: {err}; still waiting", file=sys.stderr)
                live = dict.fromkeys(ids, (name, "UNKNOWN", ""))
            if left and failures == 0:
                due = recheck is not None and time.monotonic() >= recheck
                if mark is not None and (len(live) < mark or due or time.monotonic() - last_try > TOPUP_EVERY_S):
                    before, left_queue = len(left), len(live) < mark
                    left = submitter.top_up(left)
                    idle = idle + 1 if len(left) == before and not live else 0
                    mark, last_try, recheck = None, time.monotonic(), None
                    if left and left_queue and submitter.kind == "full":
                        min_job_age = cluster_min_job_age(submitter.config) if min_job_age is None else min_job_age
                        recheck = time.monotonic() + min_job_age + 5  # the controller purges a little after MinJobAge
                    if idle >= TOPUP_TRIES_WITHOUT_ROOM:
                        print(
                            f"slurm: stopped waiting for room: {idle} tries {TOPUP_EVERY_S} s apart found none while none of the "
                            f"sweep's jobs was queued ({submitter.limit_words()}); {count_trials(left)} trials ({len(left)} tasks) "
                            "not submitted: run the same command again later to top up",
                            file=sys.stderr,
                        )
                        return left
                    continue
                if mark is None:
                    mark = len(live)
            said_stuck = _say_stuck(live, said_stuck, submitter.sweep)
            states = [observe(f) for f in folders]
            counts = (*sorted(s.state for s in states), str(len(live)), str(len(left)))
            if counts != shown:
                limit = "MaxJobCount" if submitter.kind == "full" else "submit limit"
                more = f", {count_trials(left)} trials waiting for room ({limit})" if left else ""
                progress.show(states, sum(s.state == "running" for s in states), f"{len(live)} jobs in the queue{more}")
                shown = counts
            if not live and not left:
                return left
            # Poll gently on big clusters: every 2 s for a minute, then every 10 s, then 30 s.
            waited = time.monotonic() - start
            time.sleep(poll_s if waited < 60 else 10 if waited < 600 else 30)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM, SIGHUP, SIGUSR1/2 (trainer.cli)
        cancel = f"python -m orchestrator.cancel {submitter.sweep}"
        print(f"\nslurm: the jobs keep running; follow with orchestrator.status, cancel with: {cancel}", file=sys.stderr)
        raise


def _say_stuck(live: dict[str, tuple[str, str, str]], said: frozenset[str], sweep: Path) -> frozenset[str]:
    """Say once per reason that queued jobs of the sweep cannot start as they are; returns the reasons said."""
    pending = [why for _, state, why in live.values() if state == "PENDING" and why not in said]
    for line in stuck_lines(pending, "queued job(s) of the sweep"):
        print(
            f"slurm: {line}; they wait until that changes: cancel with python -m orchestrator.cancel {sweep}, change the profile, "
            "launch again",
            file=sys.stderr,
        )
    return said | {why for why in pending if stuck(why)}


def print_failures(folders: list[Path]) -> None:
    for st in (observe(f) for f in folders):
        if st.state == "failed":
            print(f"  {st.trial_id} failed after {st.attempts} attempt(s): {st.error}", file=sys.stderr)
        elif st.state in ("interrupted", "pending"):
            why = st.status.last_interruption or "not run"
            print(f"  {st.trial_id} is {st.state}: {why}; run the sweep again to go on", file=sys.stderr)
