"""Run groups of trial folders in worker processes until each trial has an outcome: the one retry loop.

Every backend ends here: the local backend runs it in the launcher (a slot per --max-parallel
worker), a SLURM array task runs it on its node, a Ray Tune trial runs it for its group.

    runner = Runner(slots(n=2, cpus=8), max_attempts=3, fused=True)
    report = runner.run([[folder_a, folder_b], [folder_c]])     # groups of trial folders

A worker is `python -m trainer.group --spec A/spec.json --spec B/spec.json ...` on one slot (its
threads, its GPU), for the members of a group that are runnable now; its output goes to the first
member's `trainer.log`. When a worker ends, each member's status.json says what happened; what the
worker could not record, the runner records (holding the trial's lock). `outcome_of`, a pure
function, names each member's case (an `Outcome`); `Runner._settle` acts on it:
- the worker died while training (a signal: the OOM killer, kill -9, a node in trouble): the trial
  is `interrupted`, with the signal and the log's path in `last_interruption`;
- the worker ended before the trial's attempt began (python or a package missing, an unreadable
  spec, a bad device): the trial is `failed` (retryable, error_kind `setup`) with the log's last
  line, and that counts as an attempt, so a relaunch stops after `max_attempts`;
- no worker could be started (the interpreter missing, no room for the log): the members are
  `failed` (error_kind `setup`, an attempt counted) and not restarted here;
- the worker stopped on request (exit 76: SIGUSR1, a mid-epoch checkpoint before a time limit),
  or a stop signal of ours ended it before its attempt began: nothing failed, it is not restarted.
A group goes again with its members that can still run: failed ones while they have attempts
left (each start counts one), interrupted ones only if they made progress (a new epoch) since
their previous start here; a member that ran out of device memory goes again alone
(`split_out_of_memory`), since the same group would run out again. A user mistake never goes
again. So the loop always ends, even when nothing can be recorded (a full disk): a trial that
makes no progress is given up, and said so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import cast

from orchestrator.cancel import cancel_requested
from trainer.cli import EXIT_BUSY, EXIT_CHECKPOINTED, EXIT_USER, hold_signals, release_signals
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import SPEC
from trainer.status import OUT_OF_MEMORY, TrialState, observe, read_status, write_status

LOG = "trainer.log"
POLL_S = 0.2
STOP_WAIT_S = 120  # a stopped worker records itself within seconds; one that does not is SIGKILLed after this


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its name (for messages) and the environment it gets."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def make_slots(n: int, cpus: int | None = None, gpus: list[str] | None = None) -> list[Slot]:
    """`n` worker slots sharing `cpus` cores (default: this machine's); slot i gets GPU gpus[i] if given.

    Each worker gets cpus // n threads: n workers with a thread per core each would oversubscribe
    the machine (busy-waiting OpenMP threads made a small CPU trial 8x slower).
    """
    if n < 1:
        raise ValueError(f"need at least one slot, got {n}")
    threads = str(max(1, (cpus or os.cpu_count() or 1) // n))
    out = []
    for i in range(n):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        out.append(Slot(f"gpu{gpus[i]}" if gpus is not None else f"worker{i}", env))
    return out


@dataclass
class Report:
    """How a run ended, trial by trial (their states as the folders say afterwards)."""

    states: dict[Path, TrialState] = field(default_factory=dict)
    given_up: dict[Path, str] = field(default_factory=dict)  # not run again here, and why
    user_errors: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(s.state == state for s in self.states.values())


class WorkerPool:
    """Commands on slots: start one on a free slot, wait for whichever ends first (no head-of-line wait)."""

    def __init__(self, slots: list[Slot]) -> None:
        self.free = list(slots)
        self.running: dict[subprocess.Popen[bytes], tuple[Slot, object]] = {}

    def start(self, cmd: list[str], key: object, log: Path | None = None) -> Slot:
        """Run `cmd` on a free slot (output appended to `log`, else discarded); `key` comes back from wait."""
        slot = self.free.pop(0)
        try:
            with open(log if log is not None else os.devnull, "ab") as out:  # the child keeps its own copy
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **slot.env})
        except BaseException:  # no interpreter, no room for the log: the slot stays free
            self.free.insert(0, slot)
            raise
        self.running[proc] = (slot, key)
        return slot

    def wait(self, on_poll: Callable[[], None] | None = None) -> tuple[object, int]:
        """The key and exit code of the next command to end; its slot is free again (`on_poll` runs meanwhile)."""
        while True:
            if on_poll is not None:
                on_poll()
            for proc, (slot, key) in list(self.running.items()):
                code = proc.poll()
                if code is not None:
                    del self.running[proc]
                    self.free.append(slot)
                    return key, code
            time.sleep(POLL_S)

    def signal(self, sig: int) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(sig)

    def wait_all(self, timeout: float | None = None) -> None:
        for proc in list(self.running):
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()


class Runner:
    """Trial groups on a worker pool, with the retry policy of the module docstring."""

    def __init__(
        self, slots: list[Slot], max_attempts: int, fused: bool = True, python: str | None = None,
        on_change: Callable[[Report, int], None] | None = None, log_hint: str = "",
    ) -> None:  # fmt: skip
        self.pool = WorkerPool(slots)
        self.max_attempts, self.fused = max_attempts, fused
        self.python = python or sys.executable
        self.on_change = on_change  # (report so far, workers running): progress lines
        self.log_hint = log_hint  # e.g. "job 123_4": said in recorded reasons
        self.report = Report()
        self._stopping = False
        self._probe: Path | None = None

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, groups: list[list[Path]]) -> Report:
        queue = [list(g) for g in groups]
        self._probe = next((f for g in groups for f in g), None)  # a trial folder: where to look for a cancel request
        try:
            while queue or self.pool.running:
                self._check_cancel()
                while queue and self.pool.free and not self._stopping:
                    group = queue.pop(0)
                    todo = self._startable(group)
                    if todo:
                        self._start(todo)
                    self._changed()
                if self._stopping and not self.pool.running:
                    break
                if not self.pool.running:
                    continue
                key, code = self.pool.wait(on_poll=lambda: self._check_cancel())
                members, before = cast("tuple[list[Path], dict[Path, TrialState]]", key)
                again = self._ended(code, members, before)
                if again and not self._stopping:
                    queue.extend(split_out_of_memory(again, self.report.states))
                self._changed()
        finally:
            # Never orphan a worker: stop them and wait (bounded), a second Ctrl-C or signal held meanwhile.
            mask = hold_signals()
            try:
                self.stop(signal.SIGTERM)
                self.pool.wait_all(timeout=STOP_WAIT_S)
            finally:
                release_signals(mask)
        for group in groups:
            for f in group:
                self.report.states[f] = observe(f)
        return self.report

    def _check_cancel(self) -> None:
        """`orchestrator.cancel` asked (<sweep>/cancel.json): start nothing more, stop the workers as on a time limit."""
        if self._stopping:
            return
        if self._probe is not None and cancel_requested(self._probe):
            print("the sweep was cancelled (orchestrator.cancel): stopping the workers at their next step", file=sys.stderr, flush=True)
            self.stop(signal.SIGUSR1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Start no more workers and pass `sig` on to the running ones (they record themselves)."""
        self._stopping = True
        self.pool.signal(sig)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.report, len(self.pool.running))

    # ---- one worker -------------------------------------------------------------------------
    def _startable(self, group: list[Path]) -> list[Path]:
        todo = []
        for f in group:
            st = observe(f)
            self.report.states[f] = st
            if f in self.report.given_up:
                continue
            if st.runnable(self.max_attempts):
                todo.append(f)
        return todo

    def _start(self, members: list[Path]) -> None:
        try:
            self._start_worker(members)
        except OSError as err:  # no interpreter, a full disk for the log: no worker, still an outcome
            why = f"cannot start a worker ({err.strerror or err}{f': {err.filename}' if err.filename else ''})"
            for f in members:
                self._record(f, "failed", why, "setup", count=True)
                self.report.given_up.setdefault(f, f"{why}; not restarted")
                self.report.states[f] = observe(f)
                print(f"{f.name}: {why}", file=sys.stderr, flush=True)

    def _start_worker(self, members: list[Path]) -> None:
        log = members[0] / LOG
        for f in members[1:]:  # one process, one log: the first member's
            with open(f / LOG, "a") as note:
                note.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} trains with {members[0].name}: output in {log}\n")
        before = {f: observe(f) for f in members}
        # A trial alone because it ran out of device memory fused goes unfused: the fused engine would
        # pair it with a throwaway twin, two networks' memory, as much as the group of two it failed in.
        plain = len(members) == 1 and before[members[0]].status.error_kind == OUT_OF_MEMORY
        args = [a for f in members for a in ("--spec", str(f / SPEC))] + ([] if self.fused and not plain else ["--no-fuse"])
        with open(log, "a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.pool.free[0].name}: trainer.group {' '.join(f.name for f in members)}\n")
            if plain and self.fused:
                out.write(
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} unfused: it ran out of device memory fused (a twin would need as much again)\n"
                )
        self.pool.start([self.python, "-m", "trainer.group", *args], (members, before), log)

    def _ended(self, code: int, members: list[Path], before: dict[Path, TrialState]) -> list[Path]:
        """Record what the worker could not, and return the members to run again."""
        log = members[0] / LOG
        why = _exit_reason(code)
        again = []
        for f in members:
            now_ = observe(f)
            outcome = outcome_of(code, now_, before[f], self._stopping)
            self._settle(outcome, f, now_, log, why)
            if outcome in MAY_GO_AGAIN and self._goes_again(f, before[f], why, log):
                again.append(f)
        return again

    def _settle(self, outcome: Outcome, f: Path, now_: TrialState, log: Path, why: str) -> None:
        """Write down what the worker left unsaid about member `f` (one case of `Outcome` each)."""
        match outcome:
            case Outcome.HELD | Outcome.RECORDED:
                return
            case Outcome.STOPPED:
                self.report.states[f] = now_
            case Outcome.USER_ERROR:
                self._record(f, "failed", f"{last_line(log)} (log: {log})", "user", count=True)
                self.report.user_errors.append(f"{f.name}: {last_line(log)}")
            case Outcome.USER_ERROR_RECORDED:  # met on the node (data missing there): the trial's log says the rest
                self._note_log(f, log)
                self.report.user_errors.append(f"{f.name}: {now_.error}")
            case Outcome.SETUP_FAILED:
                self._record(f, "failed", f"{why} before the trial started: {last_line(log)} (log: {log})", "setup", count=True)
            case Outcome.DIED:  # its process died without a word: say how, so the trial's folder tells the story
                self._record(f, "interrupted", f"{why} in epoch {(now_.epoch or 0) + 1} (log: {log})", None, count=False)

    def _goes_again(self, f: Path, before: TrialState, why: str, log: Path) -> bool:
        """Whether member `f` runs again: failed with attempts left, or interrupted after progress; else given up."""
        after = observe(f)
        self.report.states[f] = after
        if not after.runnable(self.max_attempts):
            return False
        progressed = (after.epoch or -1) > (before.epoch or -1)
        if after.state == "failed" or progressed:
            print(f"{f.name}: {after.state} ({after.error or why}); restarting from its checkpoint", file=sys.stderr, flush=True)
            return True
        said = f"{why} ({last_line(log)[:160]}), no progress since its last start here"
        self.report.given_up.setdefault(f, f"{said}; not restarted (log: {log})")
        return False

    def _note_log(self, folder: Path, log: Path) -> None:
        """Add the log path (and the job, on SLURM) to an outcome the worker recorded without them."""
        try:
            with TrialLock(folder):
                status = read_status(folder)
                if status.log is None:
                    status.log = str(log)
                    if self.log_hint and status.error and self.log_hint not in status.error:
                        status.error = f"{status.error} ({self.log_hint})"
                    write_status(folder, status)
        except (TrialBusy, OSError, ValueError):
            return  # the outcome itself is recorded; only the pointer to its log is missing

    def _record(self, folder: Path, state: str, error: str, kind: str | None, count: bool) -> None:
        """Write an outcome the worker could not write (its process is gone, so the lock is free)."""
        where = f" ({self.log_hint})" if self.log_hint else ""
        try:
            with TrialLock(folder):
                status = read_status(folder)
                if status.final:
                    return
                if state == "interrupted":
                    status.update(state="interrupted", last_interruption=f"{now()}: {error}{where}", ended=now())
                else:
                    status.update(state=state, error=error + where, error_kind=kind, retryable=True, ended=now())
                if count:
                    status.attempts += 1
                status.log = str(folder / LOG)
                write_status(folder, status)
        except TrialBusy:
            return
        except (OSError, ValueError) as err:  # a full disk, a damaged status.json: say it here instead
            self.report.given_up[folder] = f"{error}; and its status.json could not be written ({err})"
            print(f"{folder.name}: {error}; status.json not written ({err})", file=sys.stderr, flush=True)


