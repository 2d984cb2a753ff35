"""The sweep's folders and the states of its trials, read from disk (every command uses this).

    <results>/<sweep>/trials/<trial_id>/   one folder per trial: spec.json, status.json, rows, checkpoints

Everything rests on the trial folders, never on Ray's or submitit's bookkeeping, so a sweep can
move between backends and a launcher can exit at any time: the next `sweep` or `status` reads the
same truth. A trial's state is what `trainer.status.observe` makes of its status.json and its
lock (pending, running, interrupted, done, failed, or unreadable).

Only real trials count. A folder under trials/ whose name is not a 12-hex trial id (`notes/`,
a backup) is ignored, with one warning per command. A trial folder whose spec.json does not
hash to the folder's name (garbage, missing, edited by hand) is never trusted: `scan` shows it
as unreadable, and a launcher whose grid holds that trial id rewrites spec.json from the grid
(orchestrator.prepare.repair_specs): the folder name is the trial's identity, and the grid's
spec for it is the truth.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from trainer.errors import UserError
from trainer.files import SPEC, STATUS, damaged_results, read_bytes
from trainer.spec import SpecError, TrialSpec
from trainer.status import TrialState, observe

TRIAL_ID = re.compile(r"[0-9a-f]{12}")

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def sweep_dir(results_root: str | Path, name: str) -> Path:
    return Path(results_root) / name


def trials_dir(sweep: Path) -> Path:
    return sweep / "trials"


def trial_folder(sweep: Path, trial_id: str) -> Path:
    return trials_dir(sweep) / trial_id


def is_trial_id(name: str) -> bool:
    return TRIAL_ID.fullmatch(name) is not None


def sweep_folder(path: Path) -> Path:
    """`path` if it is a sweep folder (it holds trials/), else one UserError line that says what to
    pass: the sweep above a trial folder, the sweeps inside a results root (every command that takes
    a sweep folder: status, collect, cancel, ablate, represent, robust)."""
    if not path.exists():
        raise UserError(f"{path}: no such folder; pass a sweep folder, e.g. results/<sweep>")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; pass a sweep folder, e.g. results/<sweep>")
    if (path / "trials").is_dir():
        return path
    if (path / SPEC).is_file() or path.name == "trials":
        hint = path.parent.parent if path.name != "trials" else path.parent
        what = "the trials folder" if path.name == "trials" else "a trial folder"
        raise UserError(f"{path}: {what}, not a sweep; pass the sweep folder {hint}")
    with os.scandir(path) as it:
        sweeps = sorted(e.name for e in it if e.is_dir() and os.path.isdir(os.path.join(e.path, "trials")))
    if sweeps:
        shown = ", ".join(str(path / s) for s in sweeps[:5]) + (" ..." if len(sweeps) > 5 else "")
        raise UserError(f"{path}: a results root, not a sweep folder; pass one of: {shown}")
    inside = next((up for up in list(path.parents)[:3] if _holds_trials(up)), None)
    if inside is not None:  # its summary/, summary/figures/, slurm/<job>/ or .ray/
        raise UserError(f"{path}: a folder inside the sweep {inside}, not a sweep; pass the sweep folder {inside}")
    raise UserError(f"{path}: not a sweep folder (no trials/ inside); expected <results>/<sweep>/trials/<trial_id>/")


def write_problem(path: Path) -> OSError | None:
    """Why this machine cannot write at `path` (its nearest existing folder), or None. A real probe
    (a temp file, removed at once), not os.access, which says yes to root on a read-only mount."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        return err
    return None


def check_writes(sweep: Path, command: str) -> None:
    """One line if `command` (which writes into the sweep folder and its trial folders) cannot write
    there: a read-only mount, another user's sweep. A real probe (a temp file in trials/, removed at
    once), not os.access, which says yes to root even on a read-only mount."""
    if (err := write_problem(trials_dir(sweep))) is not None:
        raise UserError(
            f"{sweep}: not writable ({err.strerror or err}); {command} writes into the sweep's trial folders: "
            "run it where you may write, or on a copy of the sweep folder"
        ) from None


def check_results_root(root: Path, sweep: Path) -> None:
    """One line if the results root `root` is a sweep folder or a folder inside one (`--results
    results/digits` for `--results results`), unless `sweep` (the grid's folder under it) already
    is a sweep: a new sweep would nest inside the other, retraining every trial one level down."""
    if (sweep / "trials").is_dir():
        return
    inside = next((up for up in [root, *list(root.parents)[:3]] if up.is_dir() and _holds_trials(up)), None)
    if inside is not None:
        what = "the sweep folder" if inside == root else "a folder inside the sweep"
        raise UserError(
            f"--results {root}: {what} {inside}, not a results root (the sweep would land inside it, at {sweep}); "
            f"allowed: the folder that holds the sweeps, e.g. --results {inside.parent}"
        )


def _holds_trials(folder: Path) -> bool:
    """Is `folder` a sweep (a trial folder in its trials/), not any folder that has a folder named trials?"""
    try:
        return bool(trial_folders(folder, warn=None))
    except OSError:  # unreadable: not taken for a sweep; the caller's plain message stands
        return False


