"""Cluster profiles (cluster_configs/*.yaml): where and with what resources trials run, never science.

    backend: slurm            # local | ray | slurm: picks the record below
    partition: gpu
    gpus_per_trial: 1
    ...

Keys are checked strictly (unknown key: one line listing the valid keys of that backend).
The resource fields `device`, `data_root` and `num_workers` override the grid's: they are not
part of a trial's identity, so the same grid lands in the same trial folders on every site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.strict import from_mapping, load_yaml
from trainer.errors import UserError

BACKENDS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class BaseProfile:
    backend: str = "local"
    device: str | None = None  # auto | cpu | cuda | cuda:N; None: the grid's
    data_root: str | None = None  # where the data sets are on this site; None: the grid's / $SWEEP_DATA_ROOT
    num_workers: int | None = None  # DataLoader workers (streamed data sets)
    compile: bool | None = None  # torch.compile the networks (worth it on GPUs); None: the grid's
    loader: str | None = None  # auto | dali | torchvision (image decoding); None: the grid's
    cache_dir: str | None = None  # data set manifests (a folder every node sees); None: the grid's
    max_attempts: int = 3  # a trial that failed (not diverged) this often is left failed
    # Trials per fused group (trainer.group): trials differing only in alpha, onset and seed
    # train as one network, K at a time, in one worker / Tune trial / array task; 1: each alone.
    fuse: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise UserError(f"key '{f.name}' is {value}; allowed: >= 0")
        for key in ("max_attempts", "fuse"):
            if getattr(self, key) < 1:
                raise UserError(f"key '{key}' is {getattr(self, key)}; allowed: >= 1")

    def workers(self) -> int:
        """Groups this engine runs at once on one launch's machine; packing keeps that many busy."""
        return 1

    def trial_overrides(self) -> dict[str, Any]:
        """The resource fields this profile sets on every trial."""
        keys = ("device", "data_root", "num_workers", "compile", "loader", "cache_dir")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class LocalProfile(BaseProfile):
    backend: str = "local"
    max_parallel: int = 1  # worker processes at a time, each running one group of trials

    def workers(self) -> int:
        return self.max_parallel


@dataclass(frozen=True)
class RayProfile(BaseProfile):
    backend: str = "ray"
    address: str | None = None  # None: start a private local Ray; "auto" or "host:port": join a cluster
    num_cpus: int | None = None  # local Ray only: CPUs it may use (None: all)
    num_gpus: int | None = None  # local Ray only
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions pack several trials on one GPU (e.g. 0.25)
    max_concurrent: int = 0  # 0: as many as resources allow
    temp_dir: str | None = None  # local Ray only: its session files (keep the path short)


@dataclass(frozen=True)
class SlurmProfile(BaseProfile):
    backend: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_trial: int = 0
    cpus_per_trial: int = 1
    mem_gb: float = 4.0
    time_min: int = 60  # per job; a trial that needs longer is requeued and resumes from its checkpoint
    array_parallelism: int = 64  # at most this many array tasks run at once (%N)
    max_array_size: int | None = None  # None: read MaxArraySize from `scontrol show config`
    max_requeues: int = 3  # timeouts + preemptions before a trial is left failed
    setup: tuple[str, ...] = ()  # shell lines run before the trial (module load, source venv, ...)
    python: str | None = None  # interpreter on the nodes; None: the launcher's
    log_dir: str | None = None  # submitit's logs; None: <sweep>/slurm/
    wait: bool = False  # the launcher waits until every job ends (tests); else it submits and exits

    def __post_init__(self) -> None:
        super().__post_init__()
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise UserError("key 'setup': each entry must be one shell line (no newlines)")
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,:|&\-]+", value):
                raise UserError(f"key '{key}' is {value!r}; allowed: letters, digits and _ . , : | & -")
        if self.time_min < 1 or self.cpus_per_trial < 1 or self.array_parallelism < 1:
            raise UserError("keys 'time_min', 'cpus_per_trial', 'array_parallelism' must be >= 1")


Profile = LocalProfile | RayProfile | SlurmProfile
PROFILES: dict[str, type] = {"local": LocalProfile, "ray": RayProfile, "slurm": SlurmProfile}


def load_profile(path: str | Path) -> Profile:
    """Read and validate a cluster profile; every mistake is one line naming the file and key."""
    raw = load_yaml(path, "cluster profile")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a cluster profile must be a mapping with a 'backend' key ({', '.join(BACKENDS)})")
    backend = raw.get("backend")
    if backend not in PROFILES:
        raise UserError(f"{path}: key 'backend' is {backend!r}; allowed: {', '.join(BACKENDS)}")
    return from_mapping(PROFILES[backend], raw, str(path))


def default_profile(backend: str) -> Profile:
    return PROFILES[backend]()
