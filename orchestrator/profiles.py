"""Cluster profiles (cluster_configs/*.yaml): where and with what resources trials run, never science.

    backend: slurm            # local | ray | slurm: picks the record below
    partition: gpu
    gpus_per_task: 4          # a task holds 4 GPUs and trains 4 groups side by side
    ...

    profile = load_profile("cluster_configs/slurm/example-site.yaml")   # or UserError, one line

Keys are checked strictly before anything is written: an unknown key is one line listing the
valid keys of that backend, and every value is checked for its type, for being a finite number
(`.nan`, `.inf` refused), and for its range (LIMITS below: what SLURM, Ray or the trainer
accept), each mistake one line naming the file, the key and what is allowed. The resource
fields `device`, `data_root` and `num_workers` override the grid's: they are not part of a
trial's identity, so the same grid lands in the same trial folders on every site.

docs/backends.md is the reference of every key; the comments here say what each one means.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.strict import from_mapping, load_yaml
from trainer.errors import UserError
from trainer.spec import TRACKERS, quote

BACKENDS = ("local", "ray", "slurm")

# ---- limits of numeric keys ----------------------------------------------------------------------
# (smallest, largest, smallest excluded, what is allowed in words). SLURM's own limits where it
# has them: a time limit is at most a year here (SLURM stores minutes in 32 bits, and no site
# allows more), CPU counts are 16-bit in SLURM, MaxArraySize is at most 4000001; memory and GPU
# counts are capped far above any node so that a typo (1e11) is caught, not submitted.
MAX_TIME_MIN = 365 * 24 * 60
MAX_CPUS = 65533
MAX_MEM_GB = 1_048_576.0  # 1 PiB
MAX_GPUS_PER_TASK = 64
MAX_ARRAY_SIZE = 4_000_001
MAX_COUNT = 1_000_000  # tasks, trials, attempts, requeues: far above any sweep


@dataclass(frozen=True)
class Limit:
    lo: float
    hi: float
    lo_open: bool = False  # lo itself is refused (e.g. memory > 0)
    words: str = ""

    def allowed(self) -> str:
        if self.words:
            return self.words
        low = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        return f"{low} and <= {self.hi:g}"

    def admits(self, value: float) -> bool:
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi


LIMITS: dict[str, Limit] = {
    # every backend
    "num_workers": Limit(0, 1024, words="a whole number from 0 to 1024"),
    "max_attempts": Limit(1, MAX_COUNT, words=f">= 1 (and <= {MAX_COUNT})"),
    "fuse": Limit(1, 4096, words=">= 1 (1: every trial alone) and <= 4096"),
    # local
    "max_parallel": Limit(1, 4096, words="a whole number of worker processes from 1 to 4096"),
    # ray (cpus_per_trial and gpus_per_trial: see RAY_LIMITS)
    "num_cpus": Limit(1, 1_000_000, words="a whole number of CPUs >= 1"),
    "num_gpus": Limit(0, 1_000_000, words="a whole number of GPUs >= 0"),
    "max_concurrent": Limit(0, MAX_COUNT, words="a whole number >= 0 (0: as many as resources allow)"),
    # slurm
    "time_min": Limit(1, MAX_TIME_MIN, words=f"a whole number of minutes from 1 to {MAX_TIME_MIN} (365 days)"),
    "cpus_per_trial": Limit(1, MAX_CPUS, words=f"a whole number of CPUs per group from 1 to {MAX_CPUS}"),
    "cpus_per_gpu": Limit(1, MAX_CPUS, words=f"a whole number of CPUs from 1 to {MAX_CPUS}"),
    "gpus_per_task": Limit(1, MAX_GPUS_PER_TASK, words=f"a whole number of GPUs from 1 to {MAX_GPUS_PER_TASK}"),
    "mem_gb": Limit(0.001, MAX_MEM_GB, words=f"from 0.001 (1 MB) to {MAX_MEM_GB:.0f} (GB per task)"),
    "mem_per_gpu_gb": Limit(0.001, MAX_MEM_GB, words=f"from 0.001 (1 MB) to {MAX_MEM_GB:.0f} (GB per GPU)"),
    "mem_per_cpu_gb": Limit(0.001, MAX_MEM_GB, words=f"from 0.001 (1 MB) to {MAX_MEM_GB:.0f} (GB per CPU)"),
    "max_running_tasks": Limit(1, MAX_COUNT, words=f"a whole number of tasks from 1 to {MAX_COUNT}"),
    "max_gpus": Limit(1, MAX_COUNT, words=f"a whole number of GPUs from 1 to {MAX_COUNT}"),
    "array_parallelism": Limit(1, MAX_COUNT, words=f"a whole number from 1 to {MAX_COUNT}"),
    "max_array_size": Limit(1, MAX_ARRAY_SIZE, words=f"a whole number from 1 to {MAX_ARRAY_SIZE} (SLURM's MaxArraySize)"),
    "max_requeues": Limit(0, 1000, words="a whole number from 0 to 1000"),
}
# Ray's per-trial resources are fractions: a trial on a share of a GPU is Ray's way to pack them.
RAY_GRANULARITY = 0.0001  # ray_constants.MIN_RESOURCE_GRANULARITY
RAY_LIMITS: dict[str, Limit] = {
    # Ray counts resources in steps of 0.0001 (its docs: "avoid specifying a double that's beyond that
    # precision"): 1e-9 CPU is no share Ray can hold.
    "cpus_per_trial": Limit(RAY_GRANULARITY, 1_000_000, words=f">= {RAY_GRANULARITY} (Ray's smallest share; fractions allowed, e.g. 0.5)"),
    "gpus_per_trial": Limit(
        0, 1, words="from 0 to 1: a fraction shares one GPU among trials; a group trains on one GPU, so more is never used"
    ),
}
RAY_TEMP_DIR_MAX = 40
# `address`: what ray.init joins. A head's GCS (host:port, 6379 by default) or Ray Client (ray://host:port,
# 10001); host a name, an IPv4 address or a bracketed IPv6 one. Anything else makes ray.init raise after
# the trial folders are written.
RAY_ADDRESS = re.compile(r"(ray://)?([A-Za-z0-9]([A-Za-z0-9.-]{0,252})?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")
RAY_ADDRESS_ALLOWED = "auto, host:port (the head's GCS, port 6379 by default) or ray://host:port (Ray Client, port 10001)"
SLURM_GPUS_PER_TRIAL = Limit(
    0, 1, words="0 or 1 (a group trains on one GPU; for G GPUs per job running G groups side by side, set gpus_per_task: G)"
)


def check_number(key: str, value: Any, limit: Limit | None, integral: bool) -> None:
    """One line if `value` is not a finite number within `limit` (and whole where `integral`)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # types are from_mapping's business
    allowed = limit.allowed() if limit else ("a whole number" if integral else "a finite number")
    if not math.isfinite(value):
        raise UserError(f"key '{key}' is {value}; allowed: {allowed} (a finite number)")
    if integral and value != int(value):
        raise UserError(f"key '{key}' is {value}; allowed: {allowed}")
    if limit is not None and not limit.admits(value):
        shown = int(value) if integral and abs(value) < 1e15 else value
        raise UserError(f"key '{key}' is {shown}; allowed: {allowed}")


