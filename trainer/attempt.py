"""One attempt at a trial: its lock, its status.json, and the outcome recorded however it ends.

    with attempt(spec, folder) as a:
        if a.final is None:          # None: the trial needs training; else done / failed already
            ...train into folder...  # a.device, a.status (updated by the training as it goes)
    a.final                          # done | failed

Every way out is written to status.json before the exception moves on: a diverged trial
(NonFiniteLoss, swallowed here: it is an outcome, not an error) is failed for good; a user
mistake or a crash is failed and retryable; Ctrl-C or a launcher's signal leaves it
interrupted, with the signal named. A trial that trains in a group (trainer.group) holds one
attempt per member, so an exception out of the group records every member. Stop signals are held
while an attempt starts and while it records how it ended: a second signal (Ctrl-C reaches the
worker and its launcher, which then sends SIGTERM) waits until the record is written, so it
cannot leave a member `running` with no reason.
"""

from __future__ import annotations

import errno
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer import results as R
from trainer.checkpoint import CheckpointUnreadable, load_checkpoint
from trainer.cli import hold_signals, release_signals
from trainer.errors import Checkpointed, UserError
from trainer.lock import TrialLock
from trainer.loop import NonFiniteLoss
from trainer.provenance import device_name, now, provenance
from trainer.spec import TrialSpec
from trainer.status import OUT_OF_MEMORY, Status, StatusUnreadable, read_status, write_status
from trainer.threads import use_threads


class StopRequest:
    """Set from a signal handler (SIGUSR1: a time limit ahead): train to the next optimizer step,
    checkpoint there (trainer.epochs), and end the attempt as interrupted; the next one resumes there."""

    def __init__(self) -> None:
        self.requested = False

    def set(self, *_: object) -> None:
        self.requested = True


def stop_on_signal(signums: tuple[int, ...] = (signal.SIGUSR1, signal.SIGUSR2)) -> StopRequest:
    """A StopRequest that `signums` set (SIGUSR1: what a SLURM job sends its workers when its time limit
    nears; SIGUSR2, the other signal schedulers send ahead of a limit, the same)."""
    stop = StopRequest()
    for signum in signums:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored on purpose (trainer.cli): stays so
            signal.signal(signum, stop.set)
    return stop


def interrupted_by(err: BaseException) -> str:
    """What stopped the process, for status.json: the signal where one is known."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    code = err.code if isinstance(err, SystemExit) else None
    if isinstance(code, int) and code - 128 in signal.Signals._value2member_map_:
        return f"interrupted by {signal.Signals(code - 128).name}"
    return f"interrupted ({type(err).__name__})"


def pick_device(name: str) -> torch.device:
    """The torch device of a spec's `device` field on this machine; one line if it is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"field 'device' is '{name}' but no CUDA device is visible on this machine; allowed here: auto, cpu")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"field 'device' is '{name}' but this machine shows {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


class Attempt:
    """A trial being run by this process (lock held); `final` is its state once it has one."""

    def __init__(self, spec: TrialSpec, folder: Path, status: Status, final: str | None) -> None:
        self.spec, self.folder, self.status, self.final = spec, folder, status, final
        self.device = torch.device("cpu")

    def save_status(self) -> None:
        write_status(self.folder, self.status)

    def diverged(self, err: NonFiniteLoss) -> None:
        """The loss went non-finite: failed for good (a retry would diverge again)."""
        self.status.update(state="failed", error=str(err), error_kind="diverged", retryable=False, ended=now())
        self.save_status()
        self.final = "failed"

    def cannot_resume(self, err: CheckpointUnreadable) -> None:
        """Its checkpoint is damaged: failed, the user's to fix (error_kind user, so no launcher retries
        it on the same file); the other members of its group train on without it."""
        self.status.update(state="failed", error=str(err), error_kind="user", retryable=True, ended=now())
        self.save_status()
        self.final = "failed"

    def set_aside(self, message: str) -> None:
        """A damaged file of the trial was renamed aside (trainer.checkpoint): status.json names it."""
        self.status.update(set_aside=[*self.status.extra.get("set_aside", []), f"{now()}: {message}"])
        self.save_status()

    def _end(self, **fields: Any) -> None:
        mask = hold_signals()
        try:
            self.status.update(ended=now(), **fields)
            self.save_status()
        finally:
            release_signals(mask)


