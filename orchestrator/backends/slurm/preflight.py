"""The SLURM launcher's checks before anything is written: SLURM's commands, the controller, the
partition and its limits (partition.py), the QOS and association limits (qos.py), and the site's
own names in the profile (`sbatch --test-only`).

Each refusal is one line naming the profile key (ProfileError, exit 2); a check SLURM cannot
answer here is left to the submission, which says what the site thinks.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from orchestrator.backends.slurm import nodes, partition, qos
from orchestrator.backends.slurm.cluster import config_or_empty
from orchestrator.backends.slurm.queue import last_line
from orchestrator.backends.slurm.script import render_sbatch
from orchestrator.folders import write_problem
from orchestrator.profiles import SlurmProfile
from trainer.errors import ProfileError, UserError


def preflight(profile: SlurmProfile) -> str:
    """Cheap checks before any trial folder is written: SLURM's commands, the controller, the partition's and the QOS's limits.

    Returns the cluster's `scontrol show config` ("" where it did not answer), which the launch reuses.
    """
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UserError(f"the slurm backend needs SLURM's commands on PATH; missing: {', '.join(missing)}")
    if profile.log_dir is not None:
        _check_log_dir(profile.log_dir)
    # The profile's partition, or every partition to find the default one: one controller call either way.
    try:
        which = [profile.partition] if profile.partition is not None else []
        out = subprocess.run(["scontrol", "show", "partition", *which], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UserError("`scontrol show partition` timed out; is the SLURM controller up?") from None
    if out.returncode != 0 and profile.partition is not None:
        raise ProfileError(f"partition '{profile.partition}': {last_line(out.stderr or out.stdout)} (see `sinfo -s`)")
    part = partition.pick(partition.records(out.stdout), profile.partition) if out.returncode == 0 else None
    config = config_or_empty()
    # The QOS and association limits, where the site enforces them and sacctmgr answers (qos.py).
    found = qos.lookup(profile, part, config) if shutil.which("sacctmgr") else None
    if part is not None and (why := partition.refusal(part, profile, found[1].flags if found else None)):
        raise ProfileError(why)
    if found is not None and (why := qos.refusal(found[0], profile)):
        raise ProfileError(why)
    if part is not None and (why := nodes.refusal(nodes.read(part["PartitionName"]), profile, part["PartitionName"])):
        raise ProfileError(why)  # a task bigger than every node of the partition
    _test_submit(profile)
    return config


def _check_log_dir(log_dir: str) -> None:
    """The launcher writes submitit's pickles and the sbatch scripts under `log_dir` (its part before
    the first folder with a `%` pattern): one it cannot create was refused only after the trial
    folders were written, naming no key. The nearest folder that exists must take a file here
    (a real probe, removed at once: os.access says yes to root on a read-only mount)."""
    parts = Path(log_dir).expanduser().absolute().parts
    fixed = Path(*parts[: next((i for i, part in enumerate(parts) if "%" in part), len(parts))])
    if (err := write_problem(fixed)) is not None:
        raise ProfileError(
            f"key 'log_dir' is {log_dir!r}: the launcher cannot write there ({err.strerror or err}); allowed: a folder "
            "this machine may create and write, on a file system the nodes share (or leave it out: <sweep>/slurm/%j)"
        )


# What `sbatch --test-only` says of a setting no job of the profile could ever be submitted with, and
# the profile key that holds it. Only these: its other refusals are not final (all nodes drained or
# down: "Requested node configuration is not available", while a real submission queues and waits;
# unless sbatch_extra is what no node satisfies, below).
_REFUSED_KEYS = (
    ("Requested reservation is invalid", ("reservation",), "a reservation of this cluster (`scontrol show reservation`)"),
    ("Invalid feature specification", ("constraint",), "features the partition's nodes have (`sinfo -o '%P %f'`)"),
    ("Invalid account", ("account", "partition"), "an account you may use on that partition (`sacctmgr show assoc user=$USER`)"),
    ("Invalid qos", ("qos", "account"), "a QOS of your association (`sacctmgr show assoc user=$USER format=account,qos`)"),
    ("Invalid generic resource", ("gres", "gpus_per_task", "gpus_per_trial"), "GPUs the partition's nodes have (`sinfo -o '%P %G'`)"),
    ("Requested time limit is invalid", ("time_min", "partition"), "at most the partition's MaxTime (`sinfo -o '%P %l'`)"),
)


# Settings that name the site's own objects, and the raw sbatch options (sbatch_extra: the profile
# cannot check their values; sbatch refused a bad one only after the trial folders were written).
_SITE_NAMES = ("reservation", "constraint", "account", "qos", "gres", "sbatch_extra")


def _test_submit(profile: SlurmProfile) -> None:
    """Ask the controller (`sbatch --test-only`: nothing is queued) whether the profile's sbatch script
    could be submitted at all, so a misspelt reservation or feature is one line before anything is written.

    Only for a profile that names such objects of the site (_SITE_NAMES): the other settings are
    checked by the profile itself, and a site's sbatch wrapper (accounting, quotas) then sees no
    call that is not a submission. The script goes as a file, the last argument, as for a submission.
    """
    if not any(getattr(profile, key) for key in _SITE_NAMES):
        return
    out = _test_only(profile)
    if out is None or out.returncode == 0:
        return  # no answer: the submission itself will say what is wrong
    text = out.stderr or out.stdout
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Try ")]  # "Try sbatch --help"
    said = last_line("\n".join(lines) or text).removeprefix("allocation failure: ").removeprefix("sbatch: error: ")
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
    # sbatch's own parsing (no "allocation failure": the controller was not asked) is final, and so is
    # a license the controller does not know; only sbatch_extra can carry either past the profile's checks.
    # So is the controller's refusal of an option that only sbatch_extra sets ("Job --batch option is
    # invalid ..."): every submission would get it (it was refused after the trial folders were written).
    named = {e.split("=", 1)[0] for e in profile.sbatch_extra if e.startswith("--")}
    extra_named = any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", said) for option in named)
    if profile.sbatch_extra and ("allocation failure" not in text or "Invalid license specification" in said or extra_named):
        extras = ", ".join(profile.sbatch_extra)
        raise ProfileError(f"key 'sbatch_extra' ({extras}): sbatch refuses it ({said}); allowed: what sbatch takes (`man sbatch`)")
    # "Requested node configuration is not available" is not final while nodes are drained or down,
    # but when the same job without sbatch_extra is accepted, the extra options ask more than any node
    # has (`--mincpus`, `--tmp`): every task would pend for ever (squeue: BadConstraints).
    if profile.sbatch_extra and _NO_NODE in said:
        plain = _test_only(dataclasses.replace(profile, sbatch_extra=()))
        if plain is not None and plain.returncode == 0:
            extras = ", ".join(profile.sbatch_extra)
            raise ProfileError(
                f"key 'sbatch_extra' ({extras}): no node of the cluster can take a task with it (SLURM: {said}; the same "
                "task without it is accepted); allowed: what the partition's nodes have (`sinfo -N -o '%N %c %m %d %f'`)"
            )


_NO_NODE = "Requested node configuration is not available"


def _test_only(profile: SlurmProfile) -> subprocess.CompletedProcess[str] | None:
    """`sbatch --test-only` of the profile's script (sent as a file, the last argument, as a submission
    is); None where sbatch could not be asked."""
    scratch = Path(tempfile.gettempdir())
    script = render_sbatch(profile, scratch / "preflight", scratch / "sweep-preflight" / "%j", 1)
    try:
        with tempfile.NamedTemporaryFile("w", prefix="sweep-preflight-", suffix=".sh") as file:
            file.write(script)
            file.flush()
            return subprocess.run(["sbatch", "--test-only", file.name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