# ---- SLURM value syntax ----------------------------------------------------------------------------
# Each value below lands on an `#SBATCH --key=value` line (shell-quoted by submitit): the
# character sets keep line breaks, quotes, `$` and spaces out, so no value can become a command.
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")  # partition, account, qos, reservation names
# One way to match each text (a name, then bracket ranges each followed by more name): the old form,
# name[..]?name*, matched a plain name in as many ways as it could be cut in two, so a list of 20
# nodes with one stray character backtracked for hours before it was refused.
_HOST = r"[A-Za-z0-9_.\-]+(?:\[[0-9,\-]+\][A-Za-z0-9_.\-]*)*"
HOSTLIST_RE = re.compile(rf"{_HOST}(?:,{_HOST})*")
GRES_RE = re.compile(r"[a-z][a-z0-9_]*(:[A-Za-z0-9_.\-]+)?(:[0-9]+)?")
FEATURE_RE = re.compile(r"[A-Za-z0-9_.\-]+(\*[0-9]+)?")
COMMENT_RE = re.compile(r"[A-Za-z0-9 _.,:;=+/@()\[\]|&*#%\-]+")
MAIL_USER_RE = re.compile(r"[A-Za-z0-9._%+\-]+(@[A-Za-z0-9.\-]+)?")
MAIL_TYPES = (
    "NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT",
    "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS",
)  # fmt: skip
EXTRA_RE = re.compile(r"--([a-z][a-z0-9\-]*)(=([A-Za-z0-9_.,:=+/@%\[\]|&*\-]+))?")
# sbatch options the backend writes itself (or that would take the job out of its hands): a
# sbatch_extra line must not set them; the profile key to use instead, where there is one.
RESERVED_OPTIONS = {
    "array": None, "job-name": None, "output": "log_dir", "error": "log_dir", "open-mode": None, "signal": None,
    "requeue": None, "no-requeue": None, "dependency": None, "wrap": None, "parsable": None, "test-only": None,
    "hold": None, "wckey": None, "time": "time_min", "partition": "partition", "account": "account", "qos": "qos",
    "constraint": "constraint", "gres": "gres", "gpus": "gpus_per_task", "gpus-per-node": "gpus_per_task",
    "gpus-per-task": "gpus_per_task", "cpus-per-task": "cpus_per_trial", "cpus-per-gpu": "cpus_per_gpu",
    "mem": "mem_gb", "mem-per-gpu": "mem_per_gpu_gb", "mem-per-cpu": "mem_per_cpu_gb", "nodes": None,
    "ntasks": None, "ntasks-per-node": None, "exclusive": "exclusive", "exclude": "exclude",
    "nodelist": "nodelist", "reservation": "reservation", "comment": "comment", "mail-type": "mail_type",
    "mail-user": "mail_user", "tasks-per-node": None, "wait": None, "help": None, "usage": None,
    "version": None,
}  # fmt: skip
# Options after which sbatch blocks or submits nothing, so the backend would hang or read no job id.
NOT_SUBMITTING = {"wait": "sbatch would block until the job ends", "help": "sbatch would submit nothing",
                  "usage": "sbatch would submit nothing", "version": "sbatch would submit nothing"}  # fmt: skip
