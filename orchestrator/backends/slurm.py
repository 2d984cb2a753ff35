"""SLURM backend: one array task per group of trials, submitted with submitit (the only file importing it).

    python -m orchestrator.sweep --grid grids/digits.yaml --cluster cluster_configs/slurm/<site>.yaml

Launcher side (`run_slurm`):
- The trials go out as job arrays of at most the cluster's MaxArraySize tasks (read from
  `scontrol show config` unless the profile sets `max_array_size`), at most `array_parallelism`
  running at once. The sbatch script carries the profile's resources and the job name
  `sweep-<sweep name>` only; each task gets its group's trial folders (orchestrator.pack: one
  trial, or several trained fused) through submitit's pickle, and the trials' settings are read
  from their spec.json: no grid value ever reaches a shell.
- Each trial folder gets `slurm_job.json` (its group's job id); running the sweep again does
  not submit a trial whose job is still queued or running.
- `wait: true` polls `squeue` until every job has left the queue, then the trial folders say how
  it went (no `sacct` needed: without accounting submitit reads every job state as UNKNOWN).
  `wait: false` prints the job ids and returns; `orchestrator.status` reads the same folders.

Job side (`TrialJob`, run by every array task; each step below is per member of its group):
- runs `trainer.group.run_group` on its folders, each resuming from its own checkpoint. Resume
  state lives only in the trial folder, never in submitit's pickles, so a requeued, duplicate or
  stale job sees the newest state: a trial that is done is not run again, and a trial another
  live process holds (its flock) is left to that process.
- time limit: SLURM sends USR2 `signal_delay_s` before the limit, submitit calls
  `TrialJob.checkpoint`, which requeues the job; the next start resumes from the checkpoint.
- preemption, `scontrol requeue`, node failure: SLURM sends SIGTERM (or the node is gone) and
  requeues the job. The task records the trial as interrupted and exits at once instead of
  training on until SIGKILL (KillWait); the last epoch's checkpoint is already on disk.
- requeues are counted per job in `<trial>/requeues.json`; past `max_requeues` the trial ends
  failed with "requeued N times (time limit / preemption)" in its status.json.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import submitit
from submitit.core.utils import FailedJobError
from submitit.slurm.slurm import _make_sbatch_string

from orchestrator.plan import TrialState, load_spec, read_state
from orchestrator.profiles import SlurmProfile
from orchestrator.progress import Progress
from orchestrator.slurm_script import chunked, job_name, parse_max_array_size, sbatch_parameters
from trainer.errors import UserError
from trainer.lock import TrialBusy, TrialLock
from trainer.provenance import now
from trainer.results import read_json, write_json
from trainer.attempt import is_final, read_status, write_status
from trainer.group import run_group

REQUEUES = "requeues.json"  # written only by the jobs
SUBMITTED = "slurm_job.json"  # written only by launchers
EXIT_SIGTERM = 128 + signal.SIGTERM


# ---- the sbatch script ----------------------------------------------------------------------------
def log_folder(profile: SlurmProfile, sweep: Path) -> Path:
    """submitit's folder (pickles, logs, scripts); `%j` becomes each job's id."""
    folder = Path(profile.log_dir) if profile.log_dir else sweep / "slurm" / "%j"
    return folder.absolute()


def python_command(profile: SlurmProfile) -> str:
    """The interpreter the jobs run: the profile's (a shell word or command), else the launcher's."""
    return profile.python if profile.python is not None else shlex.quote(sys.executable)


def render_sbatch(profile: SlurmProfile, sweep_name: str, folder: Path, n_tasks: int, python: str | None = None) -> str:
    """The sbatch script submitit writes for an array of `n_tasks` trials (a plain job for one).

    Pure: the same text as the submitted `*_submission.sh`, for review and the golden-file test.
    """
    _check_one_line(str(folder), "log folder")
    command = " ".join([python or python_command(profile), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    map_count = n_tasks if n_tasks > 1 else None
    return _make_sbatch_string(command=command, folder=folder, map_count=map_count, **sbatch_parameters(profile, sweep_name))


def _check_one_line(value: str, what: str) -> None:
    # A newline would end an `#SBATCH` comment line and turn the rest into a shell command.
    if "\n" in value or "\r" in value:
        raise UserError(f"{what} {value!r} contains a line break; it goes into an sbatch script")


def cluster_max_array_size() -> int:
    """MaxArraySize of the cluster, from `scontrol show config`."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"cannot ask SLURM for MaxArraySize (`scontrol show config`: {err}); set max_array_size in the profile") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`scontrol show config` failed ({why}); is SLURM up and SLURM_CONF right? or set max_array_size in the profile")
    return parse_max_array_size(out.stdout)


