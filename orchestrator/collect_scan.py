"""Reading a sweep for the collector: trial states, file fingerprints, one dataset scan per kind.

Used by `python -m orchestrator.collect`; nothing here writes. State comes from each trial's
status.json only (the trainer writes it atomically). The Parquet files of the done trials are read
with one `pyarrow.dataset` scan per file kind (epochs, layers); a file that cannot be read is
isolated (named by pyarrow, else found by bisecting the file list), reported and skipped, and the
rest of the scan stands.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from orchestrator.errors import UserError
from trainer import results as R
from trainer.spec import TrialSpec

KINDS = (R.EPOCHS, R.LAYERS)  # units.parquet is never aggregated (too big at scale)
Fingerprint = tuple[int, int, int]  # (size, mtime_ns, inode): changes whenever a file is replaced


@dataclass
class Trial:
    """One trial folder as the collector sees it: its state and, once done, its file fingerprints."""

    trial_id: str
    folder: Path
    state: str  # done | failed | running | pending | unreadable | incomplete
    status: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why it is not aggregated (None for usable done trials)
    files: dict[str, Fingerprint] = field(default_factory=dict)


def expected_schema(kind: str) -> pa.Schema:
    """The schema the current trainer writes for `kind`; every scan is read into it.

    Columns missing from an older trial's file come back null, unknown extra columns are dropped,
    so the summary's schema is always the code's.
    """
    spec = TrialSpec()
    return R.file_schema(kind, R.trial_schema(spec))


def trial_fields() -> list[str]:
    """The trial's fields as carried by every result row (trial_id, sweep, model, ..., augment)."""
    return list(TrialSpec().row_fields())


# ---- the sweep folder --------------------------------------------------------------------------
def check_sweep(path: Path) -> Path:
    """`path` if it is a sweep folder (it holds trials/), else a UserError that says what to pass."""
    if not path.exists():
        raise UserError(f"{path}: no such folder; pass a sweep folder, e.g. results/<sweep>")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; pass a sweep folder, e.g. results/<sweep>")
    if (path / "trials").is_dir():
        return path
    if (path / R.SPEC).is_file() or path.name == "trials":
        hint = path.parent.parent if path.name != "trials" else path.parent
        raise UserError(f"{path}: a trial folder, not a sweep; pass the sweep folder {hint}")
    sweeps = sorted(p.name for p in path.iterdir() if (p / "trials").is_dir())
    if sweeps:
        shown = ", ".join(str(path / s) for s in sweeps[:5]) + (" ..." if len(sweeps) > 5 else "")
        raise UserError(f"{path}: a results root, not a sweep folder; pass one of: {shown}")
    raise UserError(f"{path}: not a sweep folder (no trials/ inside); expected <results>/<sweep>/trials/<trial_id>/")


def _fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def read_trials(sweep: Path) -> list[Trial]:
    """Every folder under trials/, with its state (status.json; none yet means pending).

    Done trials get the fingerprints of their epochs and layers files; a done trial missing one
    of them is `unreadable`.
    """
    out = []
    with os.scandir(sweep / "trials") as entries:
        folders = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
    for folder in map(Path, folders):
        out.append(_read_trial(folder))
    return out


def _read_trial(folder: Path) -> Trial:
    trial = Trial(trial_id=folder.name, folder=folder, state="pending")
    try:
        trial.status = json.loads((folder / R.STATUS).read_bytes())
    except FileNotFoundError:
        trial.reason = "not started (no status.json)"
        return trial
    except (OSError, ValueError) as err:
        trial.state, trial.reason = "unreadable", f"status.json unreadable ({err})"
        return trial
    if not isinstance(trial.status, dict):
        trial.state, trial.reason = "unreadable", "status.json is not a JSON object"
        return trial
    trial.state = str(trial.status.get("state", "pending"))
    if trial.state != "done":
        trial.reason = _not_done_reason(trial.status)
        return trial
    for kind in KINDS:
        fp = _fingerprint(folder / kind)
        if fp is None:
            trial.state, trial.reason = "unreadable", f"done but {kind} is missing"
            return trial
        trial.files[kind] = fp
    return trial


