"""What a SLURM array task runs on its node: `TrialJob(...)(groups of trial folders)`.

A task gets a list of groups (one per GPU it holds; one on a CPU-only task) and runs them side by
side with orchestrator.runner: one `python -m trainer.group` worker per group, each on its own
slot (its share of the task's CPUs and its own GPU, CUDA_VISIBLE_DEVICES, from the GPUs SLURM
gave the task). A worker that dies (the OOM killer, a signal) is recorded in its trials' folders
with the reason and the logs, and retried from its checkpoint while it makes progress. Resume
state lives only in the trial folders, never in submitit's pickles, so a requeued, duplicate or
stale job sees the newest state: a trial that is done is not run again, and a trial another live
process holds (its flock) is left to that process.

- start: the task writes `<job log folder>/<job id>_started.json` before it touches a trial, so
  the launcher and orchestrator.status can tell a job that never got here (a failing setup line,
  a wrong `python`, a node without the project) from one that ran: queue.py records the former
  as a failed attempt of its trials, with the last line of the job's stderr.
- time limit: SLURM sends USR2 `signal_delay_s` before the limit; submitit calls
  `TrialJob.checkpoint`, which sends SIGUSR1 to the workers (each saves a mid-epoch checkpoint at
  its next optimizer step, records itself interrupted and exits 76), waits for them (bounded;
  SIGTERM after that, which checkpoints at the last epoch), and requeues the job; the next start
  resumes at that step.
- preemption, `scontrol requeue`, node failure: SLURM sends SIGTERM (or the node is gone) and
  requeues the job. The task stops its workers, notes the interruption in every trial, and exits
  at once instead of running on until SIGKILL (KillWait).
- requeues are counted per job in `<trial>/requeues.json`: `requeues` (all of them),
  `progress_requeues` (time limits after which the trial had trained further: a long trial
  needs them, so they are not capped) and `counted_requeues` (the rest: preemptions, node
  failures, time limits without progress). Past `max_requeues` counted ones the trial ends
  failed with "requeued N times (time limit / preemption)" in its status.json.

Payloads: a list of groups (list of lists of folder strings); jobs queued by older versions
carry one group (a list of strings) or one trial (a string), and still run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import submitit

from orchestrator.runner import Runner, Slot, make_slots
from trainer.cli import EXIT_SIGTERM
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import read_json, write_json
from trainer.status import Status, read_status, write_status

REQUEUES = "requeues.json"  # written only by the jobs
STARTED = "{job_id}_started.json"  # in the job's log folder: the task's own code began
STOP_WAIT_S = 60  # at most this long a stopping task waits for its workers to record themselves
# submitit refuses to requeue after its own count of time limits; the task counts them itself
# (progress_requeues are unbounded, the rest capped by max_requeues), so submitit's is set out of reach.
SUBMITIT_MAX_TIMEOUTS = 1_000_000
LAST_STOP_PROGRESS = "time limit, after progress"
LAST_STOP_NO_PROGRESS = "time limit, no progress"


class TrialFailed(RuntimeError):
    """A trial ended failed (its status.json says why); raised so SLURM marks the job FAILED."""


class _Stopped(BaseException):
    """Raised by the SIGTERM handler; BaseException so that nothing on the way swallows it."""


def _slurm_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "unknown")


def task_gpus() -> list[str]:
    """The GPUs SLURM gave this task, as CUDA_VISIBLE_DEVICES names them (one worker each)."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = os.environ.get(var, "").strip()
        if value and value != "NoDevFiles":
            return [g for g in value.split(",") if g]
    return []


def _task_cpus(gpus: int) -> int | None:
    """The CPUs SLURM gave the task (its workers share them, not every core of the node)."""
    per_task, per_gpu = os.environ.get("SLURM_CPUS_PER_TASK", ""), os.environ.get("SLURM_CPUS_PER_GPU", "")
    if per_task.isdigit():
        return int(per_task)
    if per_gpu.isdigit() and gpus:
        return int(per_gpu) * gpus
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def task_slots(n_groups: int) -> list[Slot]:
    """A slot per group, up to one per GPU of the task; a CPU-only task runs its groups one at a time."""
    gpus = task_gpus()
    n = max(1, min(len(gpus), n_groups)) if gpus else 1
    return make_slots(n, cpus=_task_cpus(len(gpus)), gpus=gpus[:n] if gpus else None)


