"""What a SLURM array task runs on its node: `TrialJob(...)(group of trial folders)`.

The task runs its group with orchestrator.runner (a `python -m trainer.group` worker process with
the task's CPUs), so a worker that dies (the OOM killer, a signal) is recorded in its trials'
folders with the reason and the log, and retried from its checkpoint while it makes progress.
Resume state lives only in the trial folders, never in submitit's pickles, so a requeued,
duplicate or stale job sees the newest state: a trial that is done is not run again, and a
trial another live process holds (its flock) is left to that process.

- time limit: SLURM sends USR2 `signal_delay_s` before the limit; submitit calls
  `TrialJob.checkpoint`, which stops the workers (they record themselves interrupted) and
  requeues the job; the next start resumes from the checkpoints.
- preemption, `scontrol requeue`, node failure: SLURM sends SIGTERM (or the node is gone) and
  requeues the job. The task stops its workers, notes the interruption in every trial, and exits
  at once instead of running on until SIGKILL (KillWait).
- requeues are counted per job in `<trial>/requeues.json`; past `max_requeues` the trial ends
  failed with "requeued N times (time limit / preemption)" in its status.json.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import submitit

from orchestrator.runner import Runner, make_slots
from trainer.cli import EXIT_SIGTERM
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import read_json, write_json
from trainer.status import read_status, write_status

REQUEUES = "requeues.json"  # written only by the jobs
STOP_WAIT_S = 60  # how long a stopping task waits for its workers to record themselves


class TrialFailed(RuntimeError):
    """A trial ended failed (its status.json says why); raised so SLURM marks the job FAILED."""


class _Stopped(BaseException):
    """Raised by the SIGTERM handler; BaseException so that nothing on the way swallows it."""


def _slurm_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "unknown")


def _task_cpus() -> int | None:
    """The CPUs SLURM gave the task (its workers use them, not every core of the node)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(cpus) if cpus.isdigit() else None


