"""What the SLURM controller says of itself (`scontrol show config`): MaxArraySize, MinJobAge, and
the accounting settings the preflight's QOS check reads (qos.py).

MaxArraySize caps the tasks of one job array (the launcher cuts longer sweeps into several);
MinJobAge is how long a finished job still counts against MaxJobCount (the waiting launcher's
top-ups are timed by it). A profile's `max_array_size` spares the call.
"""

from __future__ import annotations

import shutil
import subprocess

from orchestrator.backends.slurm.sbatch import SLURM_DEFAULT_MAX_ARRAY_SIZE, parse_max_array_size, parse_min_job_age
from orchestrator.profiles import SlurmProfile
from trainer.errors import UserError


def cluster_max_array_size(timeout_s: float = 60, config: str = "") -> int:
    """MaxArraySize of the cluster, from `config` (`scontrol show config` as the preflight read it), else asked now."""
    return parse_max_array_size(config or _cluster_config(timeout_s))


def cluster_min_job_age(config: str = "") -> int:
    """MinJobAge of the cluster, from `config` as above, else asked now (SLURM's default when
    `scontrol show config` does not answer: it only times top-ups)."""
    return parse_min_job_age(config or config_or_empty(30))


def config_or_empty(timeout_s: float = 60) -> str:
    """`scontrol show config`, or "" where it does not answer (the checks that need it are skipped)."""
    try:
        return _cluster_config(timeout_s)
    except UserError:
        return ""


def _cluster_config(timeout_s: float) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"cannot ask SLURM for MaxArraySize (`scontrol show config`: {err}); set max_array_size in the profile") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`scontrol show config` failed ({why}); is SLURM up and SLURM_CONF right? or set max_array_size in the profile")
    return out.stdout


def known_max_array_size(profile: SlurmProfile) -> tuple[int, str]:
    """For --dry-run: the profile's, else the cluster's when SLURM answers here, else SLURM's default."""
    if profile.max_array_size:
        return profile.max_array_size, "the profile's max_array_size"
    if shutil.which("scontrol"):
        try:
            return cluster_max_array_size(timeout_s=10), "the cluster's MaxArraySize"
        except UserError:
            pass
    return SLURM_DEFAULT_MAX_ARRAY_SIZE, "SLURM's default MaxArraySize: no cluster answered here; set max_array_size"
