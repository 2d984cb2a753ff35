"""The QOS and association limits a sweep's jobs run under, as the accounting database tells it,
and the profile settings they rule out.

Where the site enforces them (`AccountingStorageEnforce` with `limits` or `safe`, as most sites
with accounting run), sbatch takes a job over its QOS's MaxWall or MaxTRESPerJob, and the job
pends for ever (reason `QOSMaxWallDurationPerJobLimit`, `QOSMaxCpuPerJobLimit`,
`QOSMaxMemoryPerJob`, `AssocMaxWallDurationPerJobLimit`, ...: seen on the project's 3-node test
SLURM with accounting). `sbatch --test-only` says nothing of it. So the launcher's preflight
looks the limits up once (`sacctmgr`, two or three calls) and refuses such a profile in one line.

Which limits hold, as slurmctld decides them:
- the job's QOS: the profile's `qos`, else the association's DefaultQOS, else its one allowed
  QOS, else `normal`;
- a partition QOS (`QoS=` in `scontrol show partition`) overrides the job's QOS limit by limit,
  unless the job's QOS has the OverPartQOS flag;
- an association limit holds where no QOS sets that limit.

Anything that cannot be read (no sacctmgr, no answer, an association not found) checks nothing:
the submission, or the queue's reason in `orchestrator.status`, then says what the site thinks.
"""

from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass, field

from orchestrator.backends.slurm.partition import minutes, node_mb
from orchestrator.profiles import SlurmProfile

TIMEOUT_S = 20  # per sacctmgr call; one that does not answer in time checks nothing
NO_QOS = ("", "N/A", "(null)")
# The reason squeue gives a job over a per-job limit, by whose limit it is and which.
REASONS = {
    ("QOS", "wall"): "QOSMaxWallDurationPerJobLimit", ("Assoc", "wall"): "AssocMaxWallDurationPerJobLimit",
    ("QOS", "cpu"): "QOSMaxCpuPerJobLimit", ("Assoc", "cpu"): "AssocMaxCpuPerJobLimit",
    ("QOS", "mem"): "QOSMaxMemoryPerJob", ("Assoc", "mem"): "AssocMaxMemPerJob",
    ("QOS", "gres/gpu"): "QOSMaxGRESPerJob", ("Assoc", "gres/gpu"): "AssocMaxGRESPerJob",
}  # fmt: skip
CHECKED_TRES = ("cpu", "mem", "gres/gpu")


@dataclass(frozen=True)
class Limits:
    """One QOS's or association's per-job limits: MaxWall (minutes, as printed) and MaxTRES."""

    owner: str  # "QOS short", "partition debug's QOS part", "your association (account a)"
    reason: str  # SLURM's reason prefix for a job over them: "QOS" or "Assoc"
    wall: tuple[float, str] | None = None
    tres: dict[str, tuple[float, str]] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()


def enforced(config: str) -> bool:
    """Does the site hold jobs to QOS and association limits? (`scontrol show config`.)"""
    match = re.search(r"^AccountingStorageEnforce\s*=\s*(\S+)", config, re.M)
    return match is not None and bool({"limits", "safe"} & set(match.group(1).lower().split(",")))


def cluster_name(config: str) -> str | None:
    match = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.M)
    return match.group(1) if match else None


def tres(text: str) -> dict[str, tuple[float, str]]:
    """sacctmgr's TRES list ('cpu=1,mem=2G,gres/gpu=2') as {name: (count, as printed)}; memory in MB."""
    out: dict[str, tuple[float, str]] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", value)
        if not match:
            continue
        number = float(match.group(1))
        if name == "mem":  # sacctmgr prints MB with a unit: 3000M, 2G
            number *= {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}[match.group(2)]
        out[name] = (number, value)
    return out


def limits(owner: str, reason: str, wall: str, max_tres: str, flags: str = "") -> Limits:
    most = minutes(wall) if wall else None
    return Limits(owner, reason, (most, wall) if most is not None else None, tres(max_tres), frozenset(filter(None, flags.split(","))))


def job_qos(profile: SlurmProfile, default_qos: str, allowed: str) -> str:
    """The QOS the job runs under, as slurmctld picks it when the profile names none."""
    if profile.qos:
        return profile.qos
    if default_qos:
        return default_qos
    allowed_list = [q for q in allowed.split(",") if q]
    return allowed_list[0] if len(allowed_list) == 1 else "normal"


def effective(job: Limits | None, part: Limits | None, assoc: Limits | None) -> list[tuple[str, Limits]]:
    """(limit, whose) for each limit that holds: the partition QOS's, the job QOS's, then the association's."""
    out: list[tuple[str, Limits]] = []
    over = job is not None and "OverPartQOS" in job.flags
    order = [job, part] if over else [part, job]
    for key in ["wall", *CHECKED_TRES]:
        for holder in [*order, assoc]:
            if holder is not None and (holder.wall if key == "wall" else holder.tres.get(key)) is not None:
                out.append((key, holder))
                break
    return out


