"""Engines that run a sweep's trial folders: one interface, one module per engine, imported lazily.

    backend = backend_for(profile)      # the profile's `backend` key picks it; ray / submitit load only here
    backend.preflight(plan)             # the engine's own checks, before anything is written
    launch = backend.run(groups, sweep) # groups of trial folders (orchestrator.pack); returns a Launch

| engine  | what runs a group                                 | module                       |
| local   | a worker process on this machine                  | orchestrator.backends.local  |
| ray     | a Ray Tune trial (on a private Ray or a cluster)  | orchestrator.backends.ray    |
| slurm   | a task of a submitit job array                    | orchestrator.backends.slurm  |

Whatever the engine, the group's trials run through orchestrator.runner (worker processes that
run `python -m trainer.group`), and every outcome lands in the trial folders: the launcher reads
them afterwards, never the engine's own bookkeeping.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.plan import Plan
    from orchestrator.profiles import Profile


@dataclass(frozen=True)
class Launch:
    """What `Backend.run` did: `waited` True when every group ended before it returned."""

    waited: bool
    note: str = ""  # what the user should know (e.g. how to follow submitted jobs)
    unsubmitted: int = 0  # trials a submit limit held back (engines that do not wait): the launch is not finished


class Backend(Protocol):
    """An engine that runs groups of trial folders."""

    def preflight(self, plan: Plan) -> None:
        """Raise UserError (one line) for anything that would fail the launch, before anything is written."""
        ...

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        """Run (or submit) the groups; outcomes land in the trial folders."""
        ...

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        """What `run` would submit, for --dry-run (e.g. the sbatch script); '' if nothing to add."""
        ...


# name -> (module, class): imported only when chosen, so ray and submitit load only for their engine.
ENGINES: dict[str, tuple[str, str]] = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "ray": ("orchestrator.backends.ray", "RayBackend"),
    "slurm": ("orchestrator.backends.slurm", "SlurmBackend"),
}


def backend_for(profile: Profile) -> Backend:
    module, name = ENGINES[profile.backend]
    backend: Backend = getattr(importlib.import_module(module), name)(profile)
    return backend
