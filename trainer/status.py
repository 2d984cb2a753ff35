"""A trial's status: the one typed record of `<trial>/status.json`, and the one reader of it.

    status = read_status(folder)        # Status: what the last attempt recorded (pending if none)
    view = observe(folder)              # TrialState: that, seen together with the trial's lock

status.json is written only while holding the trial's lock (trainer.attempt, and launchers that
record a failure they saw from outside), always atomically. Its state is one of

    pending      never started
    running      an attempt is training it (or was, when its process died: see observe)
    interrupted  stopped from outside (Ctrl-C, SIGTERM, preemption, a killed process); resumes
    done         finished
    failed       failed; `retryable` says whether running it again can help (a diverged trial
                 cannot), and launchers stop retrying it after `max_attempts`

`observe` adds what the lock proves: a `running` status whose lock nobody holds is `interrupted`
(its process died; the kernel released the flock), and a trial that is not done but whose lock is
held is `running` (a new attempt starting). A status.json that cannot be read or is not a status
is `unreadable`, never guessed at: the next attempt rebuilds it from what the folder proves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.files import STATUS, read_bytes, write_json  # not trainer.results: it imports pyarrow (~0.3 s of every `status`)
from trainer.lock import is_locked

State = Literal["pending", "running", "interrupted", "done", "failed"]
STATES: tuple[State, ...] = ("pending", "running", "interrupted", "done", "failed")
# What a launcher or `orchestrator.status` may see: the recorded states, and a status.json that
# cannot be read.
SEEN_STATES = ("done", "running", "interrupted", "pending", "failed", "unreadable")


class StatusUnreadable(ValueError):
    """status.json exists but is not a readable status record (the message says why)."""


OUT_OF_MEMORY = "out_of_memory"  # the error_kind of an attempt that ran out of device memory (torch.OutOfMemoryError)


@dataclass
class Status:
    """The contents of status.json. Keys written by newer code are kept in `extra`, untouched."""

    state: State = "pending"
    attempts: int = 0  # attempts started (each training start counts one; so does a launcher-seen failure)
    trial_id: str | None = None
    epoch: int | None = None  # last finished epoch (0 = only the initial evaluation)
    error: str | None = None
    error_kind: str | None = None  # diverged, user, exception, out_of_memory, requeues, setup, job (killed: `interrupted`)
    retryable: bool = True
    started: str | None = None
    ended: str | None = None
    host: str | None = None
    platform: str | None = None
    device: str | None = None
    versions: dict[str, Any] | None = None
    git_sha: str | None = None
    git_dirty: bool | None = None
    fused: int | bool | None = None  # trials trained together as one network in the last attempt (False: alone)
    last_interruption: str | None = None
    log: str | None = None  # the log file of the process or job that ran the last attempt
    skipped_images: dict[str, Any] | None = None  # images that could not be read (skipped): count, first names
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Done, or failed in a way that running again cannot mend (diverged)."""
        return self.state == "done" or (self.state == "failed" and not self.retryable)

    def update(self, **fields: Any) -> None:
        for key, value in fields.items():
            if key in _FIELDS:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    def to_dict(self) -> dict[str, Any]:
        # Keys that only some attempts set are left out while unset, as status.json always had them.
        out = {f: getattr(self, f) for f in _FIELDS if not (f in _ONLY_WHEN_SET and getattr(self, f) is None)}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Status:
        if not isinstance(data, dict):
            raise StatusUnreadable(f"not a JSON object but {type(data).__name__}")
        state = data.get("state", "pending")
        if state not in STATES:
            raise StatusUnreadable(f"state {str(state)[:40]!r} is none of {', '.join(STATES)}")
        known = {k: v for k, v in data.items() if k in _FIELD_SET}
        attempts = known.get("attempts", 0)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise StatusUnreadable(f"attempts {str(attempts)[:40]!r} is not a count")
        for key, value in known.items():  # a hand edit of another type ("error": 5) once crashed orchestrator.status
            kind = _TYPES.get(key)
            if kind is not None and value is not None and (not isinstance(value, kind) or (key == "epoch" and isinstance(value, bool))):
                raise StatusUnreadable(f"{key} {str(value)[:40]!r} is not {_TYPE_NAMES[kind]}")
        return cls(**known, extra={k: v for k, v in data.items() if k not in _FIELD_SET} if len(known) < len(data) else {})


