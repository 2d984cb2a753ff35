"""The SLURM launcher: submit groups of trial folders as submitit job arrays, follow them, never twice.

    python -m orchestrator.sweep --grid grids/digits.yaml --cluster cluster_configs/slurm/<site>.yaml

- Tasks: a task holds `groups_per_task` groups (one per GPU of `gpus_per_task` / `gres`; one on
  a CPU-only or one-GPU task) and trains them side by side (job.py). The sbatch script carries
  the profile's resources and the job name `sweep-<sweep name>` only (sbatch.py); each task
  gets its groups' trial folders through submitit's pickle, and the trials' settings are read
  from their spec.json: no grid value ever reaches a shell.
- Arrays and the sweep-wide throttle: tasks go out as job arrays of at most the cluster's
  MaxArraySize (read from `scontrol show config` unless the profile sets `max_array_size`), each
  with `%N` (N = max_running_tasks, or max_gpus / GPUs per task), and each array waits for the
  previous one and for every job of the sweep already queued (`--dependency=afterany:...`: its
  job name, and its sbatch script in the sweep's log folder, so that the same grid run into
  another results folder is another sweep), so at most N tasks of the sweep run at once however
  many arrays and launches it takes.
- Submit limits: when sbatch refuses for a per-user / QOS / association submit limit, or because
  the controller holds MaxJobCount jobs (everyone's), the launcher submits the largest array that
  fits (halving, then bisecting); with `wait: true` it tops the queue up as tasks leave until
  every task is submitted (a try every TOPUP_EVERY_S besides; it stops waiting after
  TOPUP_TRIES_WITHOUT_ROOM fruitless ones in a row while none of the sweep's jobs is queued);
  without, it says how many trials are left and that running the command again tops up.
  sbatch's own retries on a full controller (two minutes per refused array) are cut short by
  sbatch_once.py.
- Held until its log folders exist: submitit makes each task's log folder (`%A_%a`) only after
  sbatch has answered, and a task that starts before its folder exists fails to launch. So every
  array is submitted with `--hold` and released (`scontrol release`) once submitit has returned;
  a held array that a killed launcher left unreleased is cancelled by the next launch (queue.unreleased).
- Each trial folder gets `slurm_job.json` (its task's job id, log folder and stderr path);
  running the sweep again does not submit a trial whose job is still queued or running, and
  first records the outcome of jobs that left the queue without one (queue.settle): a trial
  whose job failed before it started is `failed` with the job's stderr line and counts an attempt.
- `wait: true` polls `squeue` until every job has left the queue, then settles them as above
  and prints each failure; `wait: false` prints the job ids and returns; `orchestrator.status`
  reads (and settles) the same folders.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, JobPaths
from submitit.slurm.slurm import _make_sbatch_string

from orchestrator.backends import Launch
from orchestrator.backends.slurm import partition
from orchestrator.backends.slurm.job import SUBMITIT_MAX_TIMEOUTS, TrialJob
from orchestrator.backends.slurm.queue import (
    SUBMITTED,
    job_views,
    last_line,
    queue_info,
    settle,
    squeue,
    stuck,
    stuck_lines,
    summarize,
    sweep_arrays,
    unreleased,
)
from orchestrator.backends.slurm.sbatch import (
    SLURM_DEFAULT_MAX_ARRAY_SIZE,
    chunked,
    job_name,
    parse_max_array_size,
    parse_min_job_age,
    sbatch_parameters,
    submit_refusal,
)
from orchestrator.backends.slurm.sbatch_once import GONE, cancel_orphans, scancel
from orchestrator.backends.slurm.submit_lock import submitting
from orchestrator.cancel import CANCEL
from orchestrator.plan import Plan
from orchestrator.profiles import SlurmProfile
from orchestrator.progress import Progress
from trainer import faults
from trainer.errors import ProfileError, UserError
from trainer.provenance import now
from trainer.results import write_json
from trainer.status import observe

Task = list[list[Path]]  # the groups of one array task
# With `wait: true`, a try every TOPUP_EVERY_S besides those that follow our jobs out of the queue
# (room may come from other jobs); after TOPUP_TRIES_WITHOUT_ROOM in a row find none while none of
# the sweep's jobs is in the queue (so none of ours can leave and make room), the launcher stops waiting.
TOPUP_EVERY_S = 60
TOPUP_TRIES_WITHOUT_ROOM = 10

__all__ = ["SUBMITTED", "SlurmBackend", "render_sbatch", "squeue", "submit"]


class SlurmBackend:
    def __init__(self, profile: SlurmProfile) -> None:
        self.profile = profile

    def preflight(self, plan: Plan) -> None:
        preflight(self.profile)
        if self.profile.array_parallelism is not None:
            print(
                f"slurm: profile key 'array_parallelism' is now sweep-wide (at most {self.profile.array_parallelism} tasks of the "
                "sweep at once, across its arrays); rename it to max_running_tasks",
                file=sys.stderr,
            )

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        """How the groups would go out (tasks, arrays, throttle) and the first array's sbatch script."""
        p = self.profile
        size, source = _known_max_array_size(p)
        tasks = chunked(groups, p.groups_per_task)
        arrays = chunked(tasks, size)
        n = len(arrays[0]) if arrays else 0
        gpus = p.gpus_per_task_
        script = render_sbatch(p, Path(sweep), log_folder(p, Path(sweep)), n)
        held = f"{p.running_tasks} tasks" + (f" ({p.running_tasks * gpus} GPUs)" if gpus else "")
        return (
            f"slurm: {len(groups)} groups in {len(tasks)} tasks ({p.groups_per_task} group(s) per task"
            + (f", one per GPU, {gpus} GPU(s) per task" if gpus else "")
            + f"), {len(arrays)} job array(s) of at most {size} tasks ({source}); at most {held} of the sweep at once, "
            f"later arrays chained with --dependency=afterany; each submitted held (--hold) and released once submitit has made "
            f"its tasks' log folders\n"
            f"sbatch script of the first job array ({n} tasks):\n{script}"
        )

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        waited, left = run_slurm(groups, self.profile, sweep)
        note = "" if waited and not left else f"submitted; follow with: python -m orchestrator.status {sweep}"
        # Trials still unsubmitted after a wait: the launch is not finished (exit 3, like without wait).
        return Launch(waited=waited and not left, note=note, unsubmitted=left)


