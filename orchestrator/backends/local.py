"""Local backend: groups of trials on this machine, in this process or in N worker processes.

    max_parallel = 1   groups run one after another inside the launcher (no start-up cost:
                       torch is imported once)
    max_parallel = N   N `python -m trainer.group` processes at a time, each with cores/N threads;
                       a crash or OOM of one group never takes the launcher down

A group is one trial or several trained fused (trainer.group; orchestrator.pack forms them).
A failed trial (not a diverged one) is tried again, resuming from its checkpoint, until it has
had `max_attempts`; its group goes again with those of its members that still need running.
A trial another launcher is running is left to it.
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
from trainer.cli import EXIT_USER
from trainer.errors import UserError
from trainer.group import run_group
from trainer.results import SPEC

LOG = "trainer.log"


def run_local(groups: list[list[Path]], profile: LocalProfile) -> None:
    """Run the groups of trials (their spec.json paths) until each trial is done, failed or busy elsewhere."""
    folder_groups = [[p.parent for p in g] for g in groups]
    progress = Progress(sum(len(g) for g in groups), "local")
    if profile.max_parallel <= 1:
        _run_in_process(folder_groups, profile, progress)
    else:
        _run_in_workers(folder_groups, profile, progress)


class _Tally:
    """Finished trials for the progress line."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.finished: dict[Path, TrialState] = {}

    def add(self, states: list[TrialState], running: int) -> None:
        for s in states:
            self.finished[s.folder] = s
        done = sum(s.state == "done" for s in self.finished.values())
        failed = sum(s.state == "failed" for s in self.finished.values())
        note = " ".join(f"{s.trial_id} {s.state}" for s in states[:3]) + (f" +{len(states) - 3}" if len(states) > 3 else "")
        self.progress.update(done, failed, running, note)


def _runnable(folders: list[Path], profile: LocalProfile) -> tuple[list[Path], list[TrialState]]:
    """The members to (re)run now, and the states of the others (finished, or run elsewhere)."""
    states = [read_state(f) for f in folders]
    todo = [s.runnable(profile.max_attempts) for s in states]
    return [s.folder for s, t in zip(states, todo) if t], [s for s, t in zip(states, todo) if not t]


def _run_in_process(groups: list[list[Path]], profile: LocalProfile, progress: Progress) -> None:
    tally = _Tally(progress)
    for group in groups:
        todo = _runnable(group, profile)[0]
        while todo:
            try:
                states = run_group([load_spec(f) for f in todo], todo, fuse=profile.fuse > 1)
                busy = [f for f, state in zip(todo, states) if state == "busy"]
            except UserError as err:
                print(f"error: {', '.join(f.name for f in todo)}: {err}", file=sys.stderr)
                break  # a user mistake fails the same way again
            except Exception:  # recorded in each member's status.json; retried below
                traceback.print_exc()
                busy = []
            todo = [f for f in _runnable(todo, profile)[0] if f not in busy]  # busy: another launcher's
        tally.add([read_state(f) for f in group], 0)


def _run_in_workers(groups: list[list[Path]], profile: LocalProfile, progress: Progress) -> None:
    threads = max(1, (os.cpu_count() or 1) // profile.max_parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue = list(groups)
    running: dict[subprocess.Popen[bytes], list[Path]] = {}
    tally = _Tally(progress)
    try:
        while queue or running:
            while queue and len(running) < profile.max_parallel:
                group = queue.pop(0)
                todo, ended = _runnable(group, profile)
                if ended:
                    tally.add(ended, len(running))
                if not todo:
                    continue
                for f in todo[1:]:  # one process, one log: the first member's
                    with open(f / LOG, "a") as note:
                        note.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} trains fused with {todo[0].name}: output in {todo[0] / LOG}\n")
                with open(todo[0] / LOG, "ab") as log:
                    args = [a for f in todo for a in ("--spec", str(f / SPEC))] + (["--no-fuse"] if profile.fuse == 1 else [])
                    running[subprocess.Popen([sys.executable, "-m", "trainer.group", *args], stdout=log, stderr=subprocess.STDOUT, env=env)] = todo
            time.sleep(0.2)
            for proc, group in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[proc]
                todo, ended = _runnable(group, profile)
                if code == EXIT_USER:
                    print(f"error: {', '.join(f.name for f in group)}: {_last_line(group[0] / LOG)}", file=sys.stderr)
                    todo, ended = [], [read_state(f) for f in group]
                elif todo and code != 0:  # crashed or killed (busy members come back not runnable): resume
                    queue.append(todo)
                    todo = []
                tally.add(ended + [read_state(f) for f in todo], len(running))
    finally:
        for proc in running:  # interrupted launcher: stop the workers; they resume next time
            proc.terminate()
        for proc in running:
            proc.wait()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "see its trainer.log"
    return lines[-1] if lines else "see its trainer.log"
