"""What the after-training launchers share: the sweep argument's checks, and a pool of per-trial jobs."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.progress import Progress
from orchestrator.runner import WorkerPool, last_line, make_slots
from trainer.cli import EXIT_BUSY, EXIT_DONE
from trainer.errors import UserError


def check_sweep(sweep: Path, max_parallel: int) -> None:
    """One line, before anything runs, for a folder that is no sweep or a worker count below 1."""
    if not (sweep / "trials").is_dir():
        raise UserError(f"{sweep}: not a sweep folder (no trials/ inside); give <results>/<grid name>")
    if max_parallel < 1:
        raise UserError(f"--max-parallel is {max_parallel}; allowed: >= 1")


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
