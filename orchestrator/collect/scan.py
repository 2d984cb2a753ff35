"""Reading a sweep for the collector: trial states, file fingerprints, one scan of many files per kind.

Used by `python -m orchestrator.collect`; nothing here writes. A trial's state is the project's
one view of it, `trainer.status.observe` (its status.json seen together with its lock), as
launchers and `python -m orchestrator.status` see it. The Parquet files of the done trials are read
with one polars scan per file kind (`scan_files`: epochs, layers; polars' Rust reader decodes on
every core, at a quarter of pyarrow's CPU per small file). Where polars fails, pyarrow reads: a
file that cannot be read is isolated (named by pyarrow, else found by bisecting the file list),
reported and skipped, and the rest of the scan stands.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.folders import REPAIR_HINT, retrain_hint
from trainer import results as R
from trainer.files import UNITS, damaged_results, read_bytes
from trainer.spec import TrialSpec
from trainer.status import Status, TrialState, observe

KINDS = (R.EPOCHS, R.LAYERS)  # units.parquet is never aggregated (too big at scale)
PYARROW_GROUP = 256  # a group polars cannot read is read by pyarrow at this size or below, else halved
READ_THREADS = 2  # measured: the per-file work holds the GIL most of the time, so more threads gain nothing (docs/benchmarks.md)
Fingerprint = tuple[int, int, int]  # (size, mtime_ns, inode): changes whenever a file is replaced


@dataclass
class Trial:
    """One trial folder as the collector sees it: its state and, once done, its file fingerprints."""

    trial_id: str
    folder: Path
    state: str  # done | failed | running | interrupted | pending | unreadable | incomplete
    status: Status | None = None  # the recorded status; None if there is none (no status.json, or unreadable)
    reason: str | None = None  # why it is not aggregated (None for usable done trials)
    files: dict[str, Fingerprint] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # TrialSpec.row_fields() from spec.json


def expected_schema(kind: str) -> pa.Schema:
    """The schema the current trainer writes for `kind` (trial fields, then metric columns).

    Every scan reads into it: columns missing from an older trial's file come back null, unknown
    extra columns are dropped, so the summary's schema is always the code's.
    """
    return R.file_schema(kind, fields_schema())


@functools.lru_cache(maxsize=1)
def fields_schema() -> pa.Schema:
    """Arrow schema of the trial's fields as carried by every result row."""
    return R.trial_schema(TrialSpec())


def trial_fields() -> list[str]:
    """The trial's fields as carried by every result row (trial_id, sweep, model, ..., augment)."""
    return fields_schema().names


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def read_trials(folders: list[Path]) -> list[Trial]:
    """The trials in `folders` (orchestrator.folders.trial_folders), with their states
    (`trainer.status.observe`; no status.json: pending). Done trials get the fingerprints of their
    epochs and layers files; a done trial missing one of them is `unreadable`.
    """
    return [_read_trial(folder) for folder in folders]


def _read_trial(folder: Path) -> Trial:
    view = observe(folder)
    recorded = view.reason is None and (view.status.state != "pending" or (folder / R.STATUS).exists())
    trial = Trial(trial_id=folder.name, folder=folder, state=view.state, status=view.status if recorded else None)
    if trial.state != "done":
        trial.reason = _not_done_reason(view, recorded)
        return trial
    for kind in KINDS:
        fp = fingerprint(folder / kind)
        if fp is None:
            trial.state, trial.reason = "unreadable", f"done but {kind} is missing{retrain_hint(folder)}"
            return trial
        trial.files[kind] = fp
    # units.parquet: never read here, but one of a done trial's files (as orchestrator.status and the
    # plan see it: a trial without it is unreadable there, and was aggregated here as done)
    if (problem := damaged_results(folder, (UNITS,))) is not None:
        trial.state, trial.reason = "unreadable", f"done but {problem}{retrain_hint(folder)}"
    return trial


def load_spec(folder: Path) -> dict[str, Any] | Exception:
    """The JSON object in the trial's spec.json as written (not yet checked), or why it cannot be read."""
    try:
        raw = json.loads(read_bytes(os.path.join(folder, R.SPEC)))
    except (OSError, ValueError) as err:
        return err
    return raw if isinstance(raw, dict) else ValueError(f"{folder / R.SPEC}: not a JSON object")


def parse_spec(folder: Path, raw: dict[str, Any] | Exception | None = None) -> dict[str, Any] | Exception:
    """The row fields (`TrialSpec.row_fields`) of the trial in `folder`, from its spec.json (`raw`:
    load_spec's answer, if already read), or the error that makes the spec unusable. The collector
    takes the fields from here once per trial instead of decoding 17 constant columns of every file."""
    path = folder / R.SPEC
    try:
        spec = TrialSpec.from_dict(raw if isinstance(raw, dict) else R.read_json(path), str(path))
        if spec.trial_id != folder.name:
            raise ValueError(f"{path} is the spec of trial {spec.trial_id}, not of its folder's")
        return spec.row_fields()
    except (OSError, ValueError) as err:
        return err


