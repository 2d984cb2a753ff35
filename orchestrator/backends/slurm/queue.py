"""What SLURM's queue says about a sweep's jobs, and what the trial folders must learn from it.

    live = queue_info(job_ids)          # {job id: (name, state, reason)} of those still queued: one squeue call
    views = job_views(folders)          # per trial: its recorded job (slurm_job.json), queue state and reason
    stuck(reason)                       # what a pending reason means when the job cannot start as it is
    notes = settle(folders)             # jobs that left the queue without their trials' outcome: recorded

Used by the launcher (before it submits, and after `wait: true` has waited) and by
`orchestrator.status`, so a failure that no process inside the job could record still lands in
the trial folders. A job that leaves the queue

- without its task's code having started (`<job log folder>/<job id>_started.json` missing: a
  setup line failed, `python` is wrong, the project does not import on the node, the log folder
  is not writable there): each of its trials not started since the submission is `failed`
  (error_kind `setup`, retryable) with the most telling line of the job's stderr and its path,
  and that counts as an attempt, so reruns stop resubmitting it after `max_attempts`;
- after its code started, while a trial's status still says `running` (the job's own process was
  killed: OOM, node failure without requeue): the trial is `interrupted`, with the same reason.

Each job is settled once: slurm_job.json gets `settled` (the trial's lock is held meanwhile).

Where SLURM keeps accounting, `sacct` says how the job ended, and that decides (outcome()):

    CANCELLED               the trial goes back to where it was: a trial that had not started stays
                            not started, a running one is `interrupted`; never an attempt
    PREEMPTED, NODE_FAIL    (only seen here when SLURM did not requeue the job) `interrupted`, or
                            back to not started; never an attempt: it resumes from its checkpoint
    TIMEOUT                 as without accounting (the job requeues itself; a leftover is `interrupted`)
    OUT_OF_MEMORY, FAILED   a trial that was running is `failed` with the state and the job's log
                            (its attempt was counted when it started); one not started: as above

Without accounting (squeue only) the stderr line has to say it, as described above; a job cancelled
through `orchestrator.cancel` (slurm_job.json's `cancelled`) or whose stderr shows SLURM's
"CANCELLED AT" line is a cancel all the same: no attempt. A job `scancel`led while it was still
pending leaves no trace at all without accounting and reads as a setup failure: cancel sweeps with
`python -m orchestrator.cancel`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.slurm.sbatch import TAG_RE
from orchestrator.backends.slurm.sbatch_once import SUBMITIT_SCRIPT
from trainer.errors import UserError
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import read_json, write_json
from trainer.status import StatusUnreadable, read_status, write_status

SUBMITTED = "slurm_job.json"  # written by launchers (and `settled` by queue.settle)
STARTED = "{job_id}_started.json"  # written by the job (orchestrator.backends.slurm.job)


def read_submission(folder: Path) -> dict[str, Any] | None:
    """The trial's slurm_job.json (its last submitted job), or None."""
    try:
        rec = read_json(Path(folder) / SUBMITTED)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("job_id"), str) else None


