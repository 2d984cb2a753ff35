"""Trial folders and their states: what is done, what runs, what is left to run.

Everything rests on the trial folders (`<root>/<sweep>/trials/<trial_id>/`), never on Ray's or
submitit's bookkeeping, so a sweep can move between backends and a launcher can exit at any
time: the next `sweep` or `status` reads the same truth. A trial's state is what
`trainer.status.observe` makes of its status.json and its lock (pending, running, interrupted,
done, failed, or unreadable).

Only real trials count. A folder under trials/ whose name is not a 12-hex trial id (`notes/`,
a backup) is ignored, with one warning per command. A trial folder whose spec.json does not
hash to the folder's name (garbage, missing, edited by hand) is never trusted: `scan` shows it
as unreadable, and a launcher whose grid holds that trial id rewrites spec.json from the grid
(`repair_specs`): the folder name is the trial's identity, and the grid's spec for it is the
truth. A launcher also refuses to start when the results folder lacks the room for one
checkpoint (`check_space`), so a full disk is one line, not a crash loop.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError
from trainer.lock import is_locked
from trainer.registry import CHECKPOINT_BYTES
from trainer.results import SPEC, STATUS, read_json, replace_atomically, write_json
from trainer.spec import SpecError, TrialSpec
from trainer.status import TrialState, observe

DEFAULT_MAX_ATTEMPTS = 3
TRIAL_ID = re.compile(r"[0-9a-f]{12}")
ROWS_BYTES = 1_000_000

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def sweep_dir(results_root: str | Path, name: str) -> Path:
    return Path(results_root) / name


def trial_folder(sweep: Path, trial_id: str) -> Path:
    return sweep / "trials" / trial_id


def is_trial_id(name: str) -> bool:
    return TRIAL_ID.fullmatch(name) is not None


def trial_folders(sweep: Path, warn: Warn | None = _warn) -> list[Path]:
    """The folders under `<sweep>/trials/` named like a trial id, sorted; one warning names the others."""
    trials = sweep / "trials"
    if not trials.is_dir():
        return []
    with os.scandir(trials) as it:
        entries = [(e.name, e.is_dir()) for e in it]
    folders = sorted(trials / name for name, is_dir in entries if is_dir and is_trial_id(name))
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
    path = folder / SPEC
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return "no spec.json"
    except OSError as err:
        return f"spec.json unreadable ({err.strerror or err})"
    except ValueError:  # not JSON, not UTF-8
        return "spec.json is not JSON"
    try:
        spec = TrialSpec.from_dict(raw, "spec.json")
    except SpecError as err:
        return f"spec.json is no valid spec ({str(err).removeprefix('spec.json: ')[:40]})"
    if spec.trial_id != folder.name:
        return f"spec.json hashes to {spec.trial_id}, not the folder's id"
    return None


REPAIR_HINT = "rerun the sweep to repair it from the grid"
STATUS_HINT = "rerun the sweep, the trial's next attempt rebuilds it"


def scan(sweep: Path, warn: Warn | None = _warn) -> dict[str, TrialState]:
    """States of every trial folder of a sweep, by trial_id (what `orchestrator.status` shows).

    A folder whose spec.json does not prove its trial is `unreadable`, with the reason and the
    fix, whatever its status.json says: a done trial whose spec is garbage is not done.
    """
    out = {}
    for folder in trial_folders(sweep, warn):
        state = observe(folder)
        if state.state != "running" and (problem := spec_problem(folder)) is not None:
            if problem == "no spec.json" and not (folder / STATUS).exists():
                state = TrialState(folder.name, folder, "pending")  # a folder just made, or left empty
            else:
                state = TrialState(folder.name, folder, "unreadable", state.status, reason=f"{problem}; {REPAIR_HINT}")
        elif state.state == "unreadable":  # status.json: the next attempt rebuilds it from the folder
            detail = (state.reason or "").replace(f"{folder / STATUS}: ", "").removeprefix("status.json unreadable ")
            reason = f"status.json unreadable: {STATUS_HINT} {detail[:80]}"
            state = TrialState(folder.name, folder, "unreadable", state.status, reason=reason)
        out[folder.name] = state
    return out


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
    """Which of `specs` still need running, given the trial folders on disk."""
    specs = tuple(specs)
    states = {}
    for spec in specs:
        folder = trial_folder(sweep, spec.trial_id)
        states[spec.trial_id] = observe(folder) if folder.exists() else TrialState(spec.trial_id, folder, "pending")
    to_run = tuple(s for s in specs if states[s.trial_id].runnable(max_attempts))
    return Plan(sweep, specs, states, to_run, source)


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


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write of the launcher's to `path`: an OSError (full disk, read-only mount) becomes one line."""
    try:
        yield
    except OSError as err:
        for tmp in path.parent.glob(f".{path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({err.strerror or err}); free space there or choose another folder with --results") from None


def record_grid(grid_path: Path, sweep: Path) -> None:
    """Keep the grid file that launched the sweep beside its trials (provenance)."""
    tmp = sweep / f".grid.yaml.tmp-{os.getpid()}"
    with _writing(sweep / "grid.yaml"):
        tmp.write_bytes(Path(grid_path).read_bytes())
        replace_atomically(tmp, sweep / "grid.yaml")


def check_space(sweep: Path, specs: Iterable[TrialSpec]) -> None:
    """One line, before anything is written, when the results folder cannot hold one more checkpoint.

    A trial keeps its previous checkpoint while writing the next, so it needs at least one
    checkpoint's room (plus its rows) free to make any progress; less, and every attempt would
    fail with ENOSPC. More room than that is not required: a disk that fills up later fails
    trials, which launchers record and stop retrying after their attempts.
    """
    need = max((CHECKPOINT_BYTES.get(s.model, {}).get(s.dataset, 0) + ROWS_BYTES for s in specs), default=0)
    if not need:
        return
    probe = sweep
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # check_writable says what is wrong with the folder
    if free < need:
        raise UserError(
            f"results folder {sweep} has {free / 1e6:.1f} MB free; a trial needs at least {need / 1e6:.1f} MB "
            "(a checkpoint and its rows); free space there or choose another folder with --results"
        )


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
    """The trial's spec from its spec.json; ValueError (SpecError) unless it hashes to the folder's name."""
    spec = TrialSpec.from_dict(read_json(folder / SPEC), where=str(folder / SPEC))
    if spec.trial_id != folder.name and is_trial_id(folder.name):
        raise SpecError(f"{folder / SPEC}: hashes to {spec.trial_id}, not the folder's id; {REPAIR_HINT}")
    return spec