def trial_folders(sweep: Path, warn: Warn | None = _warn) -> list[Path]:
    """The folders under `<sweep>/trials/` named like a trial id, sorted; one warning names the others."""
    trials = trials_dir(sweep)
    if not trials.is_dir():
        return []
    with os.scandir(trials) as it:
        entries = [(e.name, e.is_dir()) for e in it]
    # Sorted by name, then made paths: the order of sorted paths, without ~120,000 Path comparisons at 10,000 trials.
    folders = [trials / name for name in sorted(name for name, is_dir in entries if is_dir and is_trial_id(name))]
    others = sorted(name for name, is_dir in entries if not (is_dir and is_trial_id(name)) and not name.startswith("."))
    if others and warn is not None:
        shown = ", ".join(repr(n)[:40] for n in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        warn(f"{trials}: ignored {len(others)} entr{'y' if len(others) == 1 else 'ies'} not named by a trial id (12 hex digits): {shown}")
    return folders


def spec_problem(folder: Path) -> str | None:
    """Why `folder/spec.json` does not prove the folder's trial (None: it does); short, for one line.

    Missing, unreadable, not a valid spec, or the spec of another trial (its hash is not the
    folder's name: edited by hand, or copied from elsewhere).
    """
    return _proven_spec(folder)[1]


def _proven_spec(folder: Path) -> tuple[TrialSpec | None, str | None]:
    """(the spec that proves the folder's trial, None) or (None, why there is none: `spec_problem`)."""
    try:
        spec = _read_spec(f"{os.fspath(folder)}/{SPEC}")  # a str path: no pathlib join per trial (issue 25)
    except FileNotFoundError:
        return None, "no spec.json"
    except OSError as err:
        return None, f"spec.json unreadable ({err.strerror or err})"
    except SpecError as err:
        return None, f"spec.json is no valid spec ({str(err).removeprefix('spec.json: ')[:40]})"
    except ValueError:  # not JSON, not UTF-8
        return None, "spec.json is not JSON"
    if spec.trial_id != folder.name:
        return None, f"spec.json hashes to {spec.trial_id}, not the folder's id"
    return spec, None


REPAIR_HINT = "rerun the sweep to repair it from the grid"
STATUS_HINT = "rerun the sweep, the trial's next attempt rebuilds it"
RETRAIN_HINT = "rerun the sweep: it sets the trial's files aside and trains it anew"


def retrain_hint(folder: Path) -> str:
    """ "; " and the fix, for a done trial whose rows the collector cannot use, where the launcher
    sees the damage too (`results_checked`) and so trains the trial anew on a rerun; "" where it
    does not (damage inside a page, rows missing from a whole file: rare, and left to the user)."""
    return f"; {RETRAIN_HINT}" if damaged_results(folder) is not None else ""


def results_checked(state: TrialState) -> TrialState:
    """A done trial whose result files are missing or damaged (trainer.files.damaged_results) is
    not done: it is `unreadable`, with the fix. Its rows are gone, so nothing but training it again
    brings them back; the launcher does that (orchestrator.prepare.set_aside_damaged), keeping the
    old files. Without this the trial stayed `done` for ever, skipped by every collect."""
    if state.state != "done" or (problem := damaged_results(state.folder)) is None:
        return state
    return TrialState(state.trial_id, state.folder, "unreadable", state.status, reason=f"done, but {problem}; {RETRAIN_HINT}")


def scan(sweep: Path, warn: Warn | None = _warn) -> dict[str, TrialState]:
    """States of every trial folder of a sweep, by trial_id (what `orchestrator.status` shows).

    A folder whose spec.json does not prove its trial is `unreadable`, with the reason and the
    fix, whatever its status.json says: a done trial whose spec is garbage is not done, nor is one
    whose result files are missing or damaged (`results_checked`).
    """
    return scan_with_specs(sweep, warn)[0]


def scan_with_specs(sweep: Path, warn: Warn | None = _warn) -> tuple[dict[str, TrialState], dict[str, TrialSpec]]:
    """`scan`, and the specs it read on the way: {trial_id: spec} for each trial whose spec.json proves
    it (not looked at for running trials). `status` shows them without reading spec.json again (issue 25)."""
    out, specs = {}, {}
    for folder in trial_folders(sweep, warn):
        state = observe(folder)
        spec, problem = _proven_spec(folder) if state.state != "running" else (None, None)
        if spec is not None:
            specs[folder.name] = spec
        if problem is not None:
            if problem == "no spec.json" and not (folder / STATUS).exists():
                state = TrialState(folder.name, folder, "pending")  # a folder just made, or left empty
            else:
                state = TrialState(folder.name, folder, "unreadable", state.status, reason=f"{problem}; {REPAIR_HINT}")
        elif state.state == "unreadable":  # status.json: the next attempt rebuilds it from the folder
            detail = (state.reason or "").replace(f"{folder / STATUS}: ", "").removeprefix("status.json unreadable ")
            reason = f"status.json unreadable: {STATUS_HINT} {detail[:80]}"
            state = TrialState(folder.name, folder, "unreadable", state.status, reason=reason)
        out[folder.name] = results_checked(state)
    return out, specs


def load_spec(folder: Path) -> TrialSpec:
    """The trial's spec from its spec.json; ValueError (SpecError) unless it hashes to the folder's name."""
    try:
        spec = _read_spec(folder / SPEC)
    except SpecError as err:
        raise SpecError(f"{folder / SPEC}: {str(err).removeprefix('spec.json: ')}") from None
    if spec.trial_id != folder.name and is_trial_id(folder.name):
        raise SpecError(f"{folder / SPEC}: hashes to {spec.trial_id}, not the folder's id; {REPAIR_HINT}")
    return spec


def _read_spec(path: str | Path) -> TrialSpec:
    """The spec in `path`; raises what reading, decoding (UTF-8), json.loads and TrialSpec.from_dict (where: "spec.json") raise."""
    return _parse_spec(read_bytes(os.fspath(path)).decode())


@functools.lru_cache(maxsize=1 << 15)
def _parse_spec(text: str) -> TrialSpec:
    """One parse per distinct spec.json text: `status` checks every spec in `scan`, then shows it, and
    parsing 10,000 specs twice cost 1.5 s (issue 25). Keyed by the text, so never stale."""
    return TrialSpec.from_dict(json.loads(text), "spec.json")