# ---- launcher ------------------------------------------------------------------------------------
def preflight(profile: SlurmProfile) -> None:
    """Cheap checks before any trial folder is written: SLURM's commands, the controller, the partition."""
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UserError(f"the slurm backend needs SLURM's commands on PATH; missing: {', '.join(missing)}")
    if profile.partition is None:
        return
    try:
        out = subprocess.run(["scontrol", "show", "partition", profile.partition], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UserError("`scontrol show partition` timed out; is the SLURM controller up?") from None
    if out.returncode != 0:
        raise UserError(f"partition '{profile.partition}': {_last_line(out.stderr or out.stdout)} (see `sinfo -s`)")


def run_slurm(groups: list[list[Path]], profile: SlurmProfile, sweep: Path) -> bool:
    """Submit the groups of trials (their spec.json paths); True if it also waited for every job to end."""
    folder_groups = [[Path(p).parent.absolute() for p in g] for g in groups]
    folders = [f for g in folder_groups for f in g]
    name = job_name(Path(sweep).name)
    queued = jobs_in_queue(folders, name)
    if queued:
        jobs = _array_ids(queued.values())
        print(f"slurm: {len(queued)} trials already queued or running (jobs {jobs}): not submitted again", file=sys.stderr)
    todo = [g for g in ([f for f in group if f not in queued] for group in folder_groups) if g]
    job_ids = submit(todo, profile, Path(sweep)) if todo else []
    if not profile.wait:
        return False
    wait_for_jobs(job_ids + list(queued.values()), folders, name)
    return True


def submit(groups: list[list[Path]], profile: SlurmProfile, sweep: Path) -> list[str]:
    """Submit one array task per group of trial folders of `sweep`; returns the job ids ("<array>_<task>")."""
    name = job_name(sweep.name)
    folder = log_folder(profile, sweep)
    _check_one_line(str(folder), "log folder")
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues, python=python_command(profile))
    except RuntimeError as err:  # 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise UserError(f"the slurm backend needs SLURM's commands (sbatch, srun, squeue, scontrol) on PATH ({err})") from None
    executor.update_parameters(**sbatch_parameters(profile, sweep.name))
    size = profile.max_array_size or cluster_max_array_size()
    job = TrialJob(profile.max_requeues, profile.max_attempts, fuse=profile.fuse > 1)
    ids: list[str] = []
    arrays: list[str] = []
    trials = 0
    for chunk in chunked(groups, size):
        try:
            jobs = executor.map_array(job, [[str(f) for f in group] for group in chunk])
        except FailedJobError as err:
            done = f"; already submitted: {', '.join(arrays)} (cancel with scancel)" if arrays else ""
            raise UserError(f"sbatch refused the jobs: {_last_line(str(err))}{done}") from None
        for group, j in zip(chunk, jobs):
            for trial in group:
                write_json({"job_id": j.job_id, "job_name": name, "submitted": now(), "log_folder": str(j.paths.folder)}, trial / SUBMITTED)
            ids.append(j.job_id)
        n = sum(len(g) for g in chunk)
        trials += n
        arrays.append(f"{jobs[0].job_id.split('_')[0]} ({n} trial{'s' if n > 1 else ''} in {len(jobs)} task{'s' if len(jobs) > 1 else ''})")
    print(
        f"slurm: submitted {trials} trials as {len(arrays)} job array(s): {', '.join(arrays)}; "
        f"logs in {folder}; cancel with: scancel {' '.join(a.split()[0] for a in arrays)}",
        file=sys.stderr,
    )
    return ids


def jobs_in_queue(folders: list[Path], name: str) -> dict[Path, str]:
    """The trials whose recorded job is still pending or running (so it need not be submitted again)."""
    recorded: dict[Path, str] = {}
    for f in folders:
        try:
            rec = read_json(f / SUBMITTED)
        except (OSError, ValueError):
            continue
        if rec.get("job_name") == name and isinstance(rec.get("job_id"), str):
            recorded[f] = rec["job_id"]
    if not recorded:
        return {}
    live = squeue(recorded.values())
    # Job ids are reused after a controller's state is wiped: the name must match too.
    return {f: jid for f, jid in recorded.items() if live.get(jid) == name}


