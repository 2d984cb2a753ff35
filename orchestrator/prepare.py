"""The launcher's writes into a sweep folder, each one line on failure (a full disk, a read-only mount).

    repair_specs(plan)        rewrite, from the grid, the spec.json of trial folders whose spec.json lies
    set_aside_damaged(plan)   move aside the files of done trials whose result files are damaged
    prepare(plan)             the folders and spec.json of the trials to run
    record_grid(grid, sweep)  the grid file beside the trials (provenance)

orchestrator.sweep calls them after orchestrator.preflight has passed, so a user mistake is
found before anything is written.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.folders import spec_problem, trial_folder
from orchestrator.plan import Plan
from orchestrator.preflight import check_writable
from trainer.errors import UserError
from trainer.files import damaged_results
from trainer.lock import LOCK, TrialBusy, TrialLock, is_locked
from trainer.results import SPEC, STATUS, replace_atomically, write_json
from trainer.status import StatusUnreadable, read_status


def prepare(plan: Plan) -> list[Path]:
    """Create the folders and spec.json of the trials to run; returns their folders.

    spec.json is rewritten each time so its resource fields (device, data root) are those of
    this launch; its science fields are the trial_id's, so a resumed trial trains the same.
    A write that fails (a full disk) is one line naming the file.
    """
    check_writable(plan.sweep)
    folders = []
    for spec in plan.to_run:
        folder = trial_folder(plan.sweep, spec.trial_id)
        with _writing(folder / SPEC):
            folder.mkdir(parents=True, exist_ok=True)
            write_json(spec.to_dict(), folder / SPEC)
        folders.append(folder)
    return folders


def repair_specs(plan: Plan) -> list[str]:
    """Rewrite, from the grid, the spec.json of the grid's trials whose spec.json lies; returns what was repaired.

    The folder's name is the trial id and the grid holds the spec with that id, so the grid's
    spec is the truth (resource fields included: those of this launch). A folder another live
    process holds is left alone (its process read its spec already; it is repaired next time).
    """
    repaired = []
    for spec in plan.specs:
        folder = trial_folder(plan.sweep, spec.trial_id)
        if not folder.is_dir() or (problem := spec_problem(folder)) is None:
            continue
        if problem == "no spec.json" and not (folder / STATUS).exists():
            continue  # nothing there yet: prepare writes it if the trial runs
        if is_locked(folder):
            continue
        with _writing(folder / SPEC):
            write_json(spec.to_dict(), folder / SPEC)
        repaired.append(f"{folder}: {problem}; rewrote spec.json from the grid")
    return repaired


def set_aside_damaged(plan: Plan) -> list[str]:
    """Move the files of each trial to run that is done but whose result files are damaged (the
    plan sees it unreadable: orchestrator.folders.results_checked) into `<trial>/damaged-<time>/`,
    so that it trains anew from epoch 0; returns one line per trial set aside.

    Its rows are gone, so training it again is the only way to have them (on the CPU the same
    numbers; seeded). Nothing is deleted: everything but spec.json and the lock moves, checkpoints
    included. Done under the trial's lock, after looking again: a trial another process holds (an
    analysis job) is left for the next launch.
    """
    lines = []
    for spec in plan.to_run:
        state = plan.states[spec.trial_id]
        if state.state != "unreadable" or state.status.state != "done":
            continue
        folder = state.folder
        try:
            with TrialLock(folder):
                if read_status(folder).state != "done" or (problem := damaged_results(folder)) is None:
                    continue  # changed since the plan looked
                aside = folder / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                with _writing(aside):
                    aside.mkdir()
                    for name in os.listdir(folder):
                        if name not in (SPEC, LOCK, aside.name):
                            os.rename(folder / name, aside / name)
        except (TrialBusy, StatusUnreadable):
            continue
        lines.append(f"{folder}: done, but {problem}; its files are now in {aside.name}/ and it trains anew")
    return lines


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write of the launcher's to `path`: an OSError (full disk, read-only mount) becomes one line."""
    try:
        yield
    except OSError as err:
        for tmp in path.parent.glob(f".{path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({err.strerror or err}); {_remedy(err, path)}") from None


def _remedy(err: OSError, path: Path) -> str:
    """What to do, by what went wrong ("free space there" was said for a folder in the way too)."""
    if err.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):  # a file or folder of the user's where the launcher writes
        return f"something else is in the way there ({path} or a folder above it): move it away, or choose another folder with --results"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: choose another folder with --results"
    return "free space there or choose another folder with --results"


def record_grid(grid_path: Path, sweep: Path) -> None:
    """Keep the grid file that launched the sweep beside its trials (provenance)."""
    tmp = sweep / f".grid.yaml.tmp-{os.getpid()}"
    with _writing(sweep / "grid.yaml"):
        tmp.write_bytes(Path(grid_path).read_bytes())
        replace_atomically(tmp, sweep / "grid.yaml")