# Every long option of sbatch (slurm-wlm 22.05.8, hidden aliases included: glibc lists them when asked
# `sbatch --a=1` etc., "option is ambiguous; possibilities: ..."). sbatch reads options, #SBATCH lines
# included, with getopt_long, which takes any unambiguous prefix of a long option as that option: a
# sbatch_extra key is resolved against this list the same way before it is checked.
SBATCH_OPTIONS = (
    "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir", "cluster", "cluster-constraint",
    "clusters", "comment", "constraint", "container", "context", "contiguous", "core-spec", "cores-per-socket",
    "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution", "error",
    "exclude", "exclusive", "export", "export-file", "extra-node-info", "get-user-env", "gid", "gpu-bind", "gpu-freq",
    "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "help", "hint", "hold",
    "ignore-pbs", "input", "job-name", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem",
    "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "no-requeue", "nodefile",
    "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket",
    "ntasks-per-tres", "open-mode", "output", "overcommit", "oversubscribe", "parsable", "partition", "power", "prefer",
    "priority", "profile", "propagate", "qos", "quiet", "reboot", "requeue", "reservation", "signal",
    "sockets-per-node", "spread-job", "switches", "tasks-per-node", "test-only", "thread-spec", "threads-per-core",
    "time", "time-min", "tmp", "uid", "usage", "use-min-nodes", "verbose", "version", "wait", "wait-all-nodes", "wckey",
    "wrap",
)  # fmt: skip