class Outcome(Enum):
    """How one member's worker ended, as the runner reads it (the cases of the module docstring)."""

    HELD = "another live process holds the trial"
    STOPPED = "stopped on request (a mid-epoch checkpoint), or our stop signal came before its attempt began"
    USER_ERROR = "a user mistake before its attempt began: the runner records it"
    USER_ERROR_RECORDED = "a user mistake met on the node, recorded by the worker"
    SETUP_FAILED = "the worker ended before the trial's attempt began"
    DIED = "the worker died while training, without a word"
    RECORDED = "the worker recorded the outcome itself"


def split_out_of_memory(members: list[Path], states: dict[Path, TrialState]) -> list[list[Path]]:
    """The groups `members` go again in: each member whose attempt ran out of device memory alone.

    A fused group of K trials holds K networks' activations on one device: the same group again would
    run out again (a retry without progress). Alone, a trial needs a Kth of that memory.
    """
    if len(members) < 2:
        return [members]
    alone = [f for f in members if (st := states.get(f)) is not None and st.status.error_kind == OUT_OF_MEMORY]
    rest = [f for f in members if f not in alone]
    return [[f] for f in alone] + ([rest] if rest else [])


# The outcomes after which a member may go again (the retry policy); the others never do here.
MAY_GO_AGAIN = frozenset({Outcome.SETUP_FAILED, Outcome.DIED, Outcome.RECORDED})


def outcome_of(code: int, now_: TrialState, before: TrialState, stopping: bool) -> Outcome:
    """Classify a member from its worker's exit code and its state before and after (first match wins)."""
    started = now_.attempts > before.attempts  # the worker's attempt began (it counts one)
    if code == EXIT_BUSY or now_.state == "running":
        return Outcome.HELD
    if code == EXIT_CHECKPOINTED or (stopping and code < 0 and not started):
        return Outcome.STOPPED
    if code == EXIT_USER:
        return Outcome.USER_ERROR_RECORDED if started else Outcome.USER_ERROR
    if started and now_.state == "failed" and now_.status.error_kind == "user":
        return Outcome.USER_ERROR_RECORDED  # one member's (a damaged checkpoint) while its group trained on
    if not started and code != 0:
        return Outcome.SETUP_FAILED
    if now_.state == "interrupted" and code != 0 and now_.status.state == "running":
        return Outcome.DIED  # observe says interrupted (no live lock), status.json still says running
    return Outcome.RECORDED


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code}"


def last_line(path: Path) -> str:
    """The last non-empty line of a log (its error), at most 300 characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