def refusal(held: list[tuple[str, Limits]], profile: SlurmProfile) -> str | None:
    """Why no job of `profile` could ever start under these limits, or None."""
    for key, whose in held:
        if key == "wall":
            assert whose.wall is not None
            most, shown = whose.wall
            if profile.time_min > most:
                return (
                    f"key 'time_min' is {profile.time_min}: over {whose.owner}'s MaxWall ({shown}), where its jobs would pend "
                    f"for ever ({REASONS[whose.reason, key]}); allowed: 1 to {int(most)}, or another qos "
                    "(`sacctmgr show qos format=name,maxwall`); a trial longer than a job is requeued and resumes from its checkpoint"
                )
            continue
        most, shown = whose.tres[key]
        need = _asked(profile, key)
        if need is not None and need[1] > most:
            name, amount = need
            asked, allowed = (f"{amount / 1024:g} GB", f"{most / 1024:g} GB") if key == "mem" else (f"{amount:g}", f"{most:g}")
            default = " (its default)" if getattr(profile, name, None) is None else ""
            return (
                f"key '{name}'{default} asks for {asked} per job: over {whose.owner}'s MaxTRESPerJob ({key}={shown}), where "
                f"its jobs would pend for ever ({REASONS[whose.reason, key]}); allowed: at most {allowed}, or another qos "
                "(`sacctmgr show qos format=name,maxtres`)"
            )
    return None


def _asked(profile: SlurmProfile, key: str) -> tuple[str, float] | None:
    """(profile key, amount: MB for memory) of TRES `key` one job asks for; None where it cannot be told here."""
    if profile.exclusive:  # a whole node: its size is the node's
        return None
    if key == "cpu":
        return ("cpus_per_gpu" if profile.cpus_per_gpu is not None else "cpus_per_trial", profile.task_cpus)
    if key == "mem":
        return node_mb(profile)
    gpus = profile.gpus_per_task_
    if not gpus:
        return None
    return ("gres" if profile.gres else "gpus_per_task" if profile.gpus_per_task is not None else "gpus_per_trial", gpus)


# ---- reading them -------------------------------------------------------------------------------
def _sacctmgr(*args: str) -> list[list[str]] | None:
    try:
        out = subprocess.run(["sacctmgr", "-nP", "show", *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def lookup(profile: SlurmProfile, part: dict[str, str] | None, config: str) -> tuple[list[tuple[str, Limits]], Limits] | None:
    """(the limits that hold for the profile's jobs, the job QOS's own); None where they cannot be read
    or the site does not enforce them."""
    cluster = cluster_name(config)
    if not enforced(config) or cluster is None:
        return None
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container's bare uid): nothing to look up
        return None
    account = profile.account
    if account is None:
        rows = _sacctmgr("user", user, "format=DefaultAccount")
        if not rows or not rows[0][0]:
            return None
        account = rows[0][0]
    rows = _sacctmgr("assoc", "where", f"user={user}", f"cluster={cluster}", f"account={account}",
                     "format=Partition,DefaultQOS,QOS,MaxWall,MaxTRES")  # fmt: skip
    if not rows:
        return None
    # An association for this partition, else the account's own (no partition).
    row = next((r for r in rows if len(r) == 5 and profile.partition and r[0] == profile.partition), None)
    row = row or next((r for r in rows if len(r) == 5 and not r[0]), None)
    if row is None:
        return None
    _, default_qos, allowed, assoc_wall, assoc_tres = row
    assoc = limits(f"your association (account {account})", "Assoc", assoc_wall, assoc_tres)
    name = job_qos(profile, default_qos, allowed)
    part_name = (part or {}).get("QoS", "N/A")
    wanted = [name] + ([part_name] if part_name not in NO_QOS and part_name != name else [])
    qos_rows = _sacctmgr("qos", "where", f"name={','.join(wanted)}", "format=Name,MaxWall,MaxTRES,Flags")
    if qos_rows is None:
        return None
    found = {r[0]: r for r in qos_rows if len(r) == 4}
    if name not in found:
        return None  # an unknown QOS: sbatch refuses it ("Invalid qos"), the preflight's test submission says so
    job = limits(f"QOS {name}", "QOS", *found[name][1:])
    part_qos = None
    if part_name in found and part_name != name:
        part_qos = limits(f"partition {(part or {}).get('PartitionName')}'s QOS {part_name}", "QOS", *found[part_name][1:])
    return effective(job, part_qos, assoc), job
