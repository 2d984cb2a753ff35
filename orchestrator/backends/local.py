"""Local backend: trials on this machine, in this process or in N worker processes.

    max_parallel = 1   trials run one after another inside the launcher (no start-up cost:
                       torch is imported once)
    max_parallel = N   N `python -m trainer.run` processes at a time, each with cores/N threads;
                       a crash or OOM of one trial never takes the launcher down

A failed trial (not a diverged one) is tried again, resuming from its checkpoint, until it has
had `max_attempts`. A trial another launcher is running is left to it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from orchestrator.plan import TrialState, load_spec, read_state
from orchestrator.profiles import LocalProfile
from orchestrator.progress import Progress
from trainer.errors import UserError
from trainer.lock import TrialBusy
from trainer.cli import EXIT_BUSY, EXIT_USER
from trainer.run import run_trial

LOG = "trainer.log"


def run_local(spec_paths: list[Path], profile: LocalProfile) -> None:
    """Run the trials whose spec.json are `spec_paths` until each is done, failed or busy elsewhere."""
    folders = [p.parent for p in spec_paths]
    progress = Progress(len(folders), "local")
    if profile.max_parallel <= 1:
        _run_in_process(folders, profile, progress)
    else:
        _run_in_workers(folders, profile, progress)


def _tally(states: list[TrialState]) -> tuple[int, int]:
    return sum(s.state == "done" for s in states), sum(s.state == "failed" for s in states)


def _run_in_process(folders: list[Path], profile: LocalProfile, progress: Progress) -> None:
    finished: list[TrialState] = []
    for folder in folders:
        state = read_state(folder)
        while state.runnable(profile.max_attempts):
            try:
                run_trial(load_spec(folder), folder)
            except TrialBusy:
                break  # another launcher runs it; its result lands in the same folder
            except UserError as err:
                print(f"error: {folder.name}: {err}", file=sys.stderr)
                state = read_state(folder)
                break  # a user mistake fails the same way again
            except Exception:  # recorded in status.json by run_trial; retried below
                traceback.print_exc()
            state = read_state(folder)
        finished.append(state)
        done, failed = _tally(finished)
        progress.update(done, failed, 0, f"{folder.name} {state.state}")


def _run_in_workers(folders: list[Path], profile: LocalProfile, progress: Progress) -> None:
    threads = max(1, (os.cpu_count() or 1) // profile.max_parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue = list(folders)
    running: dict[Path, subprocess.Popen[bytes]] = {}
    finished: list[TrialState] = []
    try:
        while queue or running:
            while queue and len(running) < profile.max_parallel:
                folder = queue.pop(0)
                state = read_state(folder)
                if not state.runnable(profile.max_attempts):
                    finished.append(state)
                    continue
                with open(folder / LOG, "ab") as log:
                    running[folder] = subprocess.Popen(
                        [sys.executable, "-m", "trainer.run", "--spec", str(folder / "spec.json")],
                        stdout=log, stderr=subprocess.STDOUT, env=env,
                    )  # fmt: skip
            time.sleep(0.2)
            for folder, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[folder]
                state = read_state(folder)
                if code not in (EXIT_BUSY, EXIT_USER) and state.runnable(profile.max_attempts):
                    queue.append(folder)  # crashed: resume from its checkpoint
                    continue
                if code == EXIT_USER:
                    print(f"error: {folder.name}: {_last_line(folder / LOG)}", file=sys.stderr)
                finished.append(state)
                done, failed = _tally(finished)
                progress.update(done, failed, len(running), f"{folder.name} {state.state}")
    finally:
        for proc in running.values():  # interrupted launcher: stop the workers; they resume next time
            proc.terminate()
        for proc in running.values():
            proc.wait()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "see its trainer.log"
    return lines[-1] if lines else "see its trainer.log"