def sbatch_option(key: str) -> str | tuple[str, ...]:
    """The option sbatch reads for `--key`: the key itself when exact or unknown (a newer sbatch's option,
    sbatch judges it), the one option it is a prefix of, or the candidates when it is a prefix of several."""
    if key in SBATCH_OPTIONS:
        return key
    found = tuple(name for name in SBATCH_OPTIONS if name.startswith(key))
    return found[0] if len(found) == 1 else found or key


def slurm_minutes(text: str) -> int | None:
    """Whole minutes (rounded up) of a time in sbatch's --time formats with a colon or a day
    (M:SS, H:MM:SS, D-H, D-H:MM, D-H:MM:SS); None if `text` is not one."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None or (match.group(1) is None and match.group(3) is None):
        return None
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-H[:MM[:SS]]
        seconds = days * 86400 + (first or 0) * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # H:MM:SS
        seconds = (first or 0) * 3600 + (second or 0) * 60 + third
    else:  # M:SS
        seconds = (first or 0) * 60 + (second or 0)
    return -(-seconds // 60)


def check_constraint(value: str) -> None:
    """SLURM's --constraint syntax: features joined by & (and) or | (or), `name*N` node counts,
    [..] (matching or, counts) and (..) groups; e.g. `a100|h100`, `[a100*2&ib]`, `[(a|b)*2&c]`, `(a100|h100)&ib`."""
    allowed = "features (letters, digits, _ . -) joined by & or |, with name*N counts and [..] or (..) groups"
    # The last alternative takes any other character, a newline too (`.` would skip it: a newline
    # passed and ended the sbatch script's #SBATCH lines).
    tokens = re.findall(r"[A-Za-z0-9_.\-]+(?:\*[0-9]+)?|\)\*[0-9]+|[&|\[\]()]|[\s\S]", value)
    depth: list[str] = []
    expect_feature = True
    for tok in tokens:
        if expect_feature:
            if tok in "[(" and len(tok) == 1:
                depth.append(tok)
                continue
            if not FEATURE_RE.fullmatch(tok):
                raise UserError(f"key 'constraint' is {value!r}; allowed: {allowed}")
            expect_feature = False
        elif tok in ("&", "|"):
            expect_feature = True
        elif tok[0] in "])" and tok[1:2] in ("", "*") and depth and depth[-1] == {"]": "[", ")": "("}[tok[0]]:
            depth.pop()
        else:
            raise UserError(f"key 'constraint' is {value!r}; allowed: {allowed}")
    if expect_feature or depth:
        raise UserError(f"key 'constraint' is {value!r}; allowed: {allowed} (unbalanced or ends with an operator)")


def gres_gpus(gres: str) -> int | None:
    """GPUs that a --gres value asks for (`gpu:a100:2` -> 2, `gpu` -> 1); None if it names no GPU."""
    for entry in gres.split(","):
        parts = entry.split(":")
        if parts[0] == "gpu":
            return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return None


def gres_gpu_type(gres: str) -> str:
    """The GPU type a --gres value asks for (`gpu:a100:2` and `gpu:a100` -> 'a100'), '' for any GPU."""
    for entry in gres.split(","):
        parts = entry.split(":")
        if parts[0] == "gpu":
            return parts[1] if len(parts) == 3 or (len(parts) == 2 and not parts[1].isdigit()) else ""
    return ""


# ---- the profiles ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseProfile:
    backend: str = "local"
    device: str | None = None  # auto | cpu | cuda | cuda:N; None: the grid's
    data_root: str | None = None  # where the data sets are on this site; None: the grid's / $SWEEP_DATA_ROOT
    num_workers: int | None = None  # DataLoader workers (streamed data sets)
    compile: bool | None = None  # torch.compile the networks (worth it on GPUs); None: the grid's
    loader: str | None = None  # auto | dali | torchvision (image decoding); None: the grid's
    cache_dir: str | None = None  # data set manifests (a folder every node sees); None: the grid's
    trackers: tuple[str, ...] | None = None  # tensorboard | wandb | mlflow (live curves; trainer/trackers.py); None: the grid's
    max_attempts: int = 3  # a trial that failed (not diverged) this often is left failed
    # Trials per fused group (trainer.group): trials differing only in alpha, onset and seed
    # train as one network, K at a time, in one worker / Tune trial / array task; 1: each alone.
    fuse: int = 16

    def __post_init__(self) -> None:
        for tracker in self.trackers or ():
            if tracker not in TRACKERS:
                raise UserError(f"key 'trackers' has {tracker!r}; allowed: {', '.join(TRACKERS)}")
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value) and value < 0:  # the key's own range where it has one (max_attempts: >= 1)
                    limit = self.limit(f.name)
                    raise UserError(f"key '{f.name}' is {value}; allowed: {limit.allowed() if limit else '>= 0'}")
                integral = "int" in str(hints[f.name]) and "float" not in str(hints[f.name])
                check_number(f.name, value, self.limit(f.name), integral)

    def limit(self, key: str) -> Limit | None:
        return LIMITS.get(key)

    def workers(self) -> int:
        """Groups this engine runs at once on one launch's machine; packing keeps that many busy."""
        return 1

    def trial_overrides(self) -> dict[str, Any]:
        """The resource fields this profile sets on every trial."""
        keys = ("device", "data_root", "num_workers", "compile", "loader", "cache_dir", "trackers")
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
    cpus_per_trial: float = 1.0  # per Tune trial (one group); also its torch threads
    gpus_per_trial: float = 0.0  # per Tune trial (one group, on one GPU): 0 to 1, fractions share a GPU
    max_concurrent: int = 0  # 0: as many as resources allow
    temp_dir: str | None = None  # local Ray only: its session files (keep the path short)

    def limit(self, key: str) -> Limit | None:
        return RAY_LIMITS.get(key) or LIMITS.get(key)

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 < self.gpus_per_trial < RAY_GRANULARITY:
            raise UserError(
                f"key 'gpus_per_trial' is {self.gpus_per_trial!r}; allowed: 0, or {RAY_GRANULARITY} to 1 (Ray's smallest share)"
            )
        if self.address is not None and self.address != "auto":
            match = RAY_ADDRESS.fullmatch(self.address)
            if not match or not 1 <= int(match[4]) <= 65535:
                raise UserError(f"key 'address' is {self.address!r}; allowed: {RAY_ADDRESS_ALLOWED}; leave it out for a private local Ray")
        # Ray puts its sockets at <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/<name>: about
        # 65 characters below temp_dir, and an AF_UNIX path stops at 107 bytes.
        if self.temp_dir is not None and len(self.temp_dir) > RAY_TEMP_DIR_MAX:
            raise UserError(
                f"key 'temp_dir' is {self.temp_dir!r} ({len(self.temp_dir)} characters); allowed: at most {RAY_TEMP_DIR_MAX} "
                "(Ray's socket paths below it must stay under 107 bytes), e.g. /tmp/ray-me"
            )


