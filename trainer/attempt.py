"""One attempt at a trial: its lock, its status.json, and the outcome recorded however it ends.

    with attempt(spec, folder) as a:
        if a.final is None:          # None: the trial needs training; else done / failed already
            ...train into folder...  # a.device, a.status (updated by the training as it goes)
    a.final                          # done | failed

Every way out is written to status.json before the exception moves on: a diverged trial
(NonFiniteLoss, swallowed here: it is an outcome, not an error) is failed for good; a user
mistake or a crash is failed and retryable; Ctrl-C or a launcher's signal leaves it
interrupted. A trial that trains in a group (trainer.group) holds one attempt per member, so an
exception out of the group records every member.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from trainer import results as R
from trainer.errors import UserError
from trainer.lock import TrialLock
from trainer.loop import NonFiniteLoss
from trainer.provenance import device_name, now, provenance
from trainer.spec import TrialSpec


FUSED = "fused"  # status.json: how many trials the last attempt trained with as one network (False: alone)


def read_status(folder: Path) -> dict[str, Any]:
    path = folder / R.STATUS
    return R.read_json(path) if path.exists() else {"state": "pending", "attempts": 0}


def write_status(folder: Path, status: dict[str, Any]) -> None:
    R.write_json(status, folder / R.STATUS)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"field 'device' is '{name}' but no CUDA device is visible on this machine; allowed here: auto, cpu")
    return torch.device(name)


def is_final(status: dict[str, Any]) -> bool:
    """Done, or failed in a way that running again cannot mend (diverged)."""
    return status["state"] == "done" or (status["state"] == "failed" and not status.get("retryable", True))


class Attempt:
    """A trial being run by this process (lock held); `final` is its state once it has one."""

    def __init__(self, spec: TrialSpec, folder: Path, status: dict[str, Any], final: str | None) -> None:
        self.spec, self.folder, self.status, self.final = spec, folder, status, final
        self.device = torch.device("cpu")

    def save_status(self) -> None:
        write_status(self.folder, self.status)

    def diverged(self, err: NonFiniteLoss) -> None:
        """The loss went non-finite: failed for good (a retry would diverge again)."""
        self.status.update(state="failed", error=str(err), error_kind="diverged", retryable=False, ended=now())
        self.save_status()
        self.final = "failed"

    def _end(self, **fields: Any) -> None:
        self.status.update(ended=now(), **fields)
        self.save_status()


@contextmanager
def attempt(spec: TrialSpec, folder: Path) -> Iterator[Attempt]:
    """Lock `folder`, check it holds `spec`'s trial, record a new attempt; record how it ended.

    Raises TrialBusy (before anything is written) if another live process holds the trial.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with TrialLock(folder):
        status = read_status(folder)
        if status.get("trial_id") not in (None, spec.trial_id):  # e.g. spec.json edited after the run
            raise UserError(f"{folder}: holds trial {status['trial_id']}, not {spec.trial_id}; one folder per trial")
        if is_final(status):
            yield Attempt(spec, folder, status, final=status["state"])
            return
        R.remove_temp_files(folder)
        spec_path = folder / R.SPEC
        if not spec_path.exists():
            R.write_json(spec.to_dict(), spec_path)
        elif (other := TrialSpec.from_dict(R.read_json(spec_path), str(spec_path)).trial_id) != spec.trial_id:
            raise UserError(f"{spec_path}: belongs to trial {other}, not {spec.trial_id}; one folder per trial")
        a = Attempt(spec, folder, status, final=None)
        a.device = pick_device(spec.device)
        status.update(
            state="running", attempts=int(status.get("attempts", 0)) + 1, trial_id=spec.trial_id, error=None,
            started=now(), ended=None, device=device_name(a.device), **provenance(),
        )  # fmt: skip
        a.save_status()
        try:
            yield a
        except NonFiniteLoss as err:
            a.diverged(err)
        except UserError as err:
            a._end(state="failed", error=str(err), error_kind="user", retryable=True)
            raise
        except (KeyboardInterrupt, SystemExit) as err:  # stopped from outside (Ctrl-C, a launcher's signal)
            a._end(state="interrupted", error=f"interrupted ({type(err).__name__})", error_kind=None)
            raise
        except BaseException as err:  # noqa: BLE001 - recorded, then re-raised
            summary = "".join(traceback.format_exception_only(type(err), err)).strip()
            a._end(state="failed", error=summary, error_kind="exception", retryable=True)
            raise
        else:
            if a.final is None:
                a._end(state="done", error=None, error_kind=None)
                a.final = "done"
