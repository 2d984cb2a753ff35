"""Planning: which of a grid's trials still need running, given the trial folders on disk.

    plan = make_plan(grid.specs, sweep_dir(results, grid.name), max_attempts)
    plan.to_run        the trials a launcher hands to orchestrator.pack, then to the backend

Reading the folders is orchestrator.folders; the launcher's checks before it writes are
orchestrator.preflight, its writes orchestrator.prepare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.folders import results_checked, trials_dir
from trainer.spec import TrialSpec
from trainer.status import TrialState, observe

DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Plan:
    sweep: Path
    specs: tuple[TrialSpec, ...]
    states: dict[str, TrialState]  # of the grid's trials
    to_run: tuple[TrialSpec, ...]
    source: str = "grid"  # the file the trials' settings come from, for messages (a grid, or a profile that overrides them)

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s.state == state)


def make_plan(specs: Iterable[TrialSpec], sweep: Path, max_attempts: int = DEFAULT_MAX_ATTEMPTS, source: str = "grid") -> Plan:
    """Which of `specs` still need running, given the trial folders on disk (a done trial whose
    result files are damaged runs again: orchestrator.folders.results_checked)."""
    specs = tuple(specs)
    states = {}
    trials = trials_dir(sweep)  # one join per trial below, not two (issue 25)
    for spec in specs:
        folder = trials / spec.trial_id
        states[spec.trial_id] = results_checked(observe(folder)) if folder.exists() else TrialState(spec.trial_id, folder, "pending")
    to_run = tuple(s for s in specs if states[s.trial_id].runnable(max_attempts))
    return Plan(sweep, specs, states, to_run, source)