class TrialJob(submitit.helpers.Checkpointable):
    """An array task's callable; requeued by submitit via `checkpoint`."""

    def __init__(self, max_requeues: int, max_attempts: int, fuse: bool = True) -> None:
        self.max_requeues = max_requeues
        self.max_attempts = max_attempts
        self.fuse = fuse
        self._reset()

    def _reset(self) -> None:
        self._why: str | None = None  # why this run is stopping: requeued | cap | finished | sigterm
        self._message = ""
        self._job_id = _slurm_job_id()
        self._runner: Runner | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled in a signal handler: keep only the settings
        return {"max_requeues": self.max_requeues, "max_attempts": self.max_attempts, "fuse": self.fuse}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self, folders: list[str] | str) -> str:
        group = _group(folders)
        self._reset()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)  # replaces submitit's "bypass"
        try:
            todo = [t for t in group if self._count_start(t) is None]
            if todo:
                self._runner = Runner(make_slots(1, cpus=_task_cpus()), self.max_attempts, self.fuse, log_hint=f"job {self._job_id}")
                report = self._runner.run([todo])
                for line in report.user_errors:
                    print(f"error: {line}", flush=True)
                for folder, why in report.given_up.items():
                    print(f"{folder.name}: gave up: {why}", flush=True)
        except BaseException:
            if self._why is None:
                raise
            return self._stop(group)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self._why is not None:  # stopped while the runner was between workers
            return self._stop(group)
        failed = _failures(group)
        if failed:
            raise TrialFailed(failed)
        return "done"

    def _count_start(self, trial: Path) -> str | None:
        """Record this start in the trial's requeues.json; a final state if the trial must not run."""
        try:
            with TrialLock(trial):
                status = read_status(trial)
                if status.final:
                    print(f"{trial.name}: already {status.state}; nothing to do", flush=True)
                    return status.state
                previous = _read_requeues(trial)
                same_job = previous.get("job_id") == self._job_id
                requeues = max(int(previous.get("requeues", 0)) + 1 if same_job else 0, int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0))
                record = {"job_id": self._job_id, "requeues": requeues, "max_requeues": self.max_requeues, "started": now()}
                write_json(record, trial / REQUEUES)
                print(
                    f"{trial.name}: job {self._job_id} on {os.uname().nodename}, requeues so far {requeues} (max {self.max_requeues}), "
                    + ("starting" if status.epoch is None else f"resuming after epoch {status.epoch}"),
                    flush=True,
                )
                if requeues > self.max_requeues:
                    self._fail(trial, f"requeued {requeues} times (time limit / preemption); max_requeues is {self.max_requeues}")
                    return "failed"
        except TrialBusy as err:
            print(f"{trial.name}: {err}; leaving it to that process", flush=True)
            return "busy"
        return None

    def checkpoint(self, folders: list[str] | str) -> Any:
        """Called by submitit on USR2 (time limit ahead), while the workers train.

        Stops the workers (each records its trials as interrupted) and returns the resubmission
        (the job is requeued and its group resumes from the trial folders), or None so that
        submitit does not requeue: every member is over, or the requeues are used up.
        """
        group = _group(folders)
        open_ = [t for t in group if not read_status(t).final]
        if not open_:
            self._why = "finished"
            return None
        requeues = max(int(r.get("requeues", 0)) if (r := _read_requeues(t)).get("job_id") == self._job_id else 0 for t in open_)
        if requeues >= self.max_requeues:
            self._why = "cap"
            self._message = (
                f"requeued {requeues} times (time limit / preemption) and hit the time limit again; max_requeues is {self.max_requeues}"
            )
            self._stop_workers()
            return None
        self._why, self._message = "requeued", "time limit: requeued"
        print(f"{', '.join(t.name for t in open_)}: time limit ahead; requeueing job {self._job_id}", flush=True)
        self._stop_workers()
        return submitit.helpers.DelayedSubmission(self, folders)

    def _stop_workers(self) -> None:
        """Let the workers record themselves interrupted before submitit requeues (and SLURM kills) the job."""
        if self._runner is not None:
            self._runner.stop(signal.SIGTERM)
            self._runner.pool.wait_all(timeout=STOP_WAIT_S)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._why is not None:  # already stopping (our own requeue is followed by SIGTERM)
            return
        self._why, self._message = "sigterm", "SIGTERM (preempted, requeued or cancelled)"
        if self._runner is not None:
            self._runner.stop(signal.SIGTERM)
        raise _Stopped(self._message)

    def _stop(self, group: list[Path]) -> str:
        """After a requeue, SIGTERM or refused requeue: leave every member's status.json true, then exit."""
        if self._why == "finished":  # every member ended before the time limit: report them as a normal end would
            failed = _failures(group)
            if failed:
                raise TrialFailed(failed)
            return "done"
        for trial in group:
            try:
                with TrialLock(trial):
                    status = read_status(trial)
                    if self._why == "cap":
                        self._fail(trial, self._message)
                    elif status.state in ("running", "interrupted") and not status.final:
                        note = f"{self._message} (job {self._job_id}, {now()})"
                        status.update(state="interrupted", error=None, error_kind=None, ended=now(), last_interruption=note)
                        write_status(trial, status)
            except TrialBusy:
                pass
            print(f"{trial.name}: stopped: {self._message}", flush=True)
        if self._why == "cap":
            raise TrialFailed(f"{', '.join(t.name for t in group)}: {self._message}") from None
        # No result pickle: SLURM runs the job again (requeue) or it was cancelled.
        raise SystemExit(EXIT_SIGTERM if self._why == "sigterm" else 1)

    @staticmethod
    def _fail(trial: Path, message: str) -> None:
        status = read_status(trial)
        if status.final:
            return
        status.update(state="failed", error=message, error_kind="requeues", retryable=True, ended=now())
        write_status(trial, status)


def _group(folders: list[str] | str) -> list[Path]:
    """The task's trial folders (a plain string: one trial, as jobs submitted before groups)."""
    return [Path(folders)] if isinstance(folders, str) else [Path(f) for f in folders]


def _failures(group: list[Path]) -> str:
    """'trial X failed: why; ...' for the members that ended failed; '' if none did."""
    return "; ".join(f"trial {t.name} failed: {st.error}" for t in group if (st := read_status(t)).state == "failed")


def _read_requeues(trial: Path) -> dict[str, Any]:
    try:
        return read_json(trial / REQUEUES)
    except (OSError, ValueError):
        return {}