def queue_info(job_ids: Iterable[Any], timeout_s: float = 60) -> dict[str, tuple[str, str, str]]:
    """{job id: (job name, state, reason)} of those of `job_ids` still in the queue (pending, running, completing).

    The reason is squeue's: why a pending job waits (Priority, Resources, Dependency, ...), 'None' once it runs.
    """
    ids = [str(j) for j in job_ids]
    arrays = sorted({j.split("_")[0] for j in ids})
    if not arrays:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--jobs", ",".join(arrays), "--format", "%i|%j|%T|%r"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"squeue failed ({err}); is SLURM reachable from here?") from None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every job has left the queue (and the controller forgot them)
            return {}
        raise UserError(f"squeue failed: {last_line(out.stderr)}")
    live: dict[str, tuple[str, str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            live[parts[0]] = (parts[1], parts[2], parts[3])
    return {j: live[j] for j in ids if j in live}


def squeue(job_ids: Iterable[Any]) -> dict[str, str]:
    """{job id: job name} of those of `job_ids` still in the queue."""
    return {j: name for j, (name, _, _) in queue_info(job_ids).items()}


@dataclass(frozen=True)
class QueuedArray:
    """A job array (or plain job) of the sweep in the queue, as `squeue --me --name` tells it."""

    array: str
    never_released: bool  # every entry pending as JobHeldUser: submitted held, not released since
    script: str  # the script sbatch was given (submitit's `.submission_file_<uuid>.sh`)
    comment: str = ""  # the job's comment: sbatch.sweep_tag of its sweep, unless the profile set its own


def sweep_arrays(name: str, scripts: Path | None = None, tag: str | None = None) -> list[QueuedArray]:
    """The user's job arrays (or plain jobs) named `name` still in the queue: what new arrays chain after.

    The same grid run into another results folder is another sweep of the same job name, and its
    arrays must not hold this one's back (afterany), share its throttle, or be taken for an array a
    killed launcher left held. With `tag` (this sweep's job comment, sbatch.sweep_tag), those that
    carry it; with `scripts` (the folder submitit writes the sweep's sbatch scripts to), also those
    whose script is there and that carry no sweep's tag (a profile's own comment; an older launch).
    Sweeps that share a profile's `log_dir` and set a `comment` of their own chain as one.
    """
    # The comment may hold '|' (a profile's own); a tab ends it (SLURM comments here have none).
    cmd = ["squeue", "--noheader", "--me", "--name", name, "--format", "%F|%T|%r|%k\t%o"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"squeue failed ({err}); is SLURM reachable from here?") from None
    if out.returncode != 0:
        raise UserError(f"squeue failed: {last_line(out.stderr)}")
    return _ours(parse_arrays(out.stdout), scripts, tag)


def parse_arrays(text: str) -> list[QueuedArray]:
    """The arrays of `squeue --format '%F|%T|%r|%k\\t%o'` lines, by array id."""
    held: dict[str, bool] = {}
    script_of: dict[str, str] = {}
    comment_of: dict[str, str] = {}
    for line in text.splitlines():
        fields, _, script = line.strip().partition("\t")
        array, state, reason, comment = (fields.split("|", 3) + ["", "", ""])[:4]
        if array.isdigit():
            held[array] = held.get(array, True) and state == "PENDING" and reason == "JobHeldUser"
            script_of[array], comment_of[array] = script, comment
    return [QueuedArray(a, held[a], script_of[a], comment_of[a]) for a in sorted(held, key=int)]


def _ours(arrays: list[QueuedArray], scripts: Path | None, tag: str | None) -> list[QueuedArray]:
    if scripts is None and tag is None:
        return arrays
    folder = os.path.abspath(scripts) if scripts is not None else None
    return [
        q for q in arrays
        if (tag is not None and q.comment == tag) or (not TAG_RE.fullmatch(q.comment) and os.path.dirname(q.script) == folder)
    ]  # fmt: skip


def unreleased(arrays: list[QueuedArray], script_folder: Path, trials: Path) -> list[str]:
    """The arrays a launcher submitted held from `script_folder` and stopped before releasing.

    Killed between sbatch and its release (SIGKILL, a hang-up, a lost login node), a launcher
    leaves a held array that no trial records, and every later array of the sweep would wait on
    it (afterany) for ever. An array some trial under `trials` records is never one of them (it
    was released, or the user held it). The trials' records are read only when a candidate exists.
    """
    folder = os.path.abspath(script_folder)
    candidates = {
        q.array for q in arrays
        if q.never_released and os.path.dirname(q.script) == folder and SUBMITIT_SCRIPT.fullmatch(os.path.basename(q.script))
    }  # fmt: skip
    if not candidates:
        return []
    recorded = {rec["job_id"].split("_")[0] for f in (trials.iterdir() if trials.is_dir() else []) if (rec := read_submission(f))}
    return sorted(candidates - recorded, key=int)


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: 'STATE, exit code X:Y'} from accounting; {} where SLURM keeps none (or sacct is missing)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    # By array: tasks cancelled before they started have no row of their own ("12_[1-2%1]"), and asking for 12_1 finds none.
    arrays = sorted({j.split("_")[0] for j in ids})
    cmd = ["sacct", "--noheader", "--parsable2", "--jobs", ",".join(arrays), "--format", "JobID,State,ExitCode"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0 or "disabled" in out.stdout + out.stderr:
        return {}
    states = parse_sacct(out.stdout)
    return {j: states[j] for j in ids if j in states}


def parse_sacct(text: str) -> dict[str, str]:
    """{job id: 'STATE, exit code X:Y'} from `sacct --parsable2 --format JobID,State,ExitCode` rows."""
    own: dict[str, str] = {}
    ranged: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and "." not in parts[0]:  # the job itself, not its steps
            for job in _expand(parts[0]):
                (ranged if "[" in parts[0] else own)[job] = f"{parts[1]}, exit code {parts[2]}"
    # A task's own row wins over the array's row of tasks that never started: slurmdbd may keep that
    # row's range as submitted (seen on the test SLURM: "146_[0-2%1] CANCELLED by 0" listed after
    # "146_0 COMPLETED" when 146_1 and 146_2 were cancelled while 146_0 ran).
    return {**ranged, **own}


def _expand(job_id: str) -> list[str]:
    """'12_[0-2,5%2]' (array tasks that never started, one row) -> 12_0, 12_1, 12_2, 12_5; others as they are."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(%\d+)?\]", job_id)
    if not match:
        return [job_id]
    out = []
    for part in match.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{match.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


# What a job's end means for its trials (see the module's doc).
CANCELLED, REQUEUE, FAILED = "cancelled", "requeue", "failed"


def outcome(accounted: str | None, stderr_text: str | None, cancel_mark: bool) -> str | None:
    """cancelled | requeue | failed | None (unknown: read the trial folder as without accounting)."""
    state = (accounted or "").split(",")[0].split(" ")[0]  # "CANCELLED by 0, exit code 0:0" -> CANCELLED
    if cancel_mark or state == "CANCELLED":
        return CANCELLED
    if state in ("PREEMPTED", "NODE_FAIL", "REQUEUED", "BOOT_FAIL", "DEADLINE"):
        return REQUEUE
    if state in ("OUT_OF_MEMORY", "FAILED"):
        return FAILED
    if not state and stderr_text and _CANCELLED_AT.search(stderr_text):
        return CANCELLED
    return None


_CANCELLED_AT = re.compile(r"\*\*\* (JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ \*\*\*")


# ---- one view per trial ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobView:
    job_id: str
    queue_state: str | None  # PENDING, RUNNING, ... while queued; None once it has left the queue
    reason: str | None = None  # squeue's reason while it is pending (Priority, Resources, PartitionTimeLimit, ...)


def job_views(folders: Iterable[Path], timeout_s: float = 60) -> dict[Path, JobView]:
    """The recorded job of each trial that has one, with its state in the queue (one squeue call).

    Raises UserError when squeue fails (SLURM unreachable): callers decide whether that matters.
    """
    recs = {Path(f): rec for f in folders if (rec := read_submission(Path(f))) is not None}
    if not recs:
        return {}
    live = queue_info((rec["job_id"] for rec in recs.values()), timeout_s)
    views = {}
    for f, rec in recs.items():
        name, state, why = live.get(rec["job_id"], (None, None, None))
        # Job ids are reused after a controller's state is wiped: the name must match too.
        ours = name == rec.get("job_name")
        waits = ours and state == "PENDING" and why not in ("", "None")  # 'None': not yet looked at by the scheduler
        views[f] = JobView(rec["job_id"], state if ours else None, why if waits else None)
    return views


# Pending reasons that do not clear by waiting: the job cannot start as submitted until its request,
# a limit or the partition changes (SLURM's job reason codes). Priority, Resources, Dependency,
# BeginTime, JobArrayTaskLimit and the aggregate (Grp) limits clear as other jobs end.
_STUCK = {
    "PartitionTimeLimit": "its time limit is over the partition's MaxTime (lower time_min)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionConfig": "it asks for more than the partition's nodes have, or for an account or QOS it does not take",
    "MaxMemPerLimit": "its memory is over the partition's (or QOS's) per-node or per-CPU limit (lower mem_gb)",
    "BadConstraints": "no node has what it asks for (the features of constraint, or as many CPUs, memory or GPUs)",
    "DependencyNeverSatisfied": "a job it depends on cannot make the dependency true",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
    "AccountNotAllowed": "the partition does not take its account",
    "QOSNotAllowed": "the partition does not take its QOS",
    "PartitionDown": "its partition is down (an administrator brings it up)",
    "PartitionInactive": "its partition is inactive (an administrator brings it up)",
    "JobHeldAdmin": "an administrator holds it",
    "JobHeldUser": "it is held (scontrol release <job> lets it go)",
    # `scontrol requeuehold` (by hand, or a site's prolog): squeue's reason is this text, not a code
    "job requeued in held state": "it was requeued and held (scontrol release <job> lets it go)",
}


def stuck_lines(reasons: Iterable[str | None], what: str) -> list[str]:
    """One line per pending reason among `reasons` that does not clear by waiting, counting the `what` it holds."""
    held = Counter(r for r in reasons if stuck(r))
    return [f"{n} {what} cannot start as they are: {why}: {stuck(why)}" for why, n in sorted(held.items())]


def stuck(reason: str | None) -> str | None:
    """Why a pending job cannot start as it is (a reason that does not clear by waiting), or None."""
    if not reason:
        return None
    if reason in _STUCK:
        return _STUCK[reason]
    # Per job or per node (QOSMaxCpuPerJobLimit, QOSMaxMemoryPerJob, QOSMaxGRESPerNode, AssocMaxMemPerJob, ...);
    # not the per-user and aggregate ones (QOSMaxJobsPerUserLimit, QOSGrpCpuLimit), which clear as other jobs end.
    if reason.startswith(("QOSMax", "AssocMax")) and ("PerJob" in reason or "PerNode" in reason):
        return "it asks for more than its QOS or association allows one job (lower the request or change qos/account)"
    if reason.startswith("QOSMin"):  # QOSMinCpuNotSatisfied, QOSMinGRES, QOSMinMemory, ...
        return "it asks for less than its QOS requires of one job (raise the request or change qos)"
    return None


# ---- jobs that left without a word ---------------------------------------------------------------------
def settle(folders: Iterable[Path], views: dict[Path, JobView] | None = None) -> list[str]:
    """Record in each trial what its vanished job could not; returns a line per trial recorded.

    `views` (from job_views) saves the squeue call when the caller has them already.
    """
    views = job_views(folders) if views is None else views
    gone = {f: v for f, v in views.items() if v.queue_state is None}
    if not gone:
        return []
    recs = {f: rec for f in gone if (rec := read_submission(f)) is not None and not rec.get("settled")}
    if not recs:
        return []
    accounting = sacct_states({rec["job_id"] for rec in recs.values()})
    notes = []
    for f, rec in recs.items():
        note = _settle_one(f, rec, accounting.get(rec["job_id"]))
        if note:
            notes.append(note)
    return notes


def _settle_one(folder: Path, rec: dict[str, Any], accounted: str | None) -> str | None:
    job = rec["job_id"]
    try:
        with TrialLock(folder):  # a live process holds it: the trial is in hand, nothing to settle
            if read_submission(folder) != rec:  # resubmitted meanwhile
                return None
            try:
                status = read_status(folder)
            except StatusUnreadable:
                return None  # the next attempt rebuilds it; nothing sensible to add here
            stderr = Path(rec.get("stderr") or Path(rec.get("log_folder", "")) / f"{job}_0_log.err")
            started = (Path(rec.get("log_folder", "")) / STARTED.format(job_id=job)).exists()
            reason = job_end_reason(stderr, accounted)
            meaning = outcome(accounted, _tail(stderr), bool(rec.get("cancelled")))
            if meaning == CANCELLED and _tail(stderr) is None:  # no log because it never ran: say just that
                reason = "cancelled before it ran" + (f" (sacct: {accounted})" if accounted else "")
            note = None
            began_since = status.started is not None and status.started >= str(rec.get("submitted", ""))
            running = status.state == "running"  # its process is gone (we hold the lock)
            if status.final:
                pass
            elif meaning in (CANCELLED, REQUEUE) and not running:
                # Never ran (or had stopped already): back to where it was, no attempt used.
                what = "cancelled" if meaning == CANCELLED else "ended before it ran"
                said = f"{now()}: job {job} {what}: {reason}"
                # Keep what the trial said when it stopped ("checkpointed in epoch E at step S"): progress is measured from it.
                status.update(last_interruption=f"{said}; {status.last_interruption}" if status.last_interruption else said)
                write_status(folder, status)
                note = f"{folder.name}: {meaning}: {said}"
            elif meaning in (CANCELLED, REQUEUE):
                said = f"{now()}: job {job} {'cancelled' if meaning == CANCELLED else 'ended'} while the trial was running: {reason}"
                status.update(state="interrupted", last_interruption=said, ended=now(), log=str(stderr))
                write_status(folder, status)
                note = f"{folder.name}: {meaning}: {said}"
            elif not started and not began_since:
                error = f"job {job} ended before its trials started: {reason} (log: {stderr})"
                status.update(state="failed", error=error, error_kind="setup", retryable=True, ended=now(), log=str(stderr))
                status.attempts += 1
                write_status(folder, status)
                note = f"{folder.name}: failed: {error}"
            elif running and meaning == FAILED:  # OUT_OF_MEMORY, FAILED: its attempt counted when it started
                error = f"job {job} ended while the trial was running: {reason} (log: {stderr})"
                status.update(state="failed", error=error, error_kind="job", retryable=True, ended=now(), log=str(stderr))
                write_status(folder, status)
                note = f"{folder.name}: failed: {error}"
            elif running:
                said = f"{now()}: job {job} ended while the trial was running: {reason} (log: {stderr})"
                status.update(state="interrupted", last_interruption=said, ended=now(), log=str(stderr))
                write_status(folder, status)
                note = f"{folder.name}: interrupted: {said}"
            elif (
                status.state == "interrupted"
                and "DUE TO TIME LIMIT" in (_tail(stderr) or "")
                and "SIGTERM" in (status.last_interruption or "")
            ):
                # The job's SIGTERM handler could only say "SIGTERM (preempted, requeued or cancelled)":
                # the time limit came before SLURM's USR2 warning (slurmctld checks limits about every
                # 30 s; a short time_min's warning window can fall between checks), so nothing requeued it.
                said = (
                    f"{now()}: job {job} reached its time limit before SLURM's warning (USR2) came, so it was not requeued; "
                    "its last checkpoint stands: run the sweep again to go on (a longer time_min gives the warning room)"
                )
                status.update(last_interruption=f"{said}; {status.last_interruption}", log=str(stderr))
                write_status(folder, status)
                note = f"{folder.name}: interrupted: {said}"
            write_json({**rec, "settled": now()}, folder / SUBMITTED)
            return note
    except TrialBusy:
        return None
    except OSError as err:  # a full disk: say it, the trial stays as it is
        return f"{folder.name}: job {job} left the queue; could not record it ({err})"


def summarize(notes: list[str], most: int = 3) -> list[str]:
    """At most 1 + `most` lines for settle's notes: counts per outcome, then a few failures in full."""
    if not notes:
        return []
    kinds = Counter(n.split(": ", 2)[1] if n.count(": ") >= 2 else "other" for n in notes)
    label = {CANCELLED: "cancelled (no attempt used)", REQUEUE: "ended by SLURM before they ran (no attempt used)"}
    counts = ", ".join(f"{k} {label.get(kind, kind)}" for kind, k in kinds.most_common())
    lines = [f"recorded what {len(notes)} trials' jobs could not: {counts}"]
    telling = [n for n in notes if (n.split(": ", 2) + ["", ""])[1] not in (CANCELLED, REQUEUE)]
    lines += [f"  {n}" for n in telling[:most]]
    if len(telling) > most:
        lines.append(f"  ... and {len(telling) - most} more (orchestrator.status --json shows each)")
    return lines


# Lines of a job's stderr that say only that something failed, not what: srun's summary of a
# task's exit, the step's cancellation, submitit's "an exception happened" (its traceback's last
# line says which).
_GENERIC = re.compile(
    r"^srun: error: .*tasks? [0-9,\-]+: (Exited with exit code|Killed)"
    r"|^srun: (launch/slurm: _step_signal|Job step aborted|Terminating|forcing job termination)"
    r"|^slurmstepd: error: \*\*\* (STEP|JOB) .* (CANCELLED|FAILED)"
    r"|submitit ERROR .*Submitted job triggered an exception"
    r"|^raise error$"
)


def job_end_reason(stderr: Path, accounted: str | None = None) -> str:
    """Why a job ended, from its stderr (the most telling line) and accounting when there is any."""
    text = _tail(stderr)
    if text is None:
        said = f"no log at {stderr} (cancelled before it ran, or the log folder is not writable on the node)"
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        telling = [line for line in lines if not _GENERIC.search(line)]
        said = (telling or lines or ["its log is empty"])[-1][:300]
    return f"{said} (sacct: {accounted})" if accounted else said


def _tail(path: Path, size: int = 16384) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
