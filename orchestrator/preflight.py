"""The launcher's checks, in one place and one order: every one can fail the launch as one line
(UserError, exit code 2) before anything is written.

    preflight(plan, backend)

What `orchestrator.sweep` has checked before it plans (each also one line, exit code 2): its
arguments; the profile (orchestrator.profiles: keys, types, limits); the grid and every trial
spec (orchestrator.grid, orchestrator.strict, trainer.spec). Then `preflight`, in this order:

1. the results folder takes files (check_writable): a read-only or missing mount says so first;
2. the engine's own checks (Backend.preflight: this machine's CUDA devices for local, the
   profile and the cluster address for Ray, the commands and partition for SLURM);
3. the data of every (data set, root, cache) the trials to run read (trainer.data.preflight_data);
4. room on the results disk for one checkpoint and its rows (check_space; a warning when the
   trials to run will keep more than is free).

A --dry-run writes nothing, so it runs none of them.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from orchestrator.backends import Backend
from orchestrator.folders import write_problem
from orchestrator.plan import Plan
from trainer.errors import UserError
from trainer.registry import CHECKPOINT_BYTES
from trainer.spec import TrialSpec

ROWS_BYTES = 1_000_000


def preflight(plan: Plan, backend: Backend) -> None:
    """Every check that can fail the launch of `plan` on `backend`, in the order of the module docstring."""
    # trainer.data imports torch (1.5 s of CPU): here, not at the top, so that a --dry-run, which
    # imports this module but checks nothing, does without it.
    from trainer.data import preflight_data

    check_writable(plan.sweep)
    backend.preflight(plan)
    for dataset, root, cache in sorted({(s.dataset, s.resolved_data_root(), s.cache_dir or "") for s in plan.to_run}):
        preflight_data(dataset, root, cache or None)
    check_space(plan.sweep, plan.to_run)


def check_space(sweep: Path, specs: Iterable[TrialSpec]) -> None:
    """One line, before anything is written, when the results folder cannot hold one more checkpoint.

    A trial keeps its previous checkpoint while writing the next, so it needs at least one
    checkpoint's room (plus its rows) free to make any progress; less, and every attempt would
    fail with ENOSPC. More room than that is not required: a disk that fills up later fails
    trials, which launchers record and stop retrying after their attempts.
    """
    specs = list(specs)
    need = max((CHECKPOINT_BYTES.get(s.model, {}).get(s.dataset, 0) + ROWS_BYTES for s in specs), default=0)
    if not need:
        return
    probe = sweep
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # check_writable says what is wrong with the folder
    if free < need:
        raise UserError(
            f"results folder {sweep} has {free / 1e6:.1f} MB free; a trial needs at least {need / 1e6:.1f} MB "
            "(a checkpoint and its rows); free space there or choose another folder with --results"
        )
    # What the trials keep by the end (each kept checkpoint is its own file once the rolling one moves
    # on): not required up front (disks get cleaned while sweeps run), but said, since a disk that
    # fills mid-sweep fails trials one by one.
    total = sum((len(s.kept_epochs()) + 1) * CHECKPOINT_BYTES.get(s.model, {}).get(s.dataset, 0) + ROWS_BYTES for s in specs)
    if free < total:
        print(
            f"warning: results folder {sweep} has {_size(free)} free; the {len(specs)} trial(s) to run keep about {_size(total)} "
            "(the checkpoints keep_checkpoints keeps, and rows): trials fail with 'No space left on device' once it fills",
            file=sys.stderr,
        )


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_writable(sweep: Path) -> None:
    """Fail with one line, before anything is written, if the results folder cannot take files.

    A real probe (a temp file, removed at once) rather than os.access, which says yes to root
    even on a read-only mount.
    """
    if (err := write_problem(sweep)) is not None:
        raise UserError(f"results folder {sweep} is not writable ({err.strerror or err}); choose another with --results")
