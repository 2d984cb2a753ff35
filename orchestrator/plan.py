"""Trial folders and their states: what is done, what runs, what is left to run.

Everything rests on the trial folders (`<root>/<sweep>/trials/<trial_id>/`), never on Ray's or
submitit's bookkeeping, so a sweep can move between backends and a launcher can exit at any
time: the next `sweep` or `status` reads the same truth. A trial's state is what
`trainer.status.observe` makes of its status.json and its lock (pending, running, interrupted,
done, failed, or unreadable).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError
from trainer.results import SPEC, read_json, replace_atomically, write_json
from trainer.spec import TrialSpec
from trainer.status import TrialState, observe

DEFAULT_MAX_ATTEMPTS = 3


def sweep_dir(results_root: str | Path, name: str) -> Path:
    return Path(results_root) / name


def trial_folder(sweep: Path, trial_id: str) -> Path:
    return sweep / "trials" / trial_id


def scan(sweep: Path) -> dict[str, TrialState]:
    """States of every trial folder of a sweep, by trial_id."""
    trials = sweep / "trials"
    if not trials.is_dir():
        return {}
    with os.scandir(trials) as it:
        folders = sorted(Path(e.path) for e in it if e.is_dir())
    return {f.name: observe(f) for f in folders}


@dataclass(frozen=True)
class Plan:
    sweep: Path
    specs: tuple[TrialSpec, ...]
    states: dict[str, TrialState]  # of the grid's trials
    to_run: tuple[TrialSpec, ...]

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s.state == state)


def make_plan(specs: Iterable[TrialSpec], sweep: Path, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Plan:
    """Which of `specs` still need running, given the trial folders on disk."""
    specs = tuple(specs)
    states = {}
    for spec in specs:
        folder = trial_folder(sweep, spec.trial_id)
        states[spec.trial_id] = observe(folder) if folder.exists() else TrialState(spec.trial_id, folder, "pending")
    to_run = tuple(s for s in specs if states[s.trial_id].runnable(max_attempts))
    return Plan(sweep, specs, states, to_run)


def prepare(plan: Plan) -> list[Path]:
    """Create the folders and spec.json of the trials to run; returns their folders.

    spec.json is rewritten each time so its resource fields (device, data root) are those of
    this launch; its science fields are the trial_id's, so a resumed trial trains the same.
    """
    check_writable(plan.sweep)
    folders = []
    for spec in plan.to_run:
        folder = trial_folder(plan.sweep, spec.trial_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(spec.to_dict(), folder / SPEC)
        folders.append(folder)
    return folders


def record_grid(grid_path: Path, sweep: Path) -> None:
    """Keep the grid file that launched the sweep beside its trials (provenance)."""
    tmp = sweep / f".grid.yaml.tmp-{os.getpid()}"
    tmp.write_bytes(Path(grid_path).read_bytes())
    replace_atomically(tmp, sweep / "grid.yaml")


def check_writable(sweep: Path) -> None:
    """Fail with one line, before anything is written, if the results folder cannot take files.

    A real probe (a temp file, removed at once) rather than os.access, which says yes to root
    even on a read-only mount.
    """
    probe = sweep
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UserError(f"results folder {sweep} is not writable ({err.strerror or err}); choose another with --results") from None


def load_spec(folder: Path) -> TrialSpec:
    return TrialSpec.from_dict(read_json(folder / SPEC), where=str(folder / SPEC))
