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

import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, JobPaths

from orchestrator.backends import Launch
from orchestrator.backends.slurm import sbatch_once
from orchestrator.backends.slurm.cluster import cluster_max_array_size, known_max_array_size
from orchestrator.backends.slurm.job import SUBMITIT_MAX_TIMEOUTS, TrialJob
from orchestrator.backends.slurm.preflight import preflight
from orchestrator.backends.slurm.queue import SUBMITTED, job_views, last_line, settle, squeue, summarize, sweep_arrays, unreleased
from orchestrator.backends.slurm.sbatch import Task, chunked, count_trials, job_name, sbatch_parameters, submit_refusal
from orchestrator.backends.slurm.sbatch_once import GONE, cancel_orphans, scancel
from orchestrator.backends.slurm.script import check_one_line, log_folder, python_command, render_sbatch
from orchestrator.backends.slurm.submit_lock import submitting
from orchestrator.backends.slurm.wait import TOPUP_EVERY_S, print_failures, wait_for_jobs
from orchestrator.cancel import CANCEL
from orchestrator.plan import Plan
from orchestrator.profiles import SlurmProfile
from trainer import faults
from trainer.errors import UserError
from trainer.provenance import now
from trainer.results import write_json
from trainer.status import observe

__all__ = ["SUBMITTED", "SlurmBackend", "render_sbatch", "squeue", "submit"]


class SlurmBackend:
    def __init__(self, profile: SlurmProfile) -> None:
        self.profile = profile
        self.config = ""  # the cluster's `scontrol show config`, as the preflight read it

    def preflight(self, plan: Plan) -> None:
        self.config = preflight(self.profile)
        if self.profile.array_parallelism is not None:
            print(
                f"slurm: profile key 'array_parallelism' is now sweep-wide (at most {self.profile.array_parallelism} tasks of the "
                "sweep at once, across its arrays); rename it to max_running_tasks",
                file=sys.stderr,
            )

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        """How the groups would go out (tasks, arrays, throttle) and the first array's sbatch script."""
        p = self.profile
        size, source = known_max_array_size(p)
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
        waited, left = run_slurm(groups, self.profile, sweep, self.config)
        note = "" if waited and not left else f"submitted; follow with: python -m orchestrator.status {sweep}"
        # Trials still unsubmitted after a wait: the launch is not finished (exit 3, like without wait).
        return Launch(waited=waited and not left, note=note, unsubmitted=left)


# ---- launcher ------------------------------------------------------------------------------------
def run_slurm(groups: list[list[Path]], profile: SlurmProfile, sweep: Path, config: str = "") -> tuple[bool, int]:
    """Submit the groups of trial folders; (True if it also waited for every job to end, trials left unsubmitted).

    `config`: the cluster's `scontrol show config` if the caller read it already (the preflight did).
    """
    folder_groups = [[Path(f).absolute() for f in g] for g in groups]
    folders = [f for g in folder_groups for f in g]
    name = job_name(Path(sweep))
    submitter = Submitter(profile, Path(sweep), config)
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
            f"slurm: {count_trials(left)} trials ({len(left)} tasks) not submitted: {submitter.limit_words()} "
            f"({submitter.refusal}); run the same command again later to top up (it submits only what is neither done nor queued)",
            file=sys.stderr,
        )
    if not profile.wait:
        return False, count_trials(left)
    left = wait_for_jobs(submitter, left, folders, name, list(queued.values()))
    settle(folders)  # what the jobs could not record themselves; printed with every failure below
    print_failures(folders)
    return True, count_trials(left)