def _not_done_reason(status: dict[str, Any]) -> str:
    state = status.get("state")
    if state == "failed":
        kind = status.get("error_kind")
        return f"{kind}: {status.get('error')}" if kind else str(status.get("error"))
    if state == "running":
        return f"running since {status.get('started')} on {status.get('host')} (attempt {status.get('attempts')})"
    return f"{state} (attempts: {status.get('attempts', 0)})"


# ---- one robust dataset scan ---------------------------------------------------------------------
def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read_all(paths: list[str], schema: pa.Schema) -> pa.Table:
    return ds.dataset(paths, format="parquet", schema=schema).to_table()


def scan(
    paths: list[Path], schema: pa.Schema, read: Callable[[list[str], pa.Schema], pa.Table] = _read_all
) -> tuple[pa.Table, dict[Path, str]]:
    """Read `paths` into one table (in the order given) with one dataset scan.

    A file pyarrow cannot read fails the whole scan; it is then isolated, and the others read
    again: first by the path pyarrow names in its error (a broken footer), else by bisecting the
    list (corrupt pages). Returns the table and {bad file: one-line reason}.
    """
    bad: dict[Path, str] = {}
    tables: list[pa.Table] = []
    work: list[list[str]] = [[str(p) for p in paths]] if paths else []
    while work:
        group = work.pop(0)
        try:
            tables.append(read(group, schema))
            continue
        except (pa.ArrowException, OSError) as err:
            reason = _one_line(err)
        named = [p for p in group if f"'{p}'" in reason]
        if len(group) == 1 or len(named) == 1:
            culprit = group[0] if len(group) == 1 else named[0]
            bad[Path(culprit)] = reason.replace(f"Could not open Parquet input source '{culprit}': ", "")
            rest = [p for p in group if p != culprit]
            work[:0] = [rest] if rest else []
        else:
            mid = len(group) // 2
            work[:0] = [group[:mid], group[mid:]]  # keep the order of the rows
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, bad


# ---- checks on what was read -------------------------------------------------------------------
def incomplete_trials(epochs: pa.Table, layers: pa.Table) -> dict[str, str]:
    """{trial_id: reason} for trials whose rows are not exactly epochs 0..E (E = the spec's epochs),
    or whose layers rows are not one per (epoch, layer)."""
    bad: dict[str, str] = {}
    if epochs.num_rows:
        agg = epochs.group_by("trial_id").aggregate(
            [("epoch", "count"), ("epoch", "count_distinct"), ("epoch", "min"), ("epoch", "max"), ("epochs", "max")]
        )
        for row in agg.to_pylist():
            e = row["epochs_max"]
            if not (row["epoch_count"] == row["epoch_count_distinct"] == e + 1 and row["epoch_min"] == 0 and row["epoch_max"] == e):
                bad[row["trial_id"]] = f"incomplete: {row['epoch_count']} epoch rows, expected epochs 0..{e}"
    if layers.num_rows:
        agg = layers.group_by("trial_id").aggregate(
            [("epoch", "count"), ("epoch", "count_distinct"), ("layer", "count_distinct"), ("epochs", "max")]
        )
        for row in agg.to_pylist():
            want = (row["epochs_max"] + 1) * row["layer_count_distinct"]
            if row["epoch_count_distinct"] != row["epochs_max"] + 1 or row["epoch_count"] != want:
                bad.setdefault(row["trial_id"], f"incomplete: {row['epoch_count']} layer rows, expected {want}")
    return bad


def drop_trials(table: pa.Table, trial_ids: set[str] | list[str], keep: bool = False) -> pa.Table:
    """`table` without (or, keep=True, with only) the rows of `trial_ids`."""
    mask = pc.is_in(table["trial_id"], value_set=pa.array(sorted(trial_ids), type=pa.string()))
    return table.filter(mask if keep else pc.invert(mask))