def position(status: Status) -> tuple[int, int]:
    """How far a trial has trained: (epochs done, optimizer steps into the next epoch).

    The step comes from the trainer's note of a mid-epoch stop ("checkpointed in epoch E at step
    S", E counted from 1), which is kept in last_interruption until the trial trains again.
    """
    epoch = status.epoch if status.epoch is not None else -1
    match = re.search(r"checkpointed in epoch (\d+) at step (\d+)", status.last_interruption or "")
    step = int(match.group(2)) if match and int(match.group(1)) == epoch + 1 else 0
    return epoch, step


class TrialJob(submitit.helpers.Checkpointable):
    """An array task's callable; requeued by submitit via `checkpoint`."""

    def __init__(self, max_requeues: int, max_attempts: int, fused: bool = True) -> None:
        self.max_requeues = max_requeues
        self.max_attempts = max_attempts
        self.fused = fused
        self._reset()

    def _reset(self) -> None:
        self._why: str | None = None  # why this run is stopping: requeued | cap | finished | sigterm
        self._message = ""
        self._job_id = _slurm_job_id()
        self._runner: Runner | None = None
        self._start_positions: dict[Path, tuple[int, int]] = {}
        self._log = _job_log()

    def __getstate__(self) -> dict[str, Any]:  # pickled in a signal handler: keep only the settings
        return {"max_requeues": self.max_requeues, "max_attempts": self.max_attempts, "fused": self.fused}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self, payload: list[list[str]] | list[str] | str) -> str:
        groups = _groups(payload)
        trials = [t for g in groups for t in g]
        self._reset()
        _mark_started(self._job_id)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)  # replaces submitit's "bypass"
        stack = contextlib.ExitStack()
        try:
            todo = [g for g in ([t for t in group if self._count_start(t) is None] for group in groups) if g]
            if todo:
                hint = f"job {self._job_id}" + (f", job log {self._log}" if self._log else "")
                python = stack.enter_context(_usr2_ignoring_python())
                self._runner = Runner(task_slots(len(todo)), self.max_attempts, self.fused, python=python, log_hint=hint)
                report = self._runner.run(todo)
                for line in report.user_errors:
                    print(f"error: {line}", flush=True)
                for folder, why in report.given_up.items():
                    print(f"{folder.name}: gave up: {why}", flush=True)
        except BaseException:
            if self._why is None:
                raise
            return self._stop(trials)
        finally:
            signal.signal(signal.SIGTERM, previous)
            stack.close()
        if self._why is not None:  # stopped while the runner was between workers
            return self._stop(trials)
        failed = _failures(trials)
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
                progress = int(previous.get("progress_requeues", 0)) if same_job else 0
                if same_job and previous.get("last_stop") == LAST_STOP_PROGRESS:
                    progress += 1
                # SLURM's restart count also covers runs that died before reaching this point.
                restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
                requeues = max(int(previous.get("requeues", 0)) + 1 if same_job else 0, restarts)
                counted = requeues - progress
                where = position(status)
                self._start_positions[trial] = where
                record = {
                    "job_id": self._job_id, "requeues": requeues, "progress_requeues": progress, "counted_requeues": counted,
                    "max_requeues": self.max_requeues, "started": now(), "position": list(where),
                }  # fmt: skip
                write_json(record, trial / REQUEUES)
                at = "starting" if status.epoch is None else f"resuming after epoch {status.epoch}"
                print(
                    f"{trial.name}: job {self._job_id} on {os.uname().nodename}, requeues so far {counted} (max {self.max_requeues}), {at}"
                    + (f" step {where[1]}" if where[1] else "")
                    + (f"; and {progress} time-limit requeue(s) after progress (not capped)" if progress else ""),
                    flush=True,
                )
                if counted > self.max_requeues:
                    self._fail(trial, _cap_message(counted, progress, self.max_requeues))
                    return "failed"
        except TrialBusy as err:
            print(f"{trial.name}: {err}; leaving it to that process", flush=True)
            return "busy"
        return None

    def checkpoint(self, payload: list[list[str]] | list[str] | str) -> Any:
        """Called by submitit on USR2 (time limit ahead), while the workers train.

        Stops the workers at their next optimizer step (mid-epoch checkpoints), counts this
        requeue per trial as after progress or not, and returns the resubmission (the job is
        requeued and its groups resume from the trial folders), or None so that submitit does
        not requeue: every member is over, or every open one is out of counted requeues.
        """
        trials = [t for g in _groups(payload) for t in g]
        if all(read_status(t).final for t in trials):
            self._why = "finished"
            return None
        print(f"{', '.join(t.name for t in trials)}: time limit ahead; stopping the workers at their next step", flush=True)
        self._stop_workers(signal.SIGUSR1)
        open_ = [t for t in trials if not read_status(t).final]
        if not open_:
            self._why = "finished"
            return None
        capped, notes = [], []
        for t in open_:
            rec = _read_requeues(t)
            if rec.get("job_id") != self._job_id:
                continue  # this run never counted it (another process held it): not ours to count
            now_at = position(read_status(t))
            recorded = rec.get("position") or (-1, 0)
            progressed = now_at > self._start_positions.get(t, (int(recorded[0]), int(recorded[1])))
            rec.update(last_stop=LAST_STOP_PROGRESS if progressed else LAST_STOP_NO_PROGRESS, position=list(now_at))
            write_json(rec, t / REQUEUES)
            notes.append(f"{t.name}: {'trained to' if progressed else 'no progress, still at'} epoch {now_at[0]} step {now_at[1]}")
            if not progressed and int(rec.get("counted_requeues", 0)) >= self.max_requeues:
                capped.append(t)
        print("; ".join(notes), flush=True)
        if open_ and len(capped) == len(open_):
            counted = max(int(_read_requeues(t).get("counted_requeues", 0)) for t in capped)
            self._why = "cap"
            # "again" only when an earlier stop was counted: a first stop without progress says so plainly.
            before = f"requeued {counted} times (time limit / preemption) and hit the time limit again" if counted else "hit the time limit"
            self._message = f"{before} without progress; max_requeues is {self.max_requeues}"
            return None
        self._why, self._message = "requeued", "time limit: requeued"
        print(f"{', '.join(t.name for t in open_)}: time limit ahead; requeueing job {self._job_id}", flush=True)
        return submitit.helpers.DelayedSubmission(self, payload)

    def _stop_workers(self, sig: int) -> None:
        """Stop the workers with `sig` and wait for them (bounded); SIGTERM, then SIGKILL, the slow ones.

        SIGUSR1 makes a worker checkpoint at its next optimizer step; SIGTERM at the end of the
        last epoch. Half the wait for each, so the requeue still comes before SLURM's own kill.
        """
        if self._runner is None:
            return
        self._runner.stop(sig)
        deadline = time.monotonic() + STOP_WAIT_S / 2
        while any(p.poll() is None for p in self._runner.pool.running) and time.monotonic() < deadline:
            time.sleep(0.2)
        if sig != signal.SIGTERM and any(p.poll() is None for p in self._runner.pool.running):
            print("workers did not stop at a step in time; stopping them with SIGTERM", flush=True)
            self._runner.pool.signal(signal.SIGTERM)
        self._runner.pool.wait_all(timeout=STOP_WAIT_S / 2)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._why is not None:  # already stopping (our own requeue is followed by SIGTERM)
            return
        self._why, self._message = "sigterm", "SIGTERM (preempted, requeued or cancelled)"
        if self._runner is not None:
            self._runner.stop(signal.SIGTERM)
        raise _Stopped(self._message)

    def _stop(self, trials: list[Path]) -> str:
        """After a requeue, SIGTERM or refused requeue: leave every member's status.json true, then exit."""
        if self._why == "finished":  # every member ended before the time limit: report them as a normal end would
            failed = _failures(trials)
            if failed:
                raise TrialFailed(failed)
            return "done"
        for trial in trials:
            try:
                with TrialLock(trial):
                    status = read_status(trial)
                    if self._why == "cap":
                        self._fail(trial, self._message)
                    elif status.state in ("running", "interrupted") and not status.final:
                        # Keep the trainer's "checkpointed in epoch E at step S": the next start measures progress from it.
                        stopped = re.search(r"checkpointed in epoch \d+ at step \d+( of \d+)?", status.last_interruption or "")
                        detail = f"{stopped.group(0)}; " if stopped and self._why == "requeued" else ""
                        note = f"{self._message} ({detail}job {self._job_id}, {now()})"
                        status.update(state="interrupted", error=None, error_kind=None, ended=now(), last_interruption=note)
                        write_status(trial, status)
            except TrialBusy:
                pass
            print(f"{trial.name}: stopped: {self._message}", flush=True)
        if self._why == "cap":
            raise TrialFailed(f"{', '.join(t.name for t in trials)}: {self._message}") from None
        # No result pickle: SLURM runs the job again (requeue) or it was cancelled.
        raise SystemExit(EXIT_SIGTERM if self._why == "sigterm" else 1)

    @staticmethod
    def _fail(trial: Path, message: str) -> None:
        status = read_status(trial)
        if status.final:
            return
        status.update(state="failed", error=message, error_kind="requeues", retryable=True, ended=now())
        write_status(trial, status)