@dataclass(frozen=True)
class SlurmProfile(BaseProfile):
    backend: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None  # node features: a100|h100, [a100*2&ib], (a100|h100)&ib
    # GPUs: gpus_per_trial 1 gives each group (one array task) a GPU; gpus_per_task G gives each
    # task G GPUs and G groups that train side by side, one per GPU (a whole node); `gres` asks
    # for typed GPUs (gpu:a100:4) and counts as gpus_per_task.
    gpus_per_trial: int = 0
    gpus_per_task: int | None = None
    gres: str | None = None
    cpus_per_trial: int | None = None  # CPUs per group (a task gets this x its groups); default 1, or cpus_per_gpu
    cpus_per_gpu: int | None = None  # instead of cpus_per_trial
    mem_gb: float | None = None  # per task; default 4 unless mem_per_gpu_gb / mem_per_cpu_gb is set
    mem_per_gpu_gb: float | None = None
    mem_per_cpu_gb: float | None = None
    time_min: int = 60  # per job; a trial that needs longer is requeued and resumes from its checkpoint
    # Sweep-wide: at most this many array tasks (so max_running_tasks x GPUs per task) run at
    # once, across every array of the sweep; or give the GPUs (max_gpus). Default 64 tasks.
    max_running_tasks: int | None = None
    max_gpus: int | None = None
    array_parallelism: int | None = None  # the old name of max_running_tasks (now sweep-wide)
    max_array_size: int | None = None  # None: read MaxArraySize from `scontrol show config`
    max_requeues: int = 3  # preemptions + time limits without progress before a trial is left failed
    exclusive: bool | str = False  # whole nodes to ourselves (True, or "user" / "mcs")
    exclude: str | None = None  # nodes never to use (a hostlist: node[01-04],gpu7)
    nodelist: str | None = None  # nodes to use (a hostlist)
    comment: str | None = None
    mail_type: str | None = None  # e.g. FAIL or END,FAIL
    mail_user: str | None = None
    sbatch_extra: tuple[str, ...] = ()  # more sbatch options, one `--key=value` per entry
    setup: tuple[str, ...] = ()  # shell lines run before the trial (module load, source venv, ...); the first that fails ends the job
    python: str | None = None  # interpreter on the nodes; None: the launcher's
    log_dir: str | None = None  # submitit's logs; None: <sweep>/slurm/
    wait: bool = False  # the launcher waits until every job ends (tests); else it submits and exits

    def limit(self, key: str) -> Limit | None:
        return SLURM_GPUS_PER_TRIAL if key == "gpus_per_trial" else LIMITS.get(key)

    def __post_init__(self) -> None:
        super().__post_init__()
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise UserError("key 'setup': each entry must be one shell line (no newlines)")
            if line.rstrip().endswith("\\"):
                raise UserError(f"key 'setup': entry {line!r} ends with a backslash; allowed: complete lines (one entry per line)")
        for key in ("python", "log_dir"):
            value = getattr(self, key)
            if value is not None and ("\n" in value or "\r" in value or not value.strip()):
                raise UserError(f"key '{key}' is {value!r}; allowed: one non-empty line (it goes into the sbatch script)")
        for key in ("partition", "account", "qos", "reservation"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,\-]+", value):
                raise UserError(f"key '{key}' is {value!r}; allowed: letters, digits and _ . , -")
        if self.constraint is not None:
            check_constraint(self.constraint)
        for key in ("exclude", "nodelist"):
            value = getattr(self, key)
            if value is not None and not HOSTLIST_RE.fullmatch(value):
                allowed = "a hostlist such as node[01-04],gpu7 (letters, digits, _ . - and [n-m,k])"
                raise UserError(f"key '{key}' is {value!r}; allowed: {allowed}")
        self._check_gpus()
        self._check_cpus_and_memory()
        self._check_mail_and_comment()
        for i, line in enumerate(self.sbatch_extra):
            check_extra(line, i)
        if sum(k is not None for k in (self.max_running_tasks, self.max_gpus, self.array_parallelism)) > 1:
            raise UserError(
                "keys 'max_running_tasks', 'max_gpus', 'array_parallelism': set one (array_parallelism: the old max_running_tasks)"
            )
        if self.max_gpus is not None and self.gpus_per_task_ > self.max_gpus:
            raise UserError(f"key 'max_gpus' is {self.max_gpus}; allowed: >= the GPUs of one task ({self.gpus_per_task_})")
        if isinstance(self.exclusive, str) and self.exclusive not in ("user", "mcs"):
            raise UserError(f"key 'exclusive' is {self.exclusive!r}; allowed: true, false, user, mcs")

    def _check_gpus(self) -> None:
        if self.gres is not None:
            entries = self.gres.split(",")
            if not all(GRES_RE.fullmatch(e) for e in entries) or any(e.split(":")[-1] == "0" for e in entries):
                raise UserError(
                    f"key 'gres' is {self.gres!r}; allowed: name[:type][:count] entries joined by ',', e.g. gpu:a100:4 (count >= 1)"
                )
            n = gres_gpus(self.gres)
            if n is not None and n > MAX_GPUS_PER_TASK:
                raise UserError(f"key 'gres' asks for {n} GPUs; allowed: at most {MAX_GPUS_PER_TASK} per task")
            if n is not None and self.gpus_per_task is not None and self.gpus_per_task != n:
                raise UserError(f"keys 'gres' ({self.gres}) and 'gpus_per_task' ({self.gpus_per_task}) disagree on a task's GPUs; set one")

    def _check_cpus_and_memory(self) -> None:
        if self.cpus_per_trial is not None and self.cpus_per_gpu is not None and self.cpus_per_trial != self.cpus_per_gpu:
            raise UserError("keys 'cpus_per_trial' and 'cpus_per_gpu': set one (SLURM refuses --cpus-per-task with --cpus-per-gpu)")
        if self.cpus_per_gpu is not None and self.gpus_per_task_ == 0:
            raise UserError("key 'cpus_per_gpu' needs GPUs: set gpus_per_trial: 1, gpus_per_task or a gpu gres")
        if self.mem_per_gpu_gb is not None and self.gpus_per_task_ == 0:
            raise UserError("key 'mem_per_gpu_gb' needs GPUs: set gpus_per_trial: 1, gpus_per_task or a gpu gres")
        mems = [k for k in ("mem_gb", "mem_per_gpu_gb", "mem_per_cpu_gb") if getattr(self, k) is not None]
        if len(mems) > 1:
            keys = ", ".join(repr(k) for k in mems)
            raise UserError(f"keys {keys}: set one (SLURM's --mem, --mem-per-gpu, --mem-per-cpu exclude each other)")
        # Resolved once: the CPUs of one group (a group per GPU when cpus_per_gpu is given), for
        # everything that reads cpus_per_trial (the sbatch script takes cpus_per_gpu as given).
        object.__setattr__(self, "cpus_per_trial", self.cpus_per_trial or self.cpus_per_gpu or 1)
        if self.task_cpus > MAX_CPUS:
            raise UserError(f"keys 'cpus_per_trial' x GPUs per task make {self.task_cpus} CPUs per task; allowed: at most {MAX_CPUS}")

    def _check_mail_and_comment(self) -> None:
        if self.mail_type is not None:
            bad = [t for t in self.mail_type.split(",") if t not in MAIL_TYPES]
            if bad:
                raise UserError(f"key 'mail_type' is {self.mail_type!r}; allowed: a comma list of {', '.join(MAIL_TYPES)}")
        if self.mail_user is not None and not MAIL_USER_RE.fullmatch(self.mail_user):
            raise UserError(f"key 'mail_user' is {self.mail_user!r}; allowed: a user name or an e-mail address")
        if self.comment is not None and (not COMMENT_RE.fullmatch(self.comment) or len(self.comment) > 500):
            allowed = "up to 500 letters, digits, spaces and _ . , : ; = + / @ ( ) [ ] | & * # % -"
            raise UserError(f"key 'comment' is {self.comment!r}; allowed: {allowed}")

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def gpus_per_task_(self) -> int:
        """GPUs one array task holds: gres's GPU count, else gpus_per_task, else gpus_per_trial (0 or 1)."""
        n = gres_gpus(self.gres) if self.gres else None
        return n if n is not None else self.gpus_per_task if self.gpus_per_task is not None else self.gpus_per_trial

    @property
    def groups_per_task(self) -> int:
        """Groups one task trains side by side: one per GPU, or one on a CPU-only task."""
        return max(1, self.gpus_per_task_)

    @property
    def task_cpus(self) -> int:
        """CPUs of one task: cpus_per_trial per group, or cpus_per_gpu per GPU."""
        if self.cpus_per_gpu is not None:
            return self.cpus_per_gpu * max(1, self.gpus_per_task_)
        return (self.cpus_per_trial or 1) * self.groups_per_task

    @property
    def running_tasks(self) -> int:
        """The sweep-wide throttle in array tasks (max_gpus converted; default 64)."""
        if self.max_gpus is not None:
            return max(1, self.max_gpus // max(1, self.gpus_per_task_))
        return self.max_running_tasks or self.array_parallelism or 64

    def workers(self) -> int:
        """Groups packing makes at least: one per GPU of a task, so a whole-node task has work for each.

        Not one per GPU of the whole throttle: a cluster's idle GPUs are not the sweep's, and
        fewer, bigger fused groups use each GPU better.
        """
        return self.groups_per_task


def check_extra(line: str, index: int) -> None:
    """One `sbatch_extra` entry: `--key=value` or `--key`, a safe character set, not an option we set."""
    match = EXTRA_RE.fullmatch(line)
    if match is None:
        raise UserError(
            f"key 'sbatch_extra' entry {index + 1} is {line!r}; allowed: one long option per entry, --key=value or --key "
            "(key: lowercase letters, digits, -; value: letters, digits and _ . , : = + / @ % [ ] | & * -)"
        )
    key = match.group(1)
    option = sbatch_option(key)
    if isinstance(option, tuple):
        names = ", ".join(f"--{name}" for name in option)
        raise UserError(
            f"key 'sbatch_extra' entry {index + 1} sets --{key}, which sbatch finds ambiguous ({names}); allowed: the full option name"
        )
    if option in RESERVED_OPTIONS:
        instead = RESERVED_OPTIONS[option]
        hint = f"use the profile key '{instead}'" if instead else NOT_SUBMITTING.get(option, "the backend sets it")
        sets = f"--{key}" if key == option else f"--{key}, which sbatch reads as --{option}"
        raise UserError(f"key 'sbatch_extra' entry {index + 1} sets {sets}; not allowed there: {hint}")


Profile = LocalProfile | RayProfile | SlurmProfile
PROFILES: dict[str, type] = {"local": LocalProfile, "ray": RayProfile, "slurm": SlurmProfile}


def load_profile(path: str | Path) -> Profile:
    """Read and validate a cluster profile; every mistake is one line naming the file and key."""
    raw = load_yaml(path, "cluster profile")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a cluster profile must be a mapping with a 'backend' key ({', '.join(BACKENDS)})")
    backend = raw.get("backend")
    if "backend" not in raw:
        grid = " (this looks like a grid: pass it with --grid)" if {"sweep", "fixed"} & raw.keys() else ""
        raise UserError(f"{path}: key 'backend' is missing; allowed: {', '.join(BACKENDS)}{grid}")
    if not isinstance(backend, str) or backend not in PROFILES:  # a list or mapping is no dict key
        raise UserError(f"{path}: key 'backend' is {quote(backend)}; allowed: {', '.join(BACKENDS)}")
    _check_raw_numbers(PROFILES[backend], raw, str(path))
    if isinstance(time := raw.get("time_min"), str) and (minutes := slurm_minutes(time)) is not None:
        # SLURM's own time format (YAML 1.1 read 1:00:00 as 3600, and 2:30 as 150): say it in the key's unit
        raise UserError(f"{path}: key 'time_min' is {time!r}; allowed: {LIMITS['time_min'].words} (SLURM reads {time} as {minutes})")
    return from_mapping(PROFILES[backend], raw, str(path))


def _check_raw_numbers(cls: type[BaseProfile], raw: dict[Any, Any], where: str) -> None:
    """Numbers the type check would only call 'not int' (1e11, .nan for a count): say the range instead."""
    hints = typing.get_type_hints(cls)
    probe = object.__new__(cls)  # only for its limit(); no fields set
    for key, value in raw.items():
        if key not in hints or not isinstance(value, float):
            continue
        hint = str(hints[key])
        if "int" in hint and "float" not in hint:
            try:
                check_number(key, value, probe.limit(key), integral=True)
            except UserError as err:
                raise UserError(f"{where}: {err}") from None


def default_profile(backend: str) -> Profile:
    return PROFILES[backend]()
