"""What the SLURM backend asks of sbatch, as pure functions (no SLURM, no submitit needed).

    job_name(sweep)                         the name of every job of a sweep: sweep-<folder name>
    sbatch_parameters(profile, sweep)       the keyword arguments of submitit's sbatch rendering
    chunked(items, size)                    groups -> tasks (G groups each), tasks -> job arrays the cluster accepts
    count_trials(tasks)                     the trial folders in tasks
    parse_max_array_size(text)              MaxArraySize from `scontrol show config`
    parse_min_job_age(text)                 MinJobAge (how long a finished job still counts against MaxJobCount)
    submit_refusal(text)                    is an sbatch error a submit limit (per-user / QOS, MaxJobCount)?

Only the profile's resources and the job name (from the validated sweep name) reach the sbatch
script; trial settings (grid values) travel in each trial's spec.json and never pass through a
shell. The rendered script itself is script.py's `render_sbatch` (it needs submitit).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.grid import NAME_RE
from orchestrator.profiles import SlurmProfile
from trainer.errors import UserError

T = TypeVar("T")
Task = list[list[Path]]  # the groups of one array task (one group per GPU), each a list of trial folders

# SLURM's own default, used when `scontrol show config` does not mention MaxArraySize.
SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001


def job_name(sweep: str | Path) -> str:
    """`sweep-<name>`: the sweep folder's name (the grid's: letters, digits, '.', '_', '-'), checked again here.

    Two sweeps of one grid in different results folders share it; the launcher tells their arrays
    apart by their job comment (sweep_tag), else by where their sbatch scripts live (queue.sweep_arrays).
    """
    name = Path(sweep).name
    if not NAME_RE.match(name):
        raise UserError(f"sweep name {name!r} cannot name a SLURM job; allowed: letters, digits, '.', '_', '-'")
    return f"sweep-{name}"


TAG_RE = re.compile(r"sweep:[0-9a-f]{12}")


def sweep_tag(sweep: str | Path) -> str:
    """`sweep:<12 hex digits>` of the sweep folder's real path: the comment of every job of the sweep.

    It tells the sweep's arrays from those of the same grid run into another results folder when the
    two share a profile's `log_dir` (their scripts then live in one folder). Only where the profile
    sets no `comment` of its own: a site's comment is left as the user wrote it.
    """
    return "sweep:" + hashlib.sha256(os.path.realpath(sweep).encode()).hexdigest()[:12]


def signal_delay_s(time_min: int) -> int:
    """Seconds before the time limit at which SLURM sends USR2 (submitit then requeues the job).

    slurmctld checks time limits periodically and may send the signal up to about a minute
    early; a delay of an eighth of the limit (at most submitit's 90 s) keeps a 1-minute job
    alive long enough to start Python and train, and long jobs lose at most 90 s.
    """
    return max(5, min(90, time_min * 60 // 8))


def mem_flag(mem_gb: float) -> str:
    """sbatch memory value, as submitit writes it ("4GB", "1536MB"); profiles refuse 0 (all of a node)."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


DEFAULT_MEM_GB = 4.0

# A setup line that fails ends the job at once, with the line in its stderr (the job's log): the
# launcher and orchestrator.status then record the reason in every trial of the task. The trap
# fires on a failing command like `set -e` would (not inside if/while tests or && / || lists).
SETUP_TRAP = "trap 'echo \"sweep: setup failed (exit code $?): $BASH_COMMAND\" >&2; exit 1' ERR"
SETUP_END = "trap - ERR"


def sbatch_parameters(profile: SlurmProfile, sweep: str | Path) -> dict[str, Any]:
    """The parameters of every job of a sweep, named as submitit's `_make_sbatch_string` takes them.

    One task per job, `profile.groups_per_task` groups per task (one per GPU). Account, QOS,
    constraint, partition, GPUs and the other site options appear only when the profile sets
    them, so a site's defaults apply otherwise. `--requeue` lets SLURM requeue a job whose node
    failed; the trials resume from their folders. `array_parallelism` is the sweep-wide throttle:
    every array gets `%N` with N = max_running_tasks, and the launcher chains the arrays
    (`--dependency=afterany`) so that at most N tasks of the sweep run at once. `--hold`: see below.
    """
    # Held at submission; the launcher releases each array once submitit has made its tasks' log
    # folders (`<sweep>/slurm/%A_%a`, made only after sbatch answers). A task that starts first
    # cannot open its stdout and fails to launch (JobLaunchFailure, exit code 0:53): seen on the
    # test SLURM when an idle node took a task within milliseconds of the submission.
    extra: dict[str, Any] = {"requeue": True, "hold": True}
    params: dict[str, Any] = {
        "job_name": job_name(sweep),
        "nodes": 1,
        "ntasks_per_node": 1,
        "time": profile.time_min,
        "signal_delay_s": signal_delay_s(profile.time_min),
        "array_parallelism": profile.running_tasks,
        "wckey": None,  # submitit's default ("submitit") is refused where a site enforces wckeys
    }
    for key in ("partition", "account", "qos", "constraint", "exclude", "nodelist", "comment", "mail_type", "mail_user", "gres"):
        value = getattr(profile, key)
        if value is not None:
            params[key] = value
    params.setdefault("comment", sweep_tag(sweep))
    if profile.reservation is not None:
        extra["reservation"] = profile.reservation  # no named parameter in submitit
    if profile.exclusive:
        params["exclusive"] = profile.exclusive
    gpus = profile.gpus_per_task_
    if gpus and profile.gres is None:
        params["gpus_per_node"] = gpus  # one task per node: the task's GPUs
    if profile.cpus_per_gpu is not None:
        # SLURM takes --cpus-per-gpu with any GPU option; submitit's named parameter warns unless
        # --gpus-per-task is used, so it goes in as an additional parameter.
        extra["cpus_per_gpu"] = profile.cpus_per_gpu
    else:
        params["cpus_per_task"] = profile.task_cpus
    if profile.mem_per_gpu_gb is not None:
        params["mem_per_gpu"] = mem_flag(profile.mem_per_gpu_gb)
    elif profile.mem_per_cpu_gb is not None:
        params["mem_per_cpu"] = mem_flag(profile.mem_per_cpu_gb)
    else:
        params["mem"] = mem_flag(profile.mem_gb if profile.mem_gb is not None else DEFAULT_MEM_GB)
    for line in profile.sbatch_extra:
        key, _, value = line[2:].partition("=")
        extra[key] = value if value else True
    params["additional_parameters"] = extra
    if profile.setup:
        params["setup"] = [SETUP_TRAP, *profile.setup, SETUP_END]
    return params


def chunked(items: Sequence[T], max_array_size: int) -> list[list[T]]:
    """Split `items` into job arrays of at most `max_array_size` tasks (also: groups into tasks of G groups).

    SLURM requires array indices below MaxArraySize, and each array is numbered from 0, so an
    array may have MaxArraySize tasks (checked on a cluster with MaxArraySize=11: `--array=0-10`
    is accepted, `0-11` is refused with "Invalid job array specification").
    """
    if max_array_size < 1:
        raise UserError(f"max_array_size is {max_array_size}; allowed: >= 1")
    return [list(items[i : i + max_array_size]) for i in range(0, len(items), max_array_size)]


def count_trials(tasks: list[Task]) -> int:
    """The trial folders in `tasks`."""
    return sum(len(g) for t in tasks for g in t)


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from the output of `scontrol show config` (SLURM's default if absent)."""
    match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", config_text, re.MULTILINE)
    return int(match.group(1)) if match else SLURM_DEFAULT_MAX_ARRAY_SIZE


# SLURM's default: a finished job's record stays this long, and counts against MaxJobCount meanwhile.
SLURM_DEFAULT_MIN_JOB_AGE_S = 300


def parse_min_job_age(config_text: str) -> int:
    """MinJobAge in seconds from the output of `scontrol show config` ("MinJobAge = 300 sec"; SLURM's default if absent)."""
    match = re.search(r"^\s*MinJobAge\s*=\s*(\d+)", config_text, re.MULTILINE)
    return int(match.group(1)) if match else SLURM_DEFAULT_MIN_JOB_AGE_S


# ---- sbatch refusals ---------------------------------------------------------------------------------
# What sbatch prints when a QOS or association limit refuses a job, e.g.
#   sbatch: error: QOSMaxSubmitJobPerUserLimit
#   sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)
# The first line (the reason code) is missing on some versions; the second is the same for every
# policy, so a count limit (a smaller array fits) is told from a size or time limit (no array
# fits) by the reason code when there is one, and by trying when there is not.
_REASON_CODE = re.compile(r"\b((?:QOS|Assoc)(?:Max|Grp|Min)\w*)")
_POLICY = "violates accounting/QOS policy"


# What sbatch prints when the controller holds MaxJobCount job records (every user's, an array
# counting one per task, a finished job's kept MinJobAge seconds), after its own retries:
#   sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying
#   sbatch: error: Batch job submission failed: Resource temporarily unavailable
# ("Slurm job queue full" on older versions). Room frees as jobs leave, anyone's: a count limit too.
_FULL = ("Resource temporarily unavailable", "temporarily unable to accept job", "job queue full")


def submit_refusal(text: str) -> str | None:
    """'limit' when sbatch refused for a submit-count limit, 'full' when the controller holds
    MaxJobCount jobs, 'maybe' for the bare policy message, None for anything else (a size or time
    limit, a bad option: smaller arrays cannot help)."""
    if any(marker in text for marker in _FULL):
        return "full"
    codes = _REASON_CODE.findall(text)
    if codes:
        return "limit" if any("Submit" in c for c in codes) else None
    if _POLICY in text or "MaxSubmitJobs" in text:
        return "maybe"
    return None