def read_spec(trial: Trial, parsed: dict[str, Any] | Exception | None = None) -> None:
    """Set `trial.fields` from its spec.json (`parsed`: parse_spec's answer, taken before the state
    was looked at); a done trial whose spec is unusable becomes unreadable."""
    if not isinstance(parsed, dict):  # an error is checked again: the spec may have been written since
        parsed = parse_spec(trial.folder)
    if isinstance(parsed, dict):
        trial.fields = parsed
        return
    # As orchestrator.status (folders.scan): whatever its status says, a folder whose spec.json does not
    # prove its trial is unreadable; only a live attempt, or a folder with neither file yet, is not.
    fresh = not (trial.folder / R.SPEC).exists() and not (trial.folder / R.STATUS).exists()
    if trial.state != "running" and not fresh:
        trial.state, trial.reason = "unreadable", f"spec.json unusable ({one_line(parsed)[:160]}); {REPAIR_HINT}"


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _not_done_reason(view: TrialState, recorded: bool) -> str:
    """One line: why a trial that `observe` does not call done is not aggregated."""
    status, state = view.status, view.state
    unreadable = (view.reason or "").replace(f"{view.folder / R.STATUS}: ", "")  # the trial is named beside it
    if state == "unreadable":
        return unreadable
    if state == "running" and status.state != "running":  # an attempt holds the lock, its status not written yet
        recorded_as = f"status.json says {status.state}" if recorded else "no status.json yet"
        return f"running: an attempt holds its lock ({unreadable or recorded_as})"
    since = f"since {status.started} on {status.host} (attempt {status.attempts})"
    if state == "failed":
        return f"{status.error_kind}: {status.error}" if status.error_kind else str(status.error)
    if state == "running":
        return f"running {since}"
    if state == "interrupted":
        return f"interrupted: no live process holds it, was running {since}; run the sweep again to resume"
    if not recorded:
        return "not started (no status.json)"
    return f"{state} (attempts: {status.attempts})"


# ---- one robust dataset scan ---------------------------------------------------------------------
def _read_dataset(paths: list[str], kind: str) -> pa.Table:
    """The metric columns of `paths` and `__fragment_index` (the file's position in `paths`), cast to the code's schema."""
    dataset = ds.dataset(paths, format="parquet", schema=expected_schema(kind))
    return dataset.to_table(columns=[*R.COLUMNS[kind].names, "__fragment_index"])


def _read_file(path: str, kind: str) -> pa.Table:
    """One file's metric columns; a file not in the code's schema (an older trainer's) via the dataset's casts."""
    table = pq.ParquetFile(path, pre_buffer=False).read(columns=R.COLUMNS[kind].names, use_threads=False)
    return table if table.schema == R.COLUMNS[kind] else _read_dataset([path], kind).drop_columns(["__fragment_index"])


def _read_metrics(paths: list[str], kind: str) -> pa.Table:
    """As `_read_dataset`, file by file in READ_THREADS threads: half the CPU of one dataset scan over
    10,000 small files (issue 25). Any error: the dataset scan again, whose errors scan_files knows."""
    try:
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            tables = list(pool.map(lambda p: _read_file(p, kind), paths))
    except (pa.ArrowException, OSError):
        return _read_dataset(paths, kind)
    index = np.repeat(np.arange(len(paths), dtype=np.int32), [t.num_rows for t in tables])
    empty = R.COLUMNS[kind].empty_table()
    return pa.concat_tables(tables or [empty]).append_column("__fragment_index", pa.array(index, type=pa.int32()))


def _read_polars(paths: list[str], kind: str) -> pa.Table:
    """As `_read_dataset`, by polars: its Rust reader decodes the files on every core without the
    GIL, at a quarter of pyarrow's CPU per small file (issue 25: 10,000 trials' files in 4 s, not 24).

    Any failure (a broken file, a file in an older trainer's schema) is answered by pyarrow, whose
    errors scan_files knows: directly for a small group, else by raising so that scan_files halves
    the group and polars reads the good halves.
    """
    import polars as pl  # imported here: only a collect that reads trial files needs it

    columns = R.COLUMNS[kind]
    try:
        # glob and hive off: a sweep folder named "runs[1]" or "alpha=1" is a plain path here.
        frame = (
            pl.scan_parquet(paths, glob=False, hive_partitioning=False, include_file_paths="__path")
            .select([*columns.names, "__path"])
            .collect()
        )
        table, index = from_polars(frame, kind, "__path", paths)
    except Exception as err:  # polars raises its own kinds; pyarrow says what is wrong
        if len(paths) <= PYARROW_GROUP:
            return _read_metrics(paths, kind)
        raise pa.ArrowInvalid(f"polars could not read the group ({one_line(err)[:200]})") from err
    if index.size > 1 and (np.diff(index) < 0).any():  # rows must come in the order of `paths`
        return _read_metrics(paths, kind)
    return table.append_column("__fragment_index", pa.array(index, type=pa.int32()))


