"""What the after-training launchers share: the sweep argument's checks, and a pool of per-trial jobs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from orchestrator.backends.local import missing_here
from orchestrator.folders import check_writes, sweep_folder
from orchestrator.progress import Progress
from orchestrator.runner import WorkerPool, last_line, make_slots
from trainer import results as R
from trainer.analysis.plan_record import PlanMismatch
from trainer.cli import EXIT_BUSY, EXIT_DONE
from trainer.errors import UserError
from trainer.spec import DEVICE, TrialSpec, quote

MAX_PARALLEL = 1024  # as orchestrator.sweep's --max-parallel


def check_sweep(sweep: Path, max_parallel: int, device: str | None = None) -> None:
    """One line, before anything runs, for a folder that is no sweep, a worker count out of range,
    or a --device that is no device or is not on this machine (the jobs run here)."""
    sweep_folder(sweep)
    check_writes(sweep, "the job")
    if not 1 <= max_parallel <= MAX_PARALLEL:
        raise UserError(f"--max-parallel is {max_parallel}; allowed: 1 to {MAX_PARALLEL}")
    if device is None:
        return
    if not DEVICE.fullmatch(device):
        raise UserError(f"--device is {quote(device)}; allowed: auto, cpu, cuda, cuda:N")
    missing = missing_here(device)
    if missing:
        also = ", or one of those" if "cuda:0" in missing else ""
        raise UserError(f"--device is {quote(device)} but {missing} (the jobs run here); allowed here: auto, cpu{also}")


def trial_specs(folders: list[Path]) -> list[TrialSpec]:
    """The trials' specs (done trials: their spec.json was checked when they ran)."""
    return [TrialSpec.from_dict(R.read_json(f / R.SPEC), where=str(f / R.SPEC)) for f in folders]


def check_trial_devices(specs: list[TrialSpec]) -> None:
    """Without --device each job runs on its trial's `device`: one this machine lacks is one line, before
    anything runs, rather than a failure per trial (a sweep trained on a GPU cluster, analysed on a laptop)."""
    for device in sorted({s.device for s in specs if s.device.startswith("cuda")}):
        missing = missing_here(device)
        if missing:
            raise UserError(f"the trials' field 'device' is {quote(device)} but {missing}; pass --device cpu (or auto)")


def run_pool(module: str, jobs: list[tuple[Path, list[str]]], max_parallel: int, label: str, log: str) -> list[str]:
    """`python -m <module> --trial <folder> <args>` per (folder, args), output in <folder>/<log>;
    returns the failures, one line each (a trial busy in another process counts as done)."""
    pool = WorkerPool(make_slots(max_parallel))
    progress = Progress(len(jobs), label)
    failed: list[str] = []
    queue, done = list(jobs), 0
    while queue or pool.running:
        while queue and pool.free:
            folder, args = queue.pop(0)
            pool.start([sys.executable, "-m", module, "--trial", str(folder), *args], folder, folder / log)
        key, code = pool.wait()  # whichever ends first
        folder = Path(str(key))
        if code in (EXIT_DONE, EXIT_BUSY):  # busy: another process works on it right now
            done += 1
        else:
            failed.append(f"{folder.name}: {last_line(folder / log)}")
        progress.update(done, len(failed), len(pool.running), folder.name)
    return failed


def to_do(folders: list[Path], work: Callable[[int], int]) -> list[Path]:
    """The folders with something left to measure (`work(i)`: how much, for folders[i]), asked
    before any worker starts, so that a rerun over finished trials starts none (each start imports
    torch: seconds per trial). Trials whose files hold rows of other settings are one line for the
    whole launch (the first named, the others counted); a trial whose files cannot be read here is
    left to its job, which says why."""
    todo: list[Path] = []
    other: list[PlanMismatch] = []
    for i, folder in enumerate(folders):
        try:
            if work(i) > 0:
                todo.append(folder)
        except PlanMismatch as err:
            other.append(err)
        except (UserError, OSError, ValueError, pa.ArrowException):
            todo.append(folder)
    if other:
        n = len(other) - 1
        more = f" ({n} more trial{'s' if n > 1 else ''} likewise)" if n else ""
        raise PlanMismatch(f"{other[0]}{more}")
    return todo
