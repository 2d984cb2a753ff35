"""Cancel a sweep on whatever engine runs it: `python -m orchestrator.cancel results/<sweep>`.

    --wait-s S   how long to wait for running trials to checkpoint and stop (default 300)

One request for every engine: `<sweep>/cancel.json`. Every orchestrator.runner (the local
launcher's, each Ray trial's, each SLURM task's, on whichever node: the sweep folder is shared)
looks for it while its workers train; once it is there the runner starts no more workers and
sends the running ones SIGUSR1, as on a time limit: each saves a mid-epoch checkpoint at its next
optimizer step, records itself `interrupted` and exits. So a local launcher returns, a Ray
sweep's trials end (those not started yet end at once) and a SLURM task ends. SLURM jobs that
wait in the queue are `scancel`led by the ids the launcher recorded (slurm_job.json); running ones
are left to stop themselves as above, and `scancel`led (SIGTERM: a checkpoint at the last epoch)
only if they have not within `--wait-s`. Each trial's slurm_job.json is marked `cancelled`, so
the job's end is read as a cancel with or without accounting (queue.py): never an attempt.

Then each trial that is not done says so: `interrupted` ones keep their checkpoint note,
`last_interruption` names the cancel; trials that never started stay not started. One summary
line. The next `orchestrator.sweep` of the grid removes the request and resubmits what is not done.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from orchestrator.folders import check_writes, sweep_folder
from orchestrator.sweep_lock import launcher_running
from trainer.cli import EXIT_DONE, EXIT_UNFINISHED, ArgumentParser, cli
from trainer.errors import UserError
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import write_json
from trainer.status import StatusUnreadable, observe, read_status, write_status

CANCEL = "cancel.json"  # <sweep>/cancel.json: the request every runner looks for
MAX_WAIT_S = 7 * 24 * 3600.0


def cancel_requested(trial: Path) -> bool:
    """Has the sweep of this trial folder (<sweep>/trials/<id>) been cancelled? One stat call."""
    return (Path(trial).parent.parent / CANCEL).exists()


def clear_request(sweep: Path) -> None:
    """A new launch of the sweep: the old cancel request no longer applies."""
    (Path(sweep) / CANCEL).unlink(missing_ok=True)


def request_cancel(sweep: Path, by: str) -> dict[str, str]:
    """Write the sweep's cancel request: from then on no runner starts a worker, and each stops its
    running ones at their next step. Returns the request, to tell it from a later one."""
    request = {"requested": now(), "by": f"{by}{os.getpid()}@{socket.gethostname()}"}
    write_json(request, Path(sweep) / CANCEL)
    return request


def still_ours(sweep: Path, request: dict[str, str]) -> bool:
    """Is the sweep's cancel request still `request` (no launch withdrew it, no other cancel replaced it)?"""
    try:
        return bool(json.loads((Path(sweep) / CANCEL).read_bytes()) == request)
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.cancel", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="a sweep folder: <results>/<grid name>")
    p.add_argument("--wait-s", type=float, default=300, help="how long running trials get to checkpoint and stop")
    args = p.parse_args(argv)
    if not 0 <= args.wait_s <= MAX_WAIT_S:  # NaN too; every wait is bounded
        raise UserError(f"--wait-s {args.wait_s}: allowed: seconds from 0 to {MAX_WAIT_S:.0f} (a week)")
    sweep: Path = args.sweep.absolute()
    sweep_folder(args.sweep)
    check_writes(sweep, "cancel")  # the request file, and the trials' status notes
    folders = sorted(f for f in (sweep / "trials").iterdir() if f.is_dir())
    request = request_cancel(sweep, by="")  # from here on no runner starts a worker, no launcher submits
    pending_jobs, running_jobs_ = _cancel_slurm_queue(sweep, folders)
    ours = pending_jobs | running_jobs_  # the jobs queued when the cancel ran: only these are ever scancelled
    queued, running_jobs = len(pending_jobs), len(running_jobs_)
    if not queued + running_jobs and not launcher_running(sweep) and not _busy(folders):
        # Nothing runs it: no launcher alive, no trial running, no job queued. Its unfinished trials
        # wait for the next launch; calling them stopped by this cancel would rewrite their history.
        clear_request(sweep)
        waiting = sum(observe(f).state != "done" for f in folders)
        later = f" ({waiting} unfinished trial(s) wait for the next python -m orchestrator.sweep of its grid)" if waiting else ""
        print(f"{sweep.name}: nothing to cancel: no launcher, trial or SLURM job of the sweep is running or queued{later}")
        return EXIT_DONE
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline and still_ours(sweep, request) and (_busy(folders) or _still_queued(folders) & ours):
        time.sleep(1)
    if not still_ours(sweep, request):
        # A launch of the sweep began meanwhile and withdrew the request (orchestrator.sweep clears it):
        # its trials and jobs are the user's newer wish. Before, the cancel scancelled them at its
        # deadline, and the new jobs' trials failed with an attempt used.
        slurm = f"{queued} queued and {running_jobs} running SLURM job(s) had been cancelled; " if queued + running_jobs else ""
        print(f"{sweep.name}: {slurm}a new launch of the sweep began while the cancel waited: it runs now, and is left alone")
        return EXIT_UNFINISHED
    forced = _still_queued(folders) & ours
    if forced:  # jobs that did not stop on their own in time: SIGTERM (their trials checkpoint at the last epoch)
        _scancel(sorted(forced))
        wait = time.monotonic() + 60
        while time.monotonic() < wait and _still_queued(folders) & forced:
            time.sleep(1)
    stopped, not_started, still = _record(folders)
    if not queued + running_jobs + stopped + not_started + still:  # every trial done, or failed for good
        # Withdraw the request: it would otherwise stay behind in a sweep that had nothing left to stop.
        clear_request(sweep)
        print(f"{sweep.name}: nothing to cancel: no trial was running, queued or waiting to start")
        return EXIT_DONE
    slurm = f"{queued} queued and {running_jobs} running SLURM job(s) cancelled; " if queued + running_jobs else ""
    print(
        f"{sweep.name}: cancelled: {slurm}{stopped} trial(s) stopped at a checkpoint, {not_started} not started"
        + (f", {still} still stopping (see orchestrator.status)" if still else "")
        + "; no attempt used; run the sweep again to resume"
    )
    return EXIT_UNFINISHED if still else EXIT_DONE