def squeue(job_ids: Any) -> dict[str, str]:
    """{job id: job name} of those of `job_ids` still in the queue (pending, running, completing)."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--jobs", ",".join(arrays), "--format", "%i %j"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"squeue failed ({err}); is SLURM reachable from here?") from None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every job has left the queue (and the controller forgot them)
            return {}
        raise UserError(f"squeue failed: {_last_line(out.stderr)}")
    live = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    return {j: live[j] for j in map(str, job_ids) if j in live}


def wait_for_jobs(job_ids: list[str], folders: list[Path], name: str, poll_s: float = 2.0) -> None:
    """Block until none of `job_ids` is in the queue; show progress from the trial folders."""
    progress = Progress(len(folders), "slurm")
    shown: tuple[int, ...] | None = None
    start, failures = time.monotonic(), 0
    try:
        while True:
            try:
                live = squeue(job_ids)
                failures = 0
            except UserError as err:  # the controller may be restarting: keep waiting
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    print(f"slurm: {err}; still waiting", file=sys.stderr)
                live = dict.fromkeys(job_ids, name)
            states = [read_state(f) for f in folders]
            counts = _counts(states) + (len(live),)
            if counts != shown:
                progress.update(counts[0], counts[1], counts[2], f"{len(live)} jobs in the queue")
                shown = counts
            if not live:
                return
            # Poll gently on big clusters: every 2 s for a minute, then every 10 s, then 30 s.
            waited = time.monotonic() - start
            time.sleep(poll_s if waited < 60 else 10 if waited < 600 else 30)
    except KeyboardInterrupt:
        print(f"\nslurm: the jobs keep running; follow with orchestrator.status, cancel with: scancel --name={name}", file=sys.stderr)
        raise


def _counts(states: list[TrialState]) -> tuple[int, int, int]:
    return (
        sum(s.state == "done" for s in states),
        sum(s.state == "failed" for s in states),
        sum(s.state == "running" for s in states),
    )


def _array_ids(ids: Any) -> str:
    arrays = sorted({str(j).split("_")[0] for j in ids}, key=int)
    return ", ".join(arrays)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# ---- job side --------------------------------------------------------------------------------------
class TrialFailed(RuntimeError):
    """The trial ended failed (its status.json says why); raised so SLURM marks the job FAILED."""


class _Stopped(BaseException):
    """Raised by the SIGTERM handler; BaseException so that nothing on the way swallows it."""


def _slurm_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "unknown")


def _limit_threads() -> None:
    """Use the CPUs SLURM gave the task, not every core of the node (unless OMP_NUM_THREADS says)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))


