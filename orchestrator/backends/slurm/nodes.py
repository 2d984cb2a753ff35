"""The nodes of a sweep's partition, as `sinfo` tells them, and a task that none of them could hold.

A job asking more CPUs, memory or GPUs per task than any node of its partition has can never
start. Sites that check this at submission refuse it there ("Requested node configuration is not
available"); others (the test SLURM: `mem_gb: 500` on a 21 GB node) queue it and it pends for ever
(BadConstraints, PartitionConfig): a whole sweep queued that never runs, with nothing said at
submission. So the preflight reads the partition's nodes once and refuses such a profile in one line
naming the key. Only what no node has is refused: a node that is down or drained still counts (it may
come back), and node features (`constraint`) are left to `sbatch --test-only` (preflight.py).

The profile's `nodelist` and `exclude` are read against the same nodes: a name that is no node of
the partition made sbatch refuse the array after the trial folders were written ("Invalid node
name specified"), and an `exclude` that leaves no node queued jobs that never start.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field

from orchestrator.backends.slurm.partition import flag_mb, node_mb
from orchestrator.profiles import SlurmProfile, gres_gpu_type

FORMAT = "%N|%c|%m|%G"  # name, CPUs, RealMemory (MB), generic resources
UNSET_MB = 1  # SLURM's RealMemory when a site does not configure it: memory is not checked then


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: dict[str, int] = field(default_factory=dict)  # GPU type ("" for all of them) -> count

    def has_gpus(self, kind: str) -> int:
        return self.gpus.get(kind, 0)


def read(partition: str, timeout_s: float = 60) -> list[Node]:
    """The nodes of `partition` (each once), or [] where sinfo does not answer (the submission says then)."""
    try:
        out = subprocess.run(
            ["sinfo", "--partition", partition, "--noheader", "--Node", "--format", FORMAT],
            capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse(out.stdout) if out.returncode == 0 else []


def parse(text: str) -> list[Node]:
    """`sinfo --Node --format '%N|%c|%m|%G'` lines as nodes; a line that does not read is left out."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].rstrip("+").isdigit():
            continue
        nodes.setdefault(parts[0], Node(parts[0], int(parts[1]), int(parts[2].rstrip("+")), gpus(parts[3])))
    return list(nodes.values())


def gpus(gres: str) -> dict[str, int]:
    """A node's GPUs from sinfo's %G: 'gpu:a100:4(S:0-1),gpu:v100:2' -> {'': 6, 'a100': 4, 'v100': 2}."""
    counts: dict[str, int] = {}
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu":
            continue
        n = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        counts[""] = counts.get("", 0) + n
        if len(parts) == 3:
            counts[parts[1]] = counts.get(parts[1], 0) + n
    return counts


@dataclass(frozen=True)
class _Need:
    key: str  # the profile key that sets it
    unit: str  # "GPUs", "a100 GPUs", "CPUs", "MB"
    amount: int  # per task
    has: str  # the Node attribute, or "gpu:<type>"
    per: int = 1  # a task asks for the key's value times this many ...
    per_what: str = ""  # ... groups, CPUs or GPUs

    def on(self, node: Node) -> int:
        return node.has_gpus(self.has[4:]) if self.has.startswith("gpu:") else int(getattr(node, self.has))

    def allowed(self, most: int, nodes: list[Node]) -> str:
        """What the key may say for a task to fit on a node with `most` of the resource."""
        times = f" (a task has {self.per} {self.per_what})" if self.per > 1 else ""
        if self.has == "mem_mb":
            mb = most // self.per  # rounded down, so that the value given fits
            return f"at most {math.floor(mb / 102.4) / 10:g} GB{times}" if mb >= 1024 else f"at most {mb / 1024:.4f} GB ({mb} MB){times}"
        if self.has.startswith("gpu:"):
            kinds = sorted({f"gpu:{k}:{n}" if k else f"gpu:{n}" for node in nodes for k, n in node.gpus.items()})
            have = f"the nodes have {', '.join(kinds)}" if kinds else "the nodes have no GPU"
            return f"at most {most} ({have})" if most else f"GPUs the nodes have ({have})"
        if most // self.per == 0:
            return f"fewer {self.per_what} per task: each of its {self.per} {self.per_what} needs a CPU"
        return f"at most {most // self.per}{times}"