def from_polars(frame: Any, kind: str, key: str, values: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The `kind` metric columns of the polars `frame` in the code's Arrow schema (polars' large_string
    -> string), in one chunk: the conversion and every later kernel pay per chunk; and each row's
    `key` as an int32 index into `values` (a polars enum over them: each distinct value looked up once).
    Raises polars' errors."""
    import polars as pl

    index = frame[key].cast(pl.Enum(values)).to_physical().to_numpy().astype(np.int32)
    return frame.select(R.COLUMNS[kind].names).rechunk().to_arrow().cast(R.COLUMNS[kind]), index


def scan_files(paths: list[Path], kind: str, read: Callable[[list[str], str], pa.Table] = _read_polars) -> tuple[pa.Table, dict[Path, str]]:
    """Read the metric columns of the `kind` files `paths` with one scan (polars; pyarrow where it fails).

    Returns the rows in the order of `paths`, with `_file` (int32): the row's file, as an index
    into `paths`; and {unreadable file: one-line reason}. A file pyarrow cannot read fails the
    whole scan; it is isolated and the others read again: by the path pyarrow names in its error
    (a broken footer), else by bisecting the list (corrupt pages).
    """
    bad: dict[Path, str] = {}
    tables: list[pa.Table] = []
    work: list[list[int]] = [list(range(len(paths)))] if paths else []
    while work:
        group = work.pop(0)
        names = [str(paths[i]) for i in group]
        try:
            table = read(names, kind)
        except (pa.ArrowException, OSError) as err:
            reason = one_line(err)
        else:
            where = np.asarray(group, dtype=np.int32)[table["__fragment_index"].to_numpy()]
            tables.append(table.drop_columns(["__fragment_index"]).append_column("_file", pa.array(where)))
            continue
        named = [i for i in group if f"'{paths[i]}'" in reason]
        if len(group) == 1 or len(named) == 1:
            culprit = group[0] if len(group) == 1 else named[0]
            bad[paths[culprit]] = reason.replace(f"Could not open Parquet input source '{paths[culprit]}': ", "")
            rest = [i for i in group if i != culprit]
            work[:0] = [rest] if rest else []
        else:
            mid = len(group) // 2
            work[:0] = [group[:mid], group[mid:]]  # keep the order of the rows
    empty = pa.schema([*R.COLUMNS[kind], ("_file", pa.int32())]).empty_table()
    return (pa.concat_tables(tables) if tables else empty), bad


# ---- checks on what was read -------------------------------------------------------------------
def incomplete(rows: pa.Table, kind: str, epochs: np.ndarray) -> dict[int, str]:
    """{file index: reason} for files whose epoch-end rows are not epochs 0..E in order (E = epochs[index]);
    for layers, L rows per epoch (L = the file's layers at epoch 0), epoch by epoch.

    `rows` come from `scan_files`: grouped by `_file` in increasing order, each file's rows as written.
    """
    n = len(epochs)
    end = rows["epoch_end"].to_numpy(zero_copy_only=False)  # mid-epoch evaluations are extra rows
    file, epoch = rows["_file"].to_numpy(), rows["epoch"].to_numpy(zero_copy_only=False)
    if not end.all():  # else no copies: at 10,000 trials the layers are 14.5 million rows (issue 25)
        file, epoch = file[end], epoch[end]
    counts = np.bincount(file, minlength=n)
    width = np.bincount(file[epoch == 0], minlength=n) if kind == R.LAYERS else np.ones(n, dtype=np.int64)
    index = np.int32 if len(file) < 2**31 else np.int64  # half the memory to touch, in the usual case
    first = (np.cumsum(counts) - counts).astype(index)
    pos = np.arange(len(file), dtype=index) - first[file]  # row number within its file
    wrong = np.bincount(file[epoch != pos // np.maximum(width, 1).astype(index)[file]], minlength=n)
    bad: dict[int, str] = {}
    for i in np.flatnonzero((counts != (epochs + 1) * width) | (wrong > 0) | (width == 0)):
        layers = f" x {width[i]} layers" if kind == R.LAYERS else ""
        bad[int(i)] = f"{kind} incomplete: {counts[i]} rows, expected epochs 0..{epochs[i]}{layers} in order"
    return bad
