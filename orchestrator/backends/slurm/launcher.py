"""The SLURM launcher: submit groups of trial folders as submitit job arrays, follow them, never twice.

    python -m orchestrator.sweep --grid grids/digits.yaml --cluster cluster_configs/slurm/<site>.yaml

- The groups go out as job arrays of at most the cluster's MaxArraySize tasks (read from
  `scontrol show config` unless the profile sets `max_array_size`), at most `array_parallelism`
  running at once. The sbatch script carries the profile's resources and the job name
  `sweep-<sweep name>` only (orchestrator.backends.slurm.sbatch); each task gets its group's
  trial folders through submitit's pickle, and the trials' settings are read from their
  spec.json: no grid value ever reaches a shell. What a task does on its node: job.py.
- Each trial folder gets `slurm_job.json` (its group's job id); running the sweep again does
  not submit a trial whose job is still queued or running.
- `wait: true` polls `squeue` until every job has left the queue, then the trial folders say how
  it went (no `sacct` needed: without accounting submitit reads every job state as UNKNOWN).
  `wait: false` prints the job ids and returns; `orchestrator.status` reads the same folders.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError
from submitit.slurm.slurm import _make_sbatch_string

from orchestrator.backends import Launch
from orchestrator.backends.slurm.job import TrialJob
from orchestrator.backends.slurm.sbatch import chunked, job_name, parse_max_array_size, sbatch_parameters
from orchestrator.plan import Plan
from orchestrator.profiles import SlurmProfile
from orchestrator.progress import Progress
from trainer.errors import UserError
from trainer.provenance import now
from trainer.results import read_json, write_json
from trainer.status import observe

SUBMITTED = "slurm_job.json"  # written only by launchers


class SlurmBackend:
    def __init__(self, profile: SlurmProfile) -> None:
        self.profile = profile

    def preflight(self, plan: Plan) -> None:
        preflight(self.profile)

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        """The sbatch script of the first job array, exactly as it would be submitted."""
        size = self.profile.max_array_size or 1001
        n = min(len(groups), size)
        script = render_sbatch(self.profile, Path(sweep).name, log_folder(self.profile, Path(sweep)), n)
        return f"sbatch script of the first job array ({n} tasks):\n{script}"

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        waited = run_slurm(groups, self.profile, sweep)
        return Launch(waited=waited, note="" if waited else f"submitted; follow with: python -m orchestrator.status {sweep}")


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
    """Submit the groups of trial folders; True if it also waited for every job to end."""
    folder_groups = [[Path(f).absolute() for f in g] for g in groups]
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
    shown: tuple[str, ...] | None = None
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
            states = [observe(f) for f in folders]
            counts = tuple(sorted(s.state for s in states)) + (str(len(live)),)
            if counts != shown:
                progress.show(states, sum(s.state == "running" for s in states), f"{len(live)} jobs in the queue")
                shown = counts
            if not live:
                return
            # Poll gently on big clusters: every 2 s for a minute, then every 10 s, then 30 s.
            waited = time.monotonic() - start
            time.sleep(poll_s if waited < 60 else 10 if waited < 600 else 30)
    except KeyboardInterrupt:
        print(f"\nslurm: the jobs keep running; follow with orchestrator.status, cancel with: scancel --name={name}", file=sys.stderr)
        raise


def _array_ids(ids: Any) -> str:
    arrays = sorted({str(j).split("_")[0] for j in ids}, key=int)
    return ", ".join(arrays)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