def _busy(folders: list[Path]) -> bool:
    return any(observe(f).state == "running" for f in folders)


def _jobs(folders: list[Path]) -> dict[Path, tuple[str, str | None]]:
    """{trial: (its SLURM job, queue state or None)} of trials a SLURM launcher submitted; {} otherwise."""
    if not any((f / "slurm_job.json").exists() for f in folders):
        return {}
    from orchestrator.backends.slurm.queue import job_views  # only for SLURM sweeps

    try:
        return {f: (v.job_id, v.queue_state) for f, v in job_views(folders, timeout_s=60).items()}
    except UserError as err:
        print(f"slurm: {err}; SLURM jobs not cancelled", file=sys.stderr)
        return {}


def _still_queued(folders: list[Path]) -> set[str]:
    return {job for job, state in _jobs(folders).values() if state is not None}


def _cancel_slurm_queue(sweep: Path, folders: list[Path]) -> tuple[set[str], set[str]]:
    """Mark every queued trial's job cancelled and scancel those still pending; the (pending, running) jobs."""
    if not shutil.which("squeue"):  # no SLURM here: no launcher of the sweep can be submitting from here
        return _cancel_recorded(folders)
    from orchestrator.backends.slurm.submit_lock import submitting

    # After a launcher's submission round that is under way (its jobs then recorded), before any later one.
    with submitting(sweep, doing="cancel"):
        return _cancel_recorded(folders)


def _cancel_recorded(folders: list[Path]) -> tuple[set[str], set[str]]:
    from orchestrator.backends.slurm.queue import SUBMITTED, read_submission

    jobs = _jobs(folders)
    pending: set[str] = set()
    running: set[str] = set()
    for f, (job, state) in jobs.items():
        if state is None:
            continue
        rec = read_submission(f)
        if rec is not None and rec.get("job_id") == job and not rec.get("cancelled"):
            write_json({**rec, "cancelled": now()}, f / SUBMITTED)
        (running if state in ("RUNNING", "COMPLETING", "CONFIGURING") else pending).add(job)
    _scancel(sorted(pending))
    return pending, running


def _scancel(jobs: list[str]) -> None:
    if not jobs or shutil.which("scancel") is None:
        return
    from orchestrator.backends.slurm.sbatch_once import scancel

    error = scancel(jobs, timeout_s=120)
    if error:
        print(f"slurm: {error}", file=sys.stderr)


def _record(folders: list[Path]) -> tuple[int, int, int]:
    """Note the cancel in each open trial (no attempt): (stopped at a checkpoint, not started, still running)."""
    if any((f / "slurm_job.json").exists() for f in folders):
        from orchestrator.backends.slurm.queue import settle

        settle(folders)  # the jobs that just left: read as cancels (their slurm_job.json says so)
    stopped = not_started = still = 0
    for f in folders:
        try:
            with TrialLock(f):
                status = read_status(f)
                if status.state not in ("interrupted", "running"):  # pending, done, failed: left as they are
                    not_started += status.state == "pending" or (status.state == "failed" and not status.final)
                    continue
                note = f"{now()}: cancelled (orchestrator.cancel)"
                previous = status.last_interruption or ""
                if "cancelled" not in previous:
                    status.update(state="interrupted", last_interruption=f"{note}; {previous}" if previous else note)
                    write_status(f, status)
                stopped += 1
        except TrialBusy:
            still += 1
        except (StatusUnreadable, OSError) as err:
            print(f"{f.name}: not recorded as cancelled ({err})", file=sys.stderr)
    return stopped, not_started, still


if __name__ == "__main__":
    sys.exit(cli(main))