def _cap_message(counted: int, progress: int, max_requeues: int) -> str:
    more = f", besides {progress} time-limit requeue(s) after progress" if progress else ""
    return f"requeued {counted} times (time limit / preemption){more}; max_requeues is {max_requeues}"


@contextlib.contextmanager
def _usr2_ignoring_python() -> Iterator[str]:
    """An interpreter for the workers that starts with SIGUSR2 ignored: a shell that execs this one.

    SLURM sends its time-limit warning (USR2) to every process of the job step, workers included,
    and USR2 would kill them; it is the task's to handle (it passes it on as SIGUSR1: checkpoint
    at the next step). A signal ignored before exec stays ignored, so the shell's `trap` does it
    without running Python code between fork and exec in this threaded process.
    """
    folder = tempfile.mkdtemp(prefix="sweep-worker-")
    shim = Path(folder) / "python"
    shim.write_text(f"#!/bin/sh\ntrap '' USR2\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    shim.chmod(0o755)
    try:
        yield str(shim)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _groups(payload: list[list[str]] | list[str] | str) -> list[list[Path]]:
    """The task's groups of trial folders (a string: one trial; a list of strings: one group)."""
    if isinstance(payload, str):
        return [[Path(payload)]]
    if all(isinstance(x, str) for x in payload):
        return [[Path(x) for x in payload]]  # type: ignore[arg-type]
    return [[Path(f) for f in group] for group in payload if group]


def _job_log() -> str:
    """This task's stderr file (submitit's <jobid>_<task>_log.err), '' outside a SLURM job."""
    try:
        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # noqa: BLE001 - outside a job (tests) there is no environment to ask
        return ""


def _mark_started(job_id: str) -> None:
    """Leave `<job log folder>/<job id>_started.json`: this job got past its setup and python."""
    try:
        folder = submitit.JobEnvironment().paths.folder
    except Exception:  # noqa: BLE001 - outside a job (tests): nothing to mark
        return
    try:
        write_json({"job_id": job_id, "host": os.uname().nodename, "started": now()}, Path(folder) / STARTED.format(job_id=job_id))
    except OSError as err:  # a log folder we cannot write: the trials still run
        print(f"cannot write the start mark in {folder}: {err}", flush=True)


def _failures(trials: list[Path]) -> str:
    """'trial X failed: why; ...' for the members that ended failed; '' if none did."""
    return "; ".join(f"trial {t.name} failed: {st.error}" for t in trials if (st := read_status(t)).state == "failed")


def _read_requeues(trial: Path) -> dict[str, Any]:
    try:
        return read_json(trial / REQUEUES)
    except (OSError, ValueError):
        return {}
