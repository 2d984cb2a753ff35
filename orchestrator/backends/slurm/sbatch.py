"""What the SLURM backend asks of sbatch, as pure functions (no SLURM, no submitit needed).

    sbatch_parameters(profile, sweep_name)  the keyword arguments of submitit's sbatch rendering
    chunked(items, max_array_size)          trials -> job arrays that the cluster accepts
    parse_max_array_size(text)              MaxArraySize from `scontrol show config`

Only the profile's resources and the validated sweep name reach the sbatch script; trial settings
(grid values) travel in each trial's spec.json and never pass through a shell. The rendered
script itself is `orchestrator.backends.slurm.render_sbatch` (it needs submitit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

from orchestrator.grid import NAME_RE
from orchestrator.profiles import SlurmProfile
from trainer.errors import UserError

T = TypeVar("T")

# SLURM's own default, used when `scontrol show config` does not mention MaxArraySize.
SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001


def job_name(sweep_name: str) -> str:
    """`sweep-<name>`; the name is the grid's (letters, digits, '.', '_', '-'), checked again here."""
    if not NAME_RE.match(sweep_name):
        raise UserError(f"sweep name {sweep_name!r} cannot name a SLURM job; allowed: letters, digits, '.', '_', '-'")
    return f"sweep-{sweep_name}"


def signal_delay_s(time_min: int) -> int:
    """Seconds before the time limit at which SLURM sends USR2 (submitit then requeues the job).

    slurmctld checks time limits periodically and may send the signal up to about a minute
    early; a delay of an eighth of the limit (at most submitit's 90 s) keeps a 1-minute job
    alive long enough to start Python and train, and long jobs lose at most 90 s.
    """
    return max(5, min(90, time_min * 60 // 8))


def mem_flag(mem_gb: float) -> str:
    """sbatch --mem value, as submitit writes it ("4GB", "1536MB"); 0 means all of a node's memory."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def sbatch_parameters(profile: SlurmProfile, sweep_name: str) -> dict[str, Any]:
    """The parameters of every job of a sweep, named as submitit's `_make_sbatch_string` takes them.

    One task per job, one trial per task. Account, QOS, constraint, partition and GPUs appear
    only when the profile sets them, so a site's defaults apply otherwise. `--requeue` lets
    SLURM requeue a job whose node failed; the trial resumes from its folder.
    """
    params: dict[str, Any] = {
        "job_name": job_name(sweep_name),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": profile.cpus_per_trial,
        "mem": mem_flag(profile.mem_gb),
        "time": profile.time_min,
        "signal_delay_s": signal_delay_s(profile.time_min),
        "array_parallelism": profile.array_parallelism,
        "wckey": None,  # submitit's default ("submitit") is refused where a site enforces wckeys
        "additional_parameters": {"requeue": True},
    }
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(profile, key)
        if value is not None:
            params[key] = value
    if profile.gpus_per_trial:
        params["gpus_per_node"] = profile.gpus_per_trial
    if profile.setup:
        params["setup"] = list(profile.setup)
    return params


def chunked(items: Sequence[T], max_array_size: int) -> list[list[T]]:
    """Split `items` into job arrays of at most `max_array_size` tasks.

    SLURM requires array indices below MaxArraySize, and each array is numbered from 0, so an
    array may have MaxArraySize tasks (checked on a cluster with MaxArraySize=11: `--array=0-10`
    is accepted, `0-11` is refused with "Invalid job array specification").
    """
    if max_array_size < 1:
        raise UserError(f"max_array_size is {max_array_size}; allowed: >= 1")
    return [list(items[i : i + max_array_size]) for i in range(0, len(items), max_array_size)]


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from the output of `scontrol show config` (SLURM's default if absent)."""
    match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", config_text, re.MULTILINE)
    return int(match.group(1)) if match else SLURM_DEFAULT_MAX_ARRAY_SIZE
