"""Local backend: groups of trials in worker processes on this machine.

    max_parallel = N   N `python -m trainer.group` workers at a time, each with cores / N threads
                       (orchestrator.runner); a crash or OOM of one never takes the launcher down

A group is one trial or several trained fused (orchestrator.pack forms them). Failed trials are
retried while they have attempts left; a trial another launcher is running is left to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.backends import Launch
from orchestrator.plan import Plan
from orchestrator.profiles import LocalProfile
from orchestrator.progress import Progress
from orchestrator.runner import Report, Runner, make_slots


class LocalBackend:
    def __init__(self, profile: LocalProfile) -> None:
        self.profile = profile

    def preflight(self, plan: Plan) -> None:
        """Nothing beyond what the sweep checks for every engine (grid, profile, data, device)."""

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        return ""

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        total = sum(len(g) for g in groups)
        progress = Progress(total, "local")

        def show(report: Report, running: int) -> None:
            progress.show(report.states.values(), running)

        runner = Runner(make_slots(self.profile.max_parallel), self.profile.max_attempts, fuse=self.profile.fuse > 1, on_change=show)
        report = runner.run(groups)
        for line in report.user_errors:
            print(f"error: {line}", file=sys.stderr)
        for folder, why in report.given_up.items():
            print(f"gave up on {folder.name}: {why}", file=sys.stderr)
        return Launch(waited=True)