class TrialJob(submitit.helpers.Checkpointable):
    """What an array task runs: `TrialJob(...)(group of trial folders)`; requeued by submitit via `checkpoint`."""

    def __init__(self, max_requeues: int, max_attempts: int, fuse: bool = True) -> None:
        self.max_requeues = max_requeues
        self.max_attempts = max_attempts
        self.fuse = fuse
        self._reset()

    def _reset(self) -> None:
        self._why: str | None = None  # why this run is stopping: requeued | cap | finished | sigterm
        self._message = ""
        self._in_trial = False  # run_group raised out of the middle of training
        self._job_id = _slurm_job_id()

    def __getstate__(self) -> dict[str, Any]:  # pickled in a signal handler: keep only the settings
        return {"max_requeues": self.max_requeues, "max_attempts": self.max_attempts, "fuse": self.fuse}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self, folders: list[str] | str) -> str:
        group = _group(folders)
        self._reset()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)  # replaces submitit's "bypass"
        _limit_threads()
        try:
            return self._run(group)
        except BaseException:
            if self._why is None:
                raise
            return self._stop(group)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self, group: list[Path]) -> str:
        todo = [t for t in group if self._count_start(t) is None]
        tries = 0
        while todo:
            self._in_trial = True
            try:
                states = run_group([load_spec(t) for t in todo], todo, fuse=self.fuse)
            except Exception as err:  # noqa: BLE001 - recorded in every member's status.json by run_group
                if self._why is not None:
                    raise
                traceback.print_exc()
                tries += 1
                self._in_trial = False
                todo = [t for t in todo if read_state(t).runnable(self.max_attempts)]
                if not isinstance(err, UserError) and tries < self.max_attempts and todo:
                    continue  # resumes from the checkpoints, like the local backend
                raise TrialFailed(_failures(group) or f"{err}") from err
            self._in_trial = False
            for t, state in zip(todo, states):
                print(f"{t.name}: {'leaving it to the process that holds it' if state == 'busy' else state}", flush=True)
            break
        failed = _failures(group)
        if failed:
            raise TrialFailed(failed)
        return "done"

    def _count_start(self, trial: Path) -> str | None:
        """Record this start in the trial's requeues.json; a final state if the trial must not run."""
        try:
            with TrialLock(trial):
                status = read_status(trial)
                if is_final(status):
                    print(f"{trial.name}: already {status['state']}; nothing to do", flush=True)
                    return str(status["state"])
                previous = _read_requeues(trial)
                same_job = previous.get("job_id") == self._job_id
                requeues = max(int(previous.get("requeues", 0)) + 1 if same_job else 0, int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0))
                record = {"job_id": self._job_id, "requeues": requeues, "max_requeues": self.max_requeues, "started": now()}
                write_json(record, trial / REQUEUES)
                epoch = status.get("epoch")
                print(
                    f"{trial.name}: job {self._job_id} on {os.uname().nodename}, requeues so far {requeues} (max {self.max_requeues}), "
                    + ("starting" if epoch is None else f"resuming after epoch {epoch}"),
                    flush=True,
                )
                if requeues > self.max_requeues:
                    self._fail(trial, status, f"requeued {requeues} times (time limit / preemption); max_requeues is {self.max_requeues}")
                    return "failed"
        except TrialBusy as err:
            print(f"{trial.name}: {err}; leaving it to that process", flush=True)
            return "busy"
        return None

    def checkpoint(self, folders: list[str] | str) -> Any:
        """Called by submitit on USR2 (time limit ahead), in the middle of training.

        Returns the resubmission (the job is requeued and its group resumes from the trial
        folders), or None so that submitit does not requeue: every member is over, or the
        requeues are used up.
        """
        open_ = [t for t in _group(folders) if not is_final(read_status(t))]
        if not open_:
            self._why = "finished"
            return None
        requeues = max(int(r.get("requeues", 0)) if (r := _read_requeues(t)).get("job_id") == self._job_id else 0 for t in open_)
        if requeues >= self.max_requeues:
            self._why = "cap"
            self._message = (
                f"requeued {requeues} times (time limit / preemption) and hit the time limit again; max_requeues is {self.max_requeues}"
            )
            return None
        self._why, self._message = "requeued", "time limit: requeued"
        print(f"{', '.join(t.name for t in open_)}: time limit ahead; requeueing job {self._job_id}", flush=True)
        return submitit.helpers.DelayedSubmission(self, folders)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._why is not None:  # already stopping (our own requeue is followed by SIGTERM)
            return
        self._why, self._message = "sigterm", "SIGTERM (preempted, requeued or cancelled)"
        raise _Stopped(self._message)

    def _stop(self, group: list[Path]) -> str:
        """After a requeue, SIGTERM or refused requeue: leave every member's status.json true, then exit."""
        if self._why == "finished":  # every member ended before the time limit: report them as _run would
            failed = _failures(group)
            if failed:
                raise TrialFailed(failed)
            return "done"
        for trial in group:
            try:
                with TrialLock(trial):
                    status = read_status(trial)
                    if self._why == "cap":
                        self._fail(trial, status, self._message)
                    elif self._in_trial and status["state"] in ("running", "failed", "interrupted") and status.get("retryable", True):
                        # run_group recorded the stop as interrupted (or, for our SIGTERM exception, as a
                        # failure, which it is not): say why and by which job.
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
    def _fail(trial: Path, status: dict[str, Any], message: str) -> None:
        if is_final(status):
            return
        status.update(state="failed", error=message, error_kind="requeues", retryable=True, ended=now())
        write_status(trial, status)


def _group(folders: list[str] | str) -> list[Path]:
    """The task's trial folders (a plain string: one trial, as jobs submitted before groups)."""
    return [Path(folders)] if isinstance(folders, str) else [Path(f) for f in folders]


def _failures(group: list[Path]) -> str:
    """'trial X failed: why; ...' for the members that ended failed; '' if none did."""
    return "; ".join(f"trial {t.name} failed: {st.get('error')}" for t in group if (st := read_status(t))["state"] == "failed")


def _read_requeues(trial: Path) -> dict[str, Any]:
    try:
        return read_json(trial / REQUEUES)
    except (OSError, ValueError):
        return {}


__all__ = ["run_slurm", "render_sbatch", "TrialJob", "submit", "wait_for_jobs", "cluster_max_array_size"]
