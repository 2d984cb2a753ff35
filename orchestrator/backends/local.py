"""Local backend: groups of trials in worker processes on this machine.

    max_parallel = N   N `python -m trainer.group` workers at a time, each with cores / N threads
                       (orchestrator.runner); a crash or OOM of one never takes the launcher down

A group is one trial or several trained fused (orchestrator.pack forms them). Failed trials are
retried while they have attempts left; a trial another launcher is running is left to it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from orchestrator.backends import Launch
from orchestrator.plan import Plan
from orchestrator.profiles import LocalProfile
from orchestrator.progress import Progress
from orchestrator.runner import Report, Runner, make_slots
from trainer.errors import UserError
from trainer.spec import TrialSpec, quote


class LocalBackend:
    def __init__(self, profile: LocalProfile) -> None:
        self.profile = profile

    def preflight(self, plan: Plan) -> None:
        """The trials train on this machine: the CUDA devices they ask for must be here."""
        check_local_devices(plan.to_run, plan.source)

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        return ""

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        total = sum(len(g) for g in groups)
        progress = Progress(total, "local", folders=[f for g in groups for f in g])

        def show(report: Report, running: int) -> None:
            progress.show(report.states.values(), running)

        runner = Runner(make_slots(self.profile.max_parallel), self.profile.max_attempts, fused=self.profile.fuse > 1, on_change=show)
        # epochs move the line between worker events (a fused group is one worker)
        with checkpoint_on_usr(runner), progress.ticking():
            report = runner.run(groups)
        for line in report.user_errors:
            print(f"error: {line}", file=sys.stderr)
        for folder, why in report.given_up.items():
            print(f"gave up on {folder.name}: {why}", file=sys.stderr)
        return Launch(waited=True)


@contextmanager
def checkpoint_on_usr(runner: Runner) -> Iterator[None]:
    """SIGUSR1 or SIGUSR2 to the launcher (a time limit ahead, or "stop soon, keep the work"): no new
    worker starts, each running one gets SIGUSR1 (a mid-epoch checkpoint at its next step, exit 76),
    and the run returns once they have ended. Other stop signals end the launcher through
    trainer.cli (its workers get SIGTERM and are waited for)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.stop(signal.SIGUSR1)

    signums = [s for s in (signal.SIGUSR1, signal.SIGUSR2) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, stop) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_local_devices(specs: tuple[TrialSpec, ...], where: str) -> None:
    """The local backend trains here: a CUDA device the trials ask for must be on this machine.

    torch is imported only when some trial asks for CUDA (cpu and auto need no check: auto
    falls back to the CPU). SLURM and Ray nodes are other machines, so they are not checked here.
    """
    for device in sorted({s.device for s in specs if s.device.startswith("cuda")}):
        missing = missing_here(device)
        if missing and "no CUDA" in missing:
            raise UserError(
                f"{where}: field 'device' is {quote(device)} but {missing}, and the local backend "
                "trains here; allowed here: auto, cpu (or a cluster backend whose nodes have GPUs)"
            )
        if missing:
            raise UserError(f"{where}: field 'device' is {quote(device)} but {missing}")


def missing_here(device: str) -> str | None:
    """Why `device` (auto, cpu, cuda, cuda:N) is not on this machine, in words; None if it is.

    torch is imported only for a CUDA device (cpu and auto are always here: auto falls back to the CPU).
    """
    if not device.startswith("cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "this machine has no CUDA device"
    if int(device.partition(":")[2] or 0) >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None
