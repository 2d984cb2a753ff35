"""The partition a sweep's jobs go to, as `scontrol show partition` tells it, and the profile
settings its limits rule out.

With SLURM's default `EnforcePartLimits=NO`, sbatch accepts a job over its partition's MaxTime
or MaxMemPerNode and the job then pends for ever (reason `PartitionTimeLimit`, `MaxMemPerLimit`;
seen on the test SLURM): a whole sweep queued that never starts, with nothing said at
submission. So the launcher's preflight reads the partition once (the profile's, or the
cluster's default) and refuses such a profile in one line. Sites that enforce the limits at
submission refuse it in sbatch too (preflight._REFUSED_KEYS). A job QOS with the
PartitionTimeLimit flag lifts the partition's MaxTime (qos.py reads the flags); where they cannot
be read, a profile that names a `qos` is not checked against the partition at all.
"""

from __future__ import annotations

import re

from orchestrator.backends.slurm.sbatch import DEFAULT_MEM_GB, mem_flag
from orchestrator.profiles import SlurmProfile

UNLIMITED = ("UNLIMITED", "INFINITE")


def records(text: str) -> list[dict[str, str]]:
    """The partitions in `scontrol show partition` output, each as {key: value}."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields = dict(re.findall(r"(\w+)=(\S*)", block))
        if "PartitionName" in fields:
            out.append(fields)
    return out


def pick(parts: list[dict[str, str]], name: str | None) -> dict[str, str] | None:
    """The partition `name`, or the cluster's default one (Default=YES) when no name is given."""
    if name:
        return next((p for p in parts if p["PartitionName"] == name), None)
    return next((p for p in parts if p.get("Default") == "YES"), None)


def minutes(value: str) -> float | None:
    """A SLURM time in minutes; None: unlimited or unreadable.

    SLURM's forms: 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S' (scontrol prints '[D-]H:M:S').
    """
    if value.upper() in UNLIMITED:
        return None
    days, dash, clock = value.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (dash and not days.isdigit()):
        return None
    n = [int(p) for p in parts]
    if dash:  # after a day count the first number is hours
        h, m, s = (n + [0, 0])[:3]
    else:  # M, M:S or H:M:S
        h, m, s = n if len(n) == 3 else [0, *n, 0][:3]
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def refusal(part: dict[str, str], profile: SlurmProfile, qos_flags: frozenset[str] | None = None) -> str | None:
    """Why no job of `profile` could ever start on `part` (over its MaxTime or MaxMemPerNode), or None.

    `qos_flags`: those of the job's QOS, None where they could not be read.
    """
    if qos_flags is None and profile.qos is not None:  # its flags may lift the partition's MaxTime: the queue will tell
        return None
    name = part["PartitionName"]
    most = minutes(part.get("MaxTime", "UNLIMITED"))
    lifted = qos_flags is not None and "PartitionTimeLimit" in qos_flags
    if most is not None and profile.time_min > most and not lifted:
        return (
            f"key 'time_min' is {profile.time_min}: over partition {name}'s MaxTime ({part['MaxTime']}), where its jobs "
            f"would pend for ever (PartitionTimeLimit); allowed: 1 to {int(most)}, or another partition (`sinfo -o '%P %l'`); "
            "a trial longer than a job is requeued and resumes from its checkpoint"
        )
    most_mb = part.get("MaxMemPerNode", "UNLIMITED")
    need = node_mb(profile)
    if most_mb.isdigit() and need is not None and need[1] > int(most_mb):
        key, mb = need
        return (
            f"key '{key}' asks for {mb} MB per node: over partition {name}'s MaxMemPerNode ({most_mb} MB), where its jobs "
            f"would pend for ever (MaxMemPerLimit); allowed: at most {int(most_mb) / 1024:g} GB per task, or another partition"
        )
    return None


def node_mb(profile: SlurmProfile) -> tuple[str, int] | None:
    """(the key, MB) of the memory a task asks on its node, as the sbatch script renders it.

    None for mem_per_gpu_gb: how SLURM counts it against MaxMemPerNode was not checked here (the
    test SLURM has no GPUs); the submission then says what the site thinks.
    """
    if profile.mem_per_gpu_gb is not None:
        return None
    if profile.mem_per_cpu_gb is not None:
        return "mem_per_cpu_gb", flag_mb(profile.mem_per_cpu_gb) * profile.task_cpus
    return "mem_gb", flag_mb(profile.mem_gb if profile.mem_gb is not None else DEFAULT_MEM_GB)


def flag_mb(gb: float) -> int:
    """MB of `gb` as the sbatch script renders it (mem_flag: \"4GB\" or \"1536MB\"; SLURM's GB are 1024 MB)."""
    flag = mem_flag(gb)
    return int(flag[:-2]) * (1024 if flag.endswith("GB") else 1)