_FIELDS = tuple(f.name for f in dataclasses.fields(Status) if f.name != "extra")
_FIELD_SET = frozenset(_FIELDS)  # `in` a tuple of 20 names, twice per key, cost ~0.1 s at 10,000 trials (issue 25)
_ONLY_WHEN_SET = frozenset({"epoch", "fused", "last_interruption", "log", "skipped_images"})
_TEXT = ("trial_id", "error", "error_kind", "started", "ended", "host", "platform", "device", "git_sha", "last_interruption", "log")
# The type each field may hold besides null (state and attempts are checked on their own).
_TYPES: dict[str, type] = {
    **dict.fromkeys(_TEXT, str), "epoch": int, "retryable": bool, "git_dirty": bool, "fused": int,
    "versions": dict, "skipped_images": dict,
}  # fmt: skip
_TYPE_NAMES = {str: "text", int: "a whole number", bool: "true or false", dict: "a JSON object"}


def read_status(folder: Path) -> Status:
    """The recorded status (pending when there is none); StatusUnreadable if status.json is damaged."""
    return _read_status(Path(folder))


def _read_status(folder: Path) -> Status:
    """read_status of a Path. A str path to open: a pathlib join per trial was a tenth of `status` at 10,000 trials (issue 25)."""
    try:
        text = read_bytes(f"{os.fspath(folder)}/{STATUS}")
    except FileNotFoundError:
        return Status()
    except OSError as err:
        raise StatusUnreadable(f"{folder / STATUS}: {err.strerror or err}") from None
    try:
        return Status.from_dict(json.loads(text))
    except (ValueError, UnicodeDecodeError) as err:
        raise StatusUnreadable(f"{folder / STATUS}: {str(err)[:120]}") from None


def write_status(folder: Path, status: Status) -> None:
    """Replace status.json atomically (the caller holds the trial's lock)."""
    write_json(status.to_dict(), Path(folder) / STATUS)


@dataclass(frozen=True)
class TrialState:
    """A trial folder as launchers and `orchestrator.status` see it: its status and its lock."""

    trial_id: str
    folder: Path
    state: str  # one of SEEN_STATES
    status: Status = field(default_factory=Status)
    reason: str | None = None  # why it is unreadable

    @property
    def attempts(self) -> int:
        return self.status.attempts

    @property
    def epoch(self) -> int | None:
        return self.status.epoch

    @property
    def error(self) -> str | None:
        return self.reason if self.state == "unreadable" else self.status.error

    @property
    def retryable(self) -> bool:
        return self.status.retryable

    @property
    def host(self) -> str | None:
        return self.status.host

    def runnable(self, max_attempts: int) -> bool:
        """Should a launcher start (or resume) this trial now?

        Pending and interrupted trials resume (an interruption is a stop from outside, not the
        trial's fault); failed ones are retried while they have attempts left. An unreadable
        status gets an attempt, which rebuilds it from the folder; launchers bound how often they
        start a trial that makes no progress, so that never loops.
        """
        if self.state in ("pending", "interrupted", "unreadable"):
            return True
        if self.state == "failed":
            return self.retryable and self.attempts < max_attempts
        return False


def observe(folder: Path) -> TrialState:
    """The state of one trial folder from its status.json and its lock (no Parquet read)."""
    folder = folder if isinstance(folder, Path) else Path(folder)
    # A done trial is done whoever holds its lock (below), so its lock is not probed: the most
    # common case, and an open and flock less per trial (issue 25).
    with contextlib.suppress(StatusUnreadable):
        if (status := _read_status(folder)).state == "done":
            return TrialState(folder.name, folder, "done", status)
    locked = is_locked(folder)
    try:
        status = _read_status(folder)  # not done: the lock first, then status.json, as ever (the order the states below rest on)
    except StatusUnreadable as err:
        return TrialState(folder.name, folder, "running" if locked else "unreadable", reason=f"status.json unreadable ({err})")
    state: str = status.state
    if status.state == "running" and not locked:
        state = "interrupted"  # its process died: the kernel released the lock
    elif status.state != "done" and locked:
        state = "running"  # an attempt holds the lock (and may not have written its status yet)
    return TrialState(folder.name, folder, state, status)