def _keep(groups: list[list[Path]], ok: Callable[[Path], bool]) -> list[list[Path]]:
    """The trials of `groups` that are `ok`, in their groups; groups left empty go."""
    return [g for g in ([f for f in group if ok(f)] for group in groups) if g]


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

    def __init__(self, profile: SlurmProfile, sweep: Path, config: str = "") -> None:
        self.profile, self.sweep = profile, sweep
        self.name = job_name(sweep)
        self.folder = log_folder(profile, sweep)
        check_one_line(str(self.folder), "log folder")
        self.scripts = JobPaths.get_first_id_independent_folder(self.folder)  # where submitit writes the sbatch scripts
        try:
            python = python_command(profile)
            self.executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=SUBMITIT_MAX_TIMEOUTS, python=python)
        except RuntimeError as err:  # 'Could not detect "srun", are you indeed on a slurm cluster?'
            raise UserError(f"the slurm backend needs SLURM's commands (sbatch, srun, squeue, scontrol) on PATH ({err})") from None
        self.params = sbatch_parameters(profile, sweep)
        self.tag = self.params["comment"] if profile.comment is None else None  # the sweep's tag (sbatch.sweep_tag), as submitted
        self.config = config  # the cluster's `scontrol show config` if the preflight read it ("": ask when needed)
        self.size = profile.max_array_size or cluster_max_array_size(config=config)
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
        queued = sweep_arrays(self.name, self.scripts, self.tag)
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
            trials = count_trials(tasks[: len(tasks) - len(left)])
            print(
                f"slurm: submitted {trials} trials as {len(new)} job array(s): {', '.join(new)}; logs in {self.folder}; "
                f"at most {self.profile.running_tasks} tasks of the sweep at once; cancel with: python -m orchestrator.cancel {self.sweep}",
                file=sys.stderr,
            )
        if left and self.profile.wait and (new or not self.waiting):  # a wait begins: say it once, not at every fruitless try
            print(
                f"slurm: {count_trials(left)} trials ({len(left)} tasks) wait in the launcher: {self.limit_words()} ({self.refusal}); "
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
            if count_trials(still) < count_trials(left):
                print(f"slurm: {count_trials(left) - count_trials(still)} of the trials waiting for room were submitted or run by another "
                      "launcher meanwhile: not submitted again", file=sys.stderr)  # fmt: skip
            return self.submit(still) if still else []

    def cancelled(self, tasks: list[Task]) -> bool:
        """Has `orchestrator.cancel` asked (since this launch began) that nothing more goes out? Says so if it has."""
        if not (self.sweep / CANCEL).exists():
            return False
        print(f"slurm: the sweep was cancelled (orchestrator.cancel); {count_trials(tasks)} trials not submitted", file=sys.stderr)
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
            with _quiet_submitit(self.scripts), sbatch_once.on_path():  # submitit prints every refusal; the launcher says it once
                jobs = self.executor.map_array(self.job, payloads)
        except OSError as err:  # after sbatch took the array, or before: either way nothing of it runs (see _quiet_submitit)
            raise UserError(f"cannot write submitit's files in {self.folder}: {err}{already_submitted(self.arrays)}") from None
        except FailedJobError as err:
            kind = submit_refusal(str(err))
            if kind is None:
                raise UserError(f"sbatch refused the jobs: {last_line(str(err))}{already_submitted(self.arrays)}") from None
            # (Not for 'full': the controller may be full of other users' jobs; room comes as they leave.)
            if kind == "maybe" and len(tasks) == 1 and not sweep_arrays(self.name, self.scripts, self.tag):
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


@contextlib.contextmanager
def _quiet_submitit(base: Path) -> Iterator[None]:
    """Silence submitit's echo of a refused sbatch, and clean up after a submission that failed.

    A refused sbatch leaves pickles and a script behind: removed. A submission that failed after
    sbatch took the job (submitit could not write its files: a full disk, a quota; or an
    interrupt) leaves that job held and unknown to the launcher, and the sweep's later arrays
    would wait on it (afterany) for ever: cancelled, found by its script. `base`: the folder
    submitit writes its pickles and scripts to (Submitter.scripts).
    """
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


def _array_ids(ids: Any) -> str:
    arrays = sorted({str(j).split("_")[0] for j in ids}, key=int)
    return ", ".join(arrays)