def _read_or_rebuild(folder: Path, spec: TrialSpec) -> Status:
    """The recorded status; a damaged one is rebuilt (its epoch comes back from the checkpoint)."""
    try:
        return read_status(folder)
    except StatusUnreadable as err:
        status = Status(trial_id=spec.trial_id, extra={"repaired": f"{now()}: {err}; rebuilt from the trial folder"})
        try:  # a finished trial is not trained again, so nothing else would say which epoch it holds
            ckpt = load_checkpoint(folder, torch.device("cpu"))
            status.epoch = int(ckpt["epoch"]) if ckpt is not None else None
        except (CheckpointUnreadable, KeyError, TypeError, ValueError):
            pass  # the training finds the damage and says so
        return status


OOM_HINT = (
    "out of device memory: a fused group goes again with each trial alone; "
    "a trial that runs out alone needs a smaller batch_size (another trial) or a GPU with more memory (the profile), "
    "then python -m orchestrator.sweep --retry-failed"
)


def out_of_memory(err: BaseException) -> str:
    """The error of an attempt out of device memory: torch's first sentences (what it tried to allocate,
    the device's total and free memory; not its allocator advice) and what the launchers do about it."""
    said = str(err).strip().splitlines()[0] if str(err).strip() else ""
    said = said.split(" Including non-PyTorch memory")[0].split(" Of the allocated memory")[0][:300]
    return f"{type(err).__name__}: {said} ({OOM_HINT})"


@contextmanager
def attempt(spec: TrialSpec, folder: Path) -> Iterator[Attempt]:
    """Lock `folder`, check it holds `spec`'s trial, record a new attempt; record how it ended.

    Raises TrialBusy (before anything is written) if another live process holds the trial.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with TrialLock(folder):
        status = _read_or_rebuild(folder, spec)
        if status.trial_id not in (None, spec.trial_id):  # e.g. spec.json edited after the run
            raise UserError(f"{folder}: holds trial {status.trial_id}, not {spec.trial_id}; one folder per trial")
        if status.final:
            yield Attempt(spec, folder, status, final=status.state)
            return
        R.remove_temp_files(folder)
        spec_path = folder / R.SPEC
        if not spec_path.exists():
            R.write_json(spec.to_dict(), spec_path)
        elif (other := TrialSpec.from_dict(R.read_json(spec_path), str(spec_path)).trial_id) != spec.trial_id:
            raise UserError(f"{spec_path}: belongs to trial {other}, not {spec.trial_id}; one folder per trial")
        a = Attempt(spec, folder, status, final=None)
        a.device = pick_device(spec.device)
        # From `running` on disk to the handlers below, a stop signal waits: it is delivered inside the try.
        mask = hold_signals()
        try:
            status.update(
                state="running", attempts=status.attempts + 1, trial_id=spec.trial_id, error=None, error_kind=None,
                started=now(), ended=None, device=device_name(a.device), **provenance(), **use_threads(spec.threads, a.device),
            )  # fmt: skip
            a.save_status()
        except BaseException:
            release_signals(mask)
            raise
        try:
            release_signals(mask)
            yield a
        except NonFiniteLoss as err:
            a.diverged(err)
        except Checkpointed as stop:
            a._end(state="interrupted", error=None, error_kind=None, last_interruption=f"{now()}: {stop}")
            raise
        except UserError as err:
            a._end(state="failed", error=str(err), error_kind="user", retryable=True)
            raise
        except (KeyboardInterrupt, SystemExit) as err:  # stopped from outside (Ctrl-C, a launcher's signal)
            why = interrupted_by(err)
            a._end(state="interrupted", error=why, error_kind=None, last_interruption=f"{now()}: {why}")
            raise
        except torch.OutOfMemoryError as err:  # the device's memory, not the trial's science: retried smaller
            a._end(state="failed", error=out_of_memory(err), error_kind=OUT_OF_MEMORY, retryable=True)
            raise
        except OSError as err:
            summary = "".join(traceback.format_exception_only(type(err), err)).strip()
            if err.errno == errno.ENOSPC:  # the user's to mend: another attempt on the same disk fails the same way
                summary += f" (the disk holding {folder} is full: free space there, then run the sweep again)"
            a._end(state="failed", error=summary, error_kind="user" if err.errno == errno.ENOSPC else "exception", retryable=True)
            raise
        except BaseException as err:
            summary = "".join(traceback.format_exception_only(type(err), err)).strip()
            a._end(state="failed", error=summary, error_kind="exception", retryable=True)
            raise
        else:
            if a.final is None:
                a._end(state="done", error=None, error_kind=None)
                a.final = "done"