def _needs(profile: SlurmProfile, nodes: list[Node]) -> list[_Need]:
    """What one array task asks of its node, each with the key that sets it: GPUs, CPUs, memory."""
    needs = []
    gpus_asked = profile.gpus_per_task_
    if gpus_asked:
        key = "gres" if profile.gres else "gpus_per_task" if profile.gpus_per_task is not None else "gpus_per_trial"
        kind = gres_gpu_type(profile.gres or "")  # gpu:a100:4 asks for a100s
        needs.append(_Need(key, f"{kind} GPUs" if kind else "GPUs", gpus_asked, f"gpu:{kind}"))
    if profile.cpus_per_gpu is not None:
        needs.append(_Need("cpus_per_gpu", "CPUs", profile.task_cpus, "cpus", max(1, gpus_asked), "GPUs"))
    else:
        needs.append(_Need("cpus_per_trial", "CPUs", profile.task_cpus, "cpus", profile.groups_per_task, "groups"))
    if max(n.mem_mb for n in nodes) <= UNSET_MB:  # RealMemory not configured anywhere: nothing to compare with
        return needs
    if profile.mem_per_gpu_gb is not None:  # per GPU: a task holds gpus_asked of them
        per = max(1, gpus_asked)
        needs.append(_Need("mem_per_gpu_gb", "MB", flag_mb(profile.mem_per_gpu_gb) * per, "mem_mb", per, "GPUs"))
    elif (asked := node_mb(profile)) is not None:
        per = profile.task_cpus if asked[0] == "mem_per_cpu_gb" else 1
        needs.append(_Need(asked[0], "MB", asked[1], "mem_mb", per, "CPUs"))
    return needs


def cluster_nodes(timeout_s: float = 60) -> set[str] | None:
    """Every node of the cluster, whatever its partition; None where sinfo does not answer."""
    try:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format", "%N"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def hostnames(hostlist: str, timeout_s: float = 60) -> list[str] | None:
    """SLURM's expansion of a hostlist (`node[01-03],gpu7`), by `scontrol show hostnames`; None where it cannot."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split() if out.returncode == 0 else None


def refusal(nodes: list[Node], profile: SlurmProfile, partition: str) -> str | None:
    """Why no node of `partition` could ever run one task of `profile`, or None (also when no node is known)."""
    if not nodes:
        return None
    names = [n.name for n in nodes]
    shown = ", ".join(names[:8]) + (f" ... ({len(names)} nodes)" if len(names) > 8 else "")
    listed = hostnames(profile.nodelist) if profile.nodelist else None
    if listed is not None and (unknown := [h for h in listed if h not in names]):
        said = ", ".join(unknown[:5])
        return f"key 'nodelist' names {said}: not a node of partition {partition}; allowed: nodes of that partition ({shown})"
    excluded = hostnames(profile.exclude) if profile.exclude else None
    if excluded is not None:
        # A node of another partition may be excluded; one that is no node at all makes sbatch refuse the array.
        unknown = [h for h in excluded if h not in names]
        if unknown and (everywhere := cluster_nodes()) is not None and (missing := [h for h in unknown if h not in everywhere]):
            return f"key 'exclude' names {', '.join(missing[:5])}: no node of this cluster; allowed: node names (`sinfo -N -o %N`)"
        nodes = [n for n in nodes if n.name not in set(excluded)]
        if not nodes:
            said = repr(profile.exclude)
            return f"key 'exclude' is {said}: it leaves no node of partition {partition} ({shown}); allowed: a hostlist leaving one"
    needs = _needs(profile, nodes)
    if any(all(need.on(node) >= need.amount for need in needs) for node in nodes):
        return None
    see = f"`sinfo -N -p {partition} -o '%N %c %m %G'`"
    for need in needs:
        most = max(need.on(node) for node in nodes)
        if most < need.amount:
            return (
                f"key '{need.key}' asks for {need.amount} {need.unit} per task, more than any node of partition {partition} "
                f"has (the most: {most} {need.unit}; {see}), so its jobs would never start; allowed: {need.allowed(most, nodes)}, "
                "or another partition"
            )
    asked = " and ".join(f"'{need.key}' ({need.amount} {need.unit})" for need in needs)
    return (
        f"keys {asked}: no single node of partition {partition} has all of that per task ({see}), so its jobs would "
        "never start; allowed: what one node has, or another partition"
    )