# ---- the sbatch script ----------------------------------------------------------------------------
def log_folder(profile: SlurmProfile, sweep: Path) -> Path:
    """submitit's folder (pickles, logs, scripts); `%j` becomes each job's id."""
    folder = Path(profile.log_dir) if profile.log_dir else sweep / "slurm" / "%j"
    return folder.absolute()


def python_command(profile: SlurmProfile) -> str:
    """The interpreter the jobs run: the profile's (a shell word or command), else the launcher's."""
    return profile.python if profile.python is not None else shlex.quote(sys.executable)


def render_sbatch(
    profile: SlurmProfile, sweep: str | Path, folder: Path, n_tasks: int, python: str | None = None, dependency: str | None = None
) -> str:
    """The sbatch script submitit writes for an array of `n_tasks` tasks (a plain job for one).

    Pure: the same text as the submitted `*_submission.sh`, for review and the golden-file tests.
    """
    _check_one_line(str(folder), "log folder")
    command = " ".join([python or python_command(profile), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    map_count = n_tasks if n_tasks > 1 else None
    params = sbatch_parameters(profile, sweep)
    if dependency:
        params["dependency"] = dependency
    return _make_sbatch_string(command=command, folder=folder, map_count=map_count, **params)


def _check_one_line(value: str, what: str) -> None:
    # A newline would end an `#SBATCH` comment line and turn the rest into a shell command.
    if "\n" in value or "\r" in value:
        raise UserError(f"{what} {value!r} contains a line break; it goes into an sbatch script")


def cluster_max_array_size(timeout_s: float = 60) -> int:
    """MaxArraySize of the cluster, from `scontrol show config`."""
    return parse_max_array_size(_cluster_config(timeout_s))


def cluster_min_job_age() -> int:
    """MinJobAge of the cluster (SLURM's default when `scontrol show config` does not answer: it only times top-ups)."""
    try:
        return parse_min_job_age(_cluster_config(30))
    except UserError:
        return parse_min_job_age("")


def _cluster_config(timeout_s: float) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"cannot ask SLURM for MaxArraySize (`scontrol show config`: {err}); set max_array_size in the profile") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`scontrol show config` failed ({why}); is SLURM up and SLURM_CONF right? or set max_array_size in the profile")
    return out.stdout


def _known_max_array_size(profile: SlurmProfile) -> tuple[int, str]:
    """For --dry-run: the profile's, else the cluster's when SLURM answers here, else SLURM's default."""
    if profile.max_array_size:
        return profile.max_array_size, "the profile's max_array_size"
    if shutil.which("scontrol"):
        try:
            return cluster_max_array_size(timeout_s=10), "the cluster's MaxArraySize"
        except UserError:
            pass
    return SLURM_DEFAULT_MAX_ARRAY_SIZE, "SLURM's default MaxArraySize: no cluster answered here; set max_array_size"


# ---- launcher ------------------------------------------------------------------------------------
def preflight(profile: SlurmProfile) -> None:
    """Cheap checks before any trial folder is written: SLURM's commands, the controller, the partition and its limits."""
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UserError(f"the slurm backend needs SLURM's commands on PATH; missing: {', '.join(missing)}")
    # The profile's partition, or every partition to find the default one: one controller call either way.
    try:
        which = [profile.partition] if profile.partition is not None else []
        out = subprocess.run(["scontrol", "show", "partition", *which], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UserError("`scontrol show partition` timed out; is the SLURM controller up?") from None
    if out.returncode != 0 and profile.partition is not None:
        raise ProfileError(f"partition '{profile.partition}': {last_line(out.stderr or out.stdout)} (see `sinfo -s`)")
    part = partition.pick(partition.records(out.stdout), profile.partition) if out.returncode == 0 else None
    if part is not None and (why := partition.refusal(part, profile)):
        raise ProfileError(why)
    _test_submit(profile)


# What `sbatch --test-only` says of a setting no job of the profile could ever be submitted with, and
# the profile key that holds it. Only these: its other refusals are not final (all nodes drained or
# down: "Requested node configuration is not available", while a real submission queues and waits).
_REFUSED_KEYS = (
    ("Requested reservation is invalid", ("reservation",), "a reservation of this cluster (`scontrol show reservation`)"),
    ("Invalid feature specification", ("constraint",), "features the partition's nodes have (`sinfo -o '%P %f'`)"),
    ("Invalid account", ("account", "partition"), "an account you may use on that partition (`sacctmgr show assoc user=$USER`)"),
    ("Invalid qos", ("qos", "account"), "a QOS of your association (`sacctmgr show assoc user=$USER format=account,qos`)"),
    ("Invalid generic resource", ("gres", "gpus_per_task", "gpus_per_trial"), "GPUs the partition's nodes have (`sinfo -o '%P %G'`)"),
    ("Requested time limit is invalid", ("time_min", "partition"), "at most the partition's MaxTime (`sinfo -o '%P %l'`)"),
)


_SITE_NAMES = ("reservation", "constraint", "account", "qos", "gres")  # settings that name the site's own objects


def _test_submit(profile: SlurmProfile) -> None:
    """Ask the controller (`sbatch --test-only`: nothing is queued) whether the profile's sbatch script
    could be submitted at all, so a misspelt reservation or feature is one line before anything is written.

    Only for a profile that names such objects of the site (_SITE_NAMES): the other settings are
    checked by the profile itself, and a site's sbatch wrapper (accounting, quotas) then sees no
    call that is not a submission. The script goes as a file, the last argument, as for a submission.
    """
    if not any(getattr(profile, key) for key in _SITE_NAMES):
        return
    scratch = Path(tempfile.gettempdir())
    script = render_sbatch(profile, scratch / "preflight", scratch / "sweep-preflight" / "%j", 1)
    try:
        with tempfile.NamedTemporaryFile("w", prefix="sweep-preflight-", suffix=".sh") as file:
            file.write(script)
            file.flush()
            out = subprocess.run(["sbatch", "--test-only", file.name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return  # the submission itself will say what is wrong
    if out.returncode == 0:
        return
    said = last_line(out.stderr or out.stdout).removeprefix("allocation failure: ").removeprefix("sbatch: error: ")
    for words, keys, allowed in _REFUSED_KEYS:
        if words in said:
            given = {k: v for k in keys if (v := getattr(profile, k, None)) not in (None, 0)}
            if not given:
                raise ProfileError(f"SLURM refuses the cluster's default {keys[0]} ({said}); set key '{keys[0]}': {allowed}")
            if len(given) == 1:
                ((key, value),) = given.items()
                raise ProfileError(f"key '{key}' is {value!r}: SLURM refuses it ({said}); allowed: {allowed}")
            both = " and ".join(f"'{k}' ({v!r})" for k, v in given.items())
            raise ProfileError(f"keys {both}: SLURM refuses them ({said}); allowed: {allowed}")


def run_slurm(groups: list[list[Path]], profile: SlurmProfile, sweep: Path) -> tuple[bool, int]:
    """Submit the groups of trial folders; (True if it also waited for every job to end, trials left unsubmitted)."""
    folder_groups = [[Path(f).absolute() for f in g] for g in groups]
    folders = [f for g in folder_groups for f in g]
    name = job_name(Path(sweep))
    submitter = Submitter(profile, Path(sweep))
    with submitting(sweep):  # what is unsubmitted is read and submitted by one launcher at a time
        views = job_views(folders)
        for line in summarize(settle(folders, views)):  # jobs that left without a word since the last look
            print(f"slurm: {line}", file=sys.stderr)
        queued = {f: v.job_id for f, v in views.items() if v.queue_state is not None}
        if queued:
            jobs = _array_ids(queued.values())
            print(f"slurm: {len(queued)} trials already queued or running (jobs {jobs}): not submitted again", file=sys.stderr)
        # A trial whose job just turned out to have failed runs again only while it has attempts left.
        runnable = _keep(folder_groups, lambda f: f not in queued and observe(f).runnable(profile.max_attempts))
        tasks = chunked(runnable, profile.groups_per_task)
        if tasks and submitter.cancelled(tasks):
            tasks = []
        left = submitter.submit(tasks) if tasks else []
    if left and not profile.wait:
        print(
            f"slurm: {_trials(left)} trials ({len(left)} tasks) not submitted: {submitter.limit_words()} "
            f"({submitter.refusal}); run the same command again later to top up (it submits only what is neither done nor queued)",
            file=sys.stderr,
        )
    if not profile.wait:
        return False, _trials(left)
    left = wait_for_jobs(submitter, left, folders, name, list(queued.values()))
    settle(folders)  # what the jobs could not record themselves; printed with every failure below
    _print_failures(folders)
    return True, _trials(left)


def _keep(groups: list[list[Path]], ok: Callable[[Path], bool]) -> list[list[Path]]:
    """The trials of `groups` that are `ok`, in their groups; groups left empty go."""
    return [g for g in ([f for f in group if ok(f)] for group in groups) if g]


def _trials(tasks: list[Task]) -> int:
    return sum(len(g) for t in tasks for g in t)


def submit(groups: list[list[Path]], profile: SlurmProfile, sweep: Path) -> list[str]:
    """Submit the groups of trial folders of `sweep` (tasks of `groups_per_task` groups); returns the job ids.

    Raises UserError if a submit limit leaves some unsubmitted (callers that can top up use Submitter).
    """
    submitter = Submitter(profile, Path(sweep))
    with submitting(sweep):
        left = submitter.submit(chunked([[Path(f).absolute() for f in g] for g in groups], profile.groups_per_task))
    if left:
        raise UserError(f"sbatch refused {len(left)} tasks: {submitter.limit_words()}: {submitter.refusal}")
    return submitter.job_ids


class Submitter:
    """Submits tasks as chained, throttled job arrays, as many as the cluster's submit limits take."""

    def __init__(self, profile: SlurmProfile, sweep: Path) -> None:
        self.profile, self.sweep = profile, sweep
        self.name = job_name(sweep)
        self.folder = log_folder(profile, sweep)
        _check_one_line(str(self.folder), "log folder")
        self.scripts = JobPaths.get_first_id_independent_folder(self.folder)  # where submitit writes the sbatch scripts
        try:
            python = python_command(profile)
            self.executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=SUBMITIT_MAX_TIMEOUTS, python=python)
        except RuntimeError as err:  # 'Could not detect "srun", are you indeed on a slurm cluster?'
            raise UserError(f"the slurm backend needs SLURM's commands (sbatch, srun, squeue, scontrol) on PATH ({err})") from None
        self.params = sbatch_parameters(profile, sweep)
        self.size = profile.max_array_size or cluster_max_array_size()
        self.job = TrialJob(profile.max_requeues, profile.max_attempts, fused=profile.fuse > 1)
        self.job_ids: list[str] = []
        self.arrays: list[str] = []  # submitted by this launcher, in order: the chain
        self.refusal = ""  # sbatch's message when a submit limit stopped the last submission
        self.kind = ""  # its kind (sbatch.submit_refusal): 'full' for MaxJobCount, else a submit limit
        self.waiting = False  # the last submission left tasks waiting for room
        self.queued: list[str] = []  # the sweep's arrays in the queue: squeue's answer when submit began, then ours

    def submit(self, tasks: list[Task]) -> list[Task]:
        """Submit as many of `tasks` as the cluster takes, in order; returns those left over."""
        left = list(tasks)
        before = len(self.arrays)
        # One squeue per call, not per array (at 900 arrays that was 900 squeue processes, most of the
        # launcher's CPU); an array that leaves the queue meanwhile stays listed, and SLURM takes
        # afterany on a job that ended, even one it has forgotten, as met.
        queued = sweep_arrays(self.name, self.scripts)
        orphans = unreleased(queued, self.scripts, self.sweep / "trials")
        if orphans:
            # Dropped from the chain below either way: one that could not be cancelled holds nothing back then.
            error = scancel(orphans)
            done = f"could not cancel ({error}; cancel with: scancel {' '.join(orphans)})" if error else "cancelled"
            print(f"slurm: {done} job array {', '.join(orphans)}: held since a launch that stopped before releasing it "
                  "(no trial records it)", file=sys.stderr)  # fmt: skip
        self.queued = [q.array for q in queued if q.array not in orphans]
        while left:
            n = min(len(left), self.size)
            taken = self._largest_that_fits(left[:n])
            if taken == 0:
                break
            left = left[taken:]
            if taken < n:  # the limit is reached: the rest waits for room
                break
        new = self.arrays[before:]
        if new:
            trials = _trials(tasks[: len(tasks) - len(left)])
            print(
                f"slurm: submitted {trials} trials as {len(new)} job array(s): {', '.join(new)}; logs in {self.folder}; "
                f"at most {self.profile.running_tasks} tasks of the sweep at once; cancel with: python -m orchestrator.cancel {self.sweep}",
                file=sys.stderr,
            )
        if left and self.profile.wait and (new or not self.waiting):  # a wait begins: say it once, not at every fruitless try
            print(
                f"slurm: {_trials(left)} trials ({len(left)} tasks) wait in the launcher: {self.limit_words()} ({self.refusal}); "
                f"they go out as the sweep's jobs leave the queue (and at a try every {TOPUP_EVERY_S} s)",
                file=sys.stderr,
            )
        self.waiting = bool(left)
        return left

    def top_up(self, left: list[Task]) -> list[Task]:
        """A later round of `wait: true`: submit what of `left` is still unsubmitted; returns what is left then.

        Under the sweep's submit lock, like the first round. Meanwhile another launcher of the sweep
        may have submitted some of these trials, or their jobs run them: those are dropped. After
        `orchestrator.cancel` nothing more goes out.
        """
        with submitting(self.sweep):
            if self.cancelled(left):
                return []
            views = job_views(f for t in left for g in t for f in g)
            ok = lambda f: (f not in views or views[f].queue_state is None) and observe(f).runnable(self.profile.max_attempts)
            still = [t for t in (_keep(task, ok) for task in left) if t]
            if _trials(still) < _trials(left):
                print(f"slurm: {_trials(left) - _trials(still)} of the trials waiting for room were submitted or run by another "
                      "launcher meanwhile: not submitted again", file=sys.stderr)  # fmt: skip
            return self.submit(still) if still else []

    def cancelled(self, tasks: list[Task]) -> bool:
        """Has `orchestrator.cancel` asked (since this launch began) that nothing more goes out? Says so if it has."""
        if not (self.sweep / CANCEL).exists():
            return False
        print(f"slurm: the sweep was cancelled (orchestrator.cancel); {_trials(tasks)} trials not submitted", file=sys.stderr)
        return True

    def limit_words(self) -> str:
        """What stopped the last submission, for the user."""
        if self.kind == "full":
            return "the SLURM controller is full (MaxJobCount: it takes no more jobs, anyone's, until some leave)"
        return "the cluster's submit limit is reached"

    def _largest_that_fits(self, tasks: list[Task]) -> int:
        """Submit the longest prefix of `tasks` that sbatch accepts (one array, or a few when a limit
        cuts it); returns how many tasks went out, 0 if not even one fits.

        A submit limit caps the tasks queued at once at some room R: halve until an array fits
        (k <= R < 2k), then bisect the rest of the room, each accepted try an array of its own.
        """
        n = len(tasks)
        if self._try(tasks):
            return n
        fits, refused = n // 2, n  # `refused` tasks in all were too many
        while fits >= 1 and not self._try(tasks[:fits]):
            refused, fits = fits, fits // 2
        if fits == 0:
            return 0
        while refused - fits > 1:
            mid = (fits + refused) // 2
            if self._try(tasks[fits:mid]):
                fits = mid
            else:
                refused = mid
        return fits

    def _try(self, tasks: list[Task]) -> bool:
        """One sbatch of `tasks` as an array; False if a submit limit refused it (UserError for any other refusal)."""
        # Always set (None: no dependency): the executor keeps parameters from one submission to the next.
        self.executor.update_parameters(**self.params, dependency=self._dependency())
        payloads = [[[str(f) for f in group] for group in task] for task in tasks]
        try:
            with _quiet_submitit(self.folder), _sbatch_once():  # submitit prints every refusal; the launcher says it once
                jobs = self.executor.map_array(self.job, payloads)
        except OSError as err:  # after sbatch took the array, or before: either way nothing of it runs (see _quiet_submitit)
            raise UserError(f"cannot write submitit's files in {self.folder}: {err}{already_submitted(self.arrays)}") from None
        except FailedJobError as err:
            kind = submit_refusal(str(err))
            if kind is None:
                raise UserError(f"sbatch refused the jobs: {last_line(str(err))}{already_submitted(self.arrays)}") from None
            # (Not for 'full': the controller may be full of other users' jobs; room comes as they leave.)
            if kind == "maybe" and len(tasks) == 1 and not sweep_arrays(self.name, self.scripts):
                # Not one task fits while none of ours is queued: a size or time limit, not a count.
                why = last_line(str(err))
                raise UserError(f"sbatch refused even one task: {why} (check time_min, GPUs and memory against the QOS)") from None
            lines = str(err).strip().splitlines()[-1 if kind == "full" else -2 :]  # 'full': the first says "retrying"
            self.refusal = " ".join(line.removeprefix("sbatch: error: ") for line in lines)
            self.kind = kind
            return False
        array = jobs[0].job_id.split("_")[0]
        faults.point("slurm-release")
        # Cancelled while held (see unreleased): recorded as cancelled, so its trials use no attempt.
        cancelled = {} if release(array, self.arrays) else {"cancelled": now()}
        for task, j in zip(tasks, jobs):
            record = {
                "job_id": j.job_id, "job_name": self.name, "submitted": now(),
                "log_folder": str(j.paths.folder), "stderr": str(j.paths.stderr), **cancelled,
            }  # fmt: skip
            for group in task:
                for trial in group:
                    write_json(record, trial / SUBMITTED)
            self.job_ids.append(j.job_id)
        self.queued.append(array)
        n = sum(len(g) for t in tasks for g in t)
        self.arrays.append(f"{array} ({n} trial{'s' if n > 1 else ''} in {len(jobs)} task{'s' if len(jobs) > 1 else ''})")
        return True

    def _dependency(self) -> str | None:
        """afterany on every job of the sweep queued when this submit began (earlier launches) and on this launch's earlier
        arrays: the throttle holds sweep-wide."""
        return f"afterany:{':'.join(self.queued)}" if self.queued else None


RELEASE_TRIES = 3


def release(array: str, submitted: list[str], tries: int = RELEASE_TRIES) -> bool:
    """Let the held `array` run: submitit has made its tasks' log folders (see the module's docstring).

    False if it had left the queue already (cancelled while held: it never ran). A release SLURM
    keeps refusing cancels the array (held, it would sit in the queue for ever, its trials not
    yet recorded as submitted) and ends the launch with what scontrol said.
    """
    why = ""
    try:
        for attempt in range(tries):
            try:
                out = subprocess.run(["scontrol", "release", array], capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as err:
                why = str(err)
            else:
                said = last_line(out.stderr or out.stdout)
                if out.returncode == 0:
                    return True
                if any(words in said for words in GONE):
                    return False
                why = said
            if attempt + 1 < tries:
                time.sleep(1 + attempt)
    except BaseException:  # interrupted before the trials were recorded: leave no job behind
        scancel([array])
        raise
    error = scancel([array])
    cancelled = f"could not cancel it ({error}; cancel with: scancel {array})" if error else "cancelled it"
    raise UserError(
        f"job array {array} was submitted held, but `scontrol release {array}` failed {tries} times ({why}); "
        f"{cancelled}{already_submitted(submitted)}"
    )


def already_submitted(arrays: list[str]) -> str:
    """The tail of a message that ends a launch midway: what went out before, and how to take it back."""
    return f"; already submitted: {', '.join(arrays)} (cancel with: python -m orchestrator.cancel)" if arrays else ""


_SBATCH_ONCE_DIR: list[str] = []  # the folder holding the `sbatch` of _sbatch_once, made once per process ("" if it cannot run)


@contextlib.contextmanager
def _sbatch_once() -> Iterator[None]:
    """While submitit submits, `sbatch` on PATH is sbatch_once.py in front of the real one (see there why).

    submitit runs the bare command `sbatch` (its array submissions through an executor of its own
    making, so a subclass cannot change the command); PATH is the one hook it offers.
    """
    real = shutil.which("sbatch")
    if real is not None and not _SBATCH_ONCE_DIR:
        _SBATCH_ONCE_DIR.append(_write_sbatch_once(real))
    if real is None or not _SBATCH_ONCE_DIR[0]:
        yield  # no sbatch: submitit's own error names it; no wrapper: sbatch's own retries apply
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{_SBATCH_ONCE_DIR[0]}{os.pathsep}{path}"
    try:
        yield
    finally:
        os.environ["PATH"] = path


_OWN_RETRIES = "each refusal by a full controller costs sbatch's own 2 minutes of retries"


def _write_sbatch_once(real: str) -> str:
    """A temporary folder with an `sbatch` that runs sbatch_once.py in front of `real`; "" where none can run."""
    try:
        folder = tempfile.mkdtemp(prefix="sweep-sbatch-")
        atexit.register(shutil.rmtree, folder, True)
        script = Path(folder) / "sbatch"
        once = Path(__file__).with_name("sbatch_once.py")
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(once))} {shlex.quote(real)} "$@"\n')
        script.chmod(0o755)
    except OSError as err:
        print(f"slurm: cannot write a wrapper for sbatch ({err}); {_OWN_RETRIES}", file=sys.stderr)
        return ""
    if not os.access(script, os.X_OK):  # a temporary folder mounted noexec (Linux's access() says so)
        print(f"slurm: {folder} does not allow running programs; {_OWN_RETRIES}", file=sys.stderr)
        return ""
    return folder


@contextlib.contextmanager
def _quiet_submitit(folder: Path) -> Iterator[None]:
    """Silence submitit's echo of a refused sbatch, and clean up after a submission that failed.

    A refused sbatch leaves pickles and a script behind: removed. A submission that failed after
    sbatch took the job (submitit could not write its files: a full disk, a quota; or an
    interrupt) leaves that job held and unknown to the launcher, and the sweep's later arrays
    would wait on it (afterany) for ever: cancelled, found by its script.
    """
    base = JobPaths.get_first_id_independent_folder(folder)
    before = set(base.glob("*.pkl")) | set(base.glob(".submission_file_*.sh")) if base.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except FailedJobError:
        if base.is_dir():
            for leftover in (set(base.glob("*.pkl")) | set(base.glob(".submission_file_*.sh"))) - before:
                leftover.unlink(missing_ok=True)
        raise
    except BaseException:
        leftovers = (set(base.glob("*.pkl")) | set(base.glob(".submission_file_*.sh"))) - before if base.is_dir() else set()
        jobs, error = cancel_orphans([str(s) for s in leftovers])
        if jobs:
            done = f"could not cancel it ({error}; cancel with: scancel {' '.join(jobs)})" if error else "cancelled"
            print(f"slurm: job {', '.join(jobs)} went out, but its submission did not finish; {done}", file=sys.stderr)
        if not error:  # its files: nothing will run them (kept while a job could still need them)
            for leftover in leftovers:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise


def wait_for_jobs(
    submitter: Submitter, left: list[Task], folders: list[Path], name: str, queued: list[str], poll_s: float = 2.0
) -> list[Task]:
    """Block until every task is submitted and none of the jobs is in the queue; show progress from the trial folders.

    Tasks a submit limit held back go out as ours leave the queue (or every minute, in case the
    room came from other jobs). Returns the tasks still unsubmitted when it stopped waiting for
    room: after TOPUP_TRIES_WITHOUT_ROOM fruitless tries in a row with none of ours in the queue.
    """
    progress = Progress(len(folders), "slurm", folders=folders)
    with progress.ticking():  # epochs move the line between polls of the queue (which slow down to 30 s)
        return _wait(submitter, left, folders, name, queued, poll_s, progress)


def _wait(
    submitter: Submitter, left: list[Task], folders: list[Path], name: str, queued: list[str], poll_s: float, progress: Progress
) -> list[Task]:
    shown: tuple[str, ...] | None = None
    said_stuck: frozenset[str] = frozenset()  # the reasons for jobs that cannot start, said once each
    start, failures = time.monotonic(), 0
    mark, last_try = None, time.monotonic()  # our tasks in the queue when the limit last refused, and when
    idle = 0  # tries in a row that found no room while none of ours was queued
    # A full controller (MaxJobCount) frees a finished job's record MinJobAge after it ends, not when it
    # leaves squeue: a try triggered by ours leaving is repeated once then (read when first needed).
    recheck: float | None = None
    min_job_age: int | None = None
    try:
        while True:
            ids = submitter.job_ids + queued
            try:
                live = queue_info(ids)
                failures = 0
            except UserError as err:  # the controller may be restarting: keep waiting
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    print(f"slurm: {err}; still waiting", file=sys.stderr)
                live = dict.fromkeys(ids, (name, "UNKNOWN", ""))
            if left and failures == 0:
                due = recheck is not None and time.monotonic() >= recheck
                if mark is not None and (len(live) < mark or due or time.monotonic() - last_try > TOPUP_EVERY_S):
                    before, left_queue = len(left), len(live) < mark
                    left = submitter.top_up(left)
                    idle = idle + 1 if len(left) == before and not live else 0
                    mark, last_try, recheck = None, time.monotonic(), None
                    if left and left_queue and submitter.kind == "full":
                        min_job_age = cluster_min_job_age() if min_job_age is None else min_job_age
                        recheck = time.monotonic() + min_job_age + 5  # the controller purges a little after MinJobAge
                    if idle >= TOPUP_TRIES_WITHOUT_ROOM:
                        print(
                            f"slurm: stopped waiting for room: {idle} tries {TOPUP_EVERY_S} s apart found none while none of the "
                            f"sweep's jobs was queued ({submitter.limit_words()}); {_trials(left)} trials ({len(left)} tasks) "
                            "not submitted: run the same command again later to top up",
                            file=sys.stderr,
                        )
                        return left
                    continue
                if mark is None:
                    mark = len(live)
            said_stuck = _say_stuck(live, said_stuck, submitter.sweep)
            states = [observe(f) for f in folders]
            counts = (*sorted(s.state for s in states), str(len(live)), str(len(left)))
            if counts != shown:
                limit = "MaxJobCount" if submitter.kind == "full" else "submit limit"
                more = f", {_trials(left)} trials waiting for room ({limit})" if left else ""
                progress.show(states, sum(s.state == "running" for s in states), f"{len(live)} jobs in the queue{more}")
                shown = counts
            if not live and not left:
                return left
            # Poll gently on big clusters: every 2 s for a minute, then every 10 s, then 30 s.
            waited = time.monotonic() - start
            time.sleep(poll_s if waited < 60 else 10 if waited < 600 else 30)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM, SIGHUP, SIGUSR1/2 (trainer.cli)
        cancel = f"python -m orchestrator.cancel {submitter.sweep}"
        print(f"\nslurm: the jobs keep running; follow with orchestrator.status, cancel with: {cancel}", file=sys.stderr)
        raise


def _say_stuck(live: dict[str, tuple[str, str, str]], said: frozenset[str], sweep: Path) -> frozenset[str]:
    """Say once per reason that queued jobs of the sweep cannot start as they are; returns the reasons said."""
    pending = [why for _, state, why in live.values() if state == "PENDING" and why not in said]
    for line in stuck_lines(pending, "queued job(s) of the sweep"):
        print(
            f"slurm: {line}; they wait until that changes: cancel with python -m orchestrator.cancel {sweep}, change the profile, "
            "launch again",
            file=sys.stderr,
        )
    return said | {why for why in pending if stuck(why)}


def _print_failures(folders: list[Path]) -> None:
    for st in (observe(f) for f in folders):
        if st.state == "failed":
            print(f"  {st.trial_id} failed after {st.attempts} attempt(s): {st.error}", file=sys.stderr)
        elif st.state in ("interrupted", "pending"):
            why = st.status.last_interruption or "not run"
            print(f"  {st.trial_id} is {st.state}: {why}; run the sweep again to go on", file=sys.stderr)


def _array_ids(ids: Any) -> str:
    arrays = sorted({str(j).split("_")[0] for j in ids}, key=int)
    return ", ".join(arrays)
