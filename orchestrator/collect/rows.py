"""The rows of a sweep's done trials for the collector: cache + one scan per kind, checked, ordered.

Used by `python -m orchestrator.collect`. Rows are kept as the files' metric columns plus `_rank`,
the trial's position in the sorted list of done trials; `with_fields` puts the trial's fields
(from its spec) in front when a table is written, so the 17 constant columns are never decoded
from thousands of files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.collect import cache
from orchestrator.collect.scan import KINDS, Fingerprint, Trial, fingerprint, incomplete, scan_files
from orchestrator.folders import retrain_hint

Warn = Callable[[str], None]
MAX_RUNS = 4096  # more sorted runs (or chunks) than this: one take, one chunk (later kernels pay per chunk)


def mark(trial: Trial, state: str, reason: str, warn: Warn) -> None:
    """Take a done trial out of the tables, saying why in one line."""
    trial.state, trial.reason = state, reason
    warn(f"{trial.folder}: {reason}; trial {trial.trial_id} skipped")


@dataclass(frozen=True)
class Cached:
    """The summary's cached rows: `load` gives every row of each kind (cache.load_rows; it may be a
    read started in the background), `trials` the trials the summary's rows files hold."""

    load: Callable[[], dict[str, Any]]
    trials: frozenset[str]


def load_cached(summary: Path) -> dict[str, Any]:
    """Every cached row of each kind (cache.load_rows)."""
    return {kind: cache.load_rows(summary, kind) for kind in KINDS}


def cached_rows(summary: Path, done: list[Trial], reuse: set[str], cached: Cached | None = None) -> dict[str, pa.Table]:
    """Metric columns and `_rank` (position in `done`) of the cached rows of `reuse`."""
    ids = [t.trial_id for t in done]
    frames = cached.load() if cached else load_cached(summary)
    every = cached is not None and reuse == cached.trials
    # popped: each frame goes once its rows are converted, before the next kind's are
    return {kind: cache.rows_of(frames.pop(kind), kind, ids, reuse, every) for kind in KINDS}


@dataclass(frozen=True)
class Prescan:
    """The files of one kind read before the trials' states were known (`prescan`): in order, each
    with the fingerprint taken before it was read; the rows (`_file`: index into `paths`); bad files."""

    paths: list[Path]
    fingerprints: list[Fingerprint]
    rows: pa.Table
    bad: dict[Path, str]


def prescan(folders: list[Path]) -> dict[str, Prescan]:
    """Every `kind` file in `folders`, read in that order (the collector's order of trials) while the
    main thread looks at the trials' states: on a cold collect the scan, on every core, and the
    status phase, on one, overlap (issue 25). Files of trials that turn out not done are dropped
    by `fresh_rows`, which uses a file only if it is still the one read."""
    out = {}
    for kind in KINDS:
        paths, fingerprints = [], []
        for folder in folders:
            fp = fingerprint(folder / kind)
            if fp is not None:
                paths.append(folder / kind)
                fingerprints.append(fp)
        rows, bad = scan_files(paths, kind)
        out[kind] = Prescan(paths, fingerprints, rows, bad)
    return out


def _from_prescan(early: Prescan, new: list[tuple[int, Trial]], kind: str) -> tuple[pa.Table, dict[Path, str]] | None:
    """scan_files' answer for the `new` trials' `kind` files, taken from `early`; None if any of them
    was not read there, was replaced since, or came in another order."""
    where = {path: i for i, path in enumerate(early.paths)}
    index = [where.get(t.folder / kind, -1) for _, t in new]
    if any(i < 0 or early.fingerprints[i] != t.files.get(kind) for i, (_, t) in zip(index, new)):
        return None
    if any(b <= a for a, b in zip(index, index[1:])):
        return None
    remap = np.full(len(early.paths), -1, dtype=np.int32)
    remap[index] = np.arange(len(index), dtype=np.int32)
    file = remap[early.rows["_file"].to_numpy()]
    rows = early.rows
    if (file < 0).any():  # files of trials not done (or already cached): not theirs to give
        rows, file = rows.filter(pa.array(file >= 0)), file[file >= 0]
    rows = rows.set_column(rows.schema.get_field_index("_file"), "_file", pa.array(file, type=pa.int32()))
    mine = {t.folder / kind for _, t in new}
    return rows, {path: reason for path, reason in early.bad.items() if path in mine}


def fresh_rows(new: list[tuple[int, Trial]], warn: Warn, early: dict[str, Prescan] | None = None) -> dict[str, pa.Table]:
    """Metric columns and `_rank` of the `new` trials' files (one scan per kind, or `early`'s); bad ones marked."""
    ranks = np.array([i for i, _ in new], dtype=np.int32)
    by_folder = {t.folder: t for _, t in new}
    epochs = np.array([t.fields["epochs"] for _, t in new], dtype=np.int64)
    out = {}
    for kind in KINDS:
        found = _from_prescan(early[kind], new, kind) if early else None
        table, bad = found or scan_files([t.folder / kind for _, t in new], kind)
        for path, reason in bad.items():
            mark(by_folder[path.parent], "unreadable", f"{kind} unreadable: {reason}{retrain_hint(path.parent)}", warn)
        for i, reason in incomplete(table, kind, epochs).items():
            if new[i][1].state == "done":
                mark(new[i][1], "incomplete", reason, warn)
        rank = ranks[table["_file"].to_numpy()]
        out[kind] = table.drop_columns(["_file"]).append_column("_rank", pa.array(rank, type=pa.int32()))
    return out


def read_rows(
    summary: Path,
    done: list[Trial],
    reuse: set[str],
    warn: Warn,
    early: dict[str, Prescan] | None = None,
    cached: Cached | None = None,
) -> tuple[dict[str, pa.Table], list[str], int]:
    """Rows (metrics, `_rank`) of the usable done trials in `done` order; the ids read; n cached.
    `early`: the files `prescan` read, used where they are the new trials' own; `cached`: the
    summary's rows as read in the background (else read here)."""
    parts: dict[str, list[pa.Table]] = {kind: [] for kind in KINDS}
    if reuse:
        try:
            for kind, table in cached_rows(summary, done, reuse, cached).items():
                parts[kind].append(table)
        except (pa.ArrowException, OSError) as err:
            warn(f"{summary}: cached summary unreadable ({str(err).splitlines()[0]}); reading every trial again")
            reuse, parts = set(), {kind: [] for kind in KINDS}
    new = [(i, t) for i, t in enumerate(done) if t.trial_id not in reuse]
    for kind, table in fresh_rows(new, warn, early).items():
        parts[kind].append(table)
    usable = np.array([t.state == "done" for t in done])
    return {kind: keep_sorted(pa.concat_tables(p), usable) for kind, p in parts.items()}, [t.trial_id for _, t in new], len(reuse)


def keep_sorted(table: pa.Table, usable: np.ndarray) -> pa.Table:
    """Rows of usable trials only, ordered by `_rank` (stable: epochs and layers keep their order).

    The rows come as a few sorted runs (the cached rows, then the new trials'), so the order is
    built from slices of those runs where there are few: at 10,000 trials a `take` of the 14.5
    million layer rows cost 1.5-2.7 s of a +10 collect; slices copy nothing (issue 25).
    """
    rank = table["_rank"].to_numpy()
    if not usable[rank].all():
        table, rank = table.filter(pa.array(usable[rank])), rank[usable[rank]]
    if rank.size > 1 and (np.diff(rank) < 0).any():
        order = np.argsort(rank, kind="stable")
        starts = np.flatnonzero(np.diff(order) != 1) + 1  # where `order` stops counting up by one
        if len(starts) < MAX_RUNS:
            bounds = zip([0, *starts.tolist()], [*starts.tolist(), len(order)])
            table = pa.concat_tables([table.slice(int(order[a]), b - a) for a, b in bounds])
        else:
            table = table.take(pa.array(order))
    # A chunk per run is left as it is: copying 14.5 million layer rows into one chunk cost 2.6 s
    # and 0.8 GB at +10 trials (issue 25); the rows files are written a contiguous row group at a
    # time (rows_file). A chunk per file (pyarrow's fallback reads file by file) is combined, column
    # by column: later kernels pay per chunk.
    return contiguous(table) if table.num_rows and max(c.num_chunks for c in table.columns) > MAX_RUNS else table


def contiguous(table: pa.Table) -> pa.Table:
    """`table` with each column in one chunk; a column already in one is not copied (combining one
    chunk copies it: 2.5 s of page faults for the 14.5 million layer rows of 10,000 trials)."""
    return pa.Table.from_arrays([c if c.num_chunks <= 1 else c.combine_chunks() for c in table.columns], schema=table.schema)


def with_fields(rows: pa.Table, fields: pa.Table, coded: frozenset[str] = frozenset()) -> pa.Table:
    """`rows` (metrics, `_rank`) with the trial's fields in front: the trainer's file schema. The
    `coded` fields come as dictionary arrays (dictionary in the order the trials first appear), as
    the summary's rows files are written (orchestrator.collect.rows_file)."""
    rank = rows["_rank"]
    if coded:
        ranks = rank.to_numpy()
        trials, first = np.unique(ranks, return_index=True)
        order = pa.array(trials[np.argsort(first, kind="stable")])  # the trials in the order their rows first appear
        position = np.zeros(int(ranks.max()) + 1 if ranks.size else 0, dtype=np.int32)
        position[order.to_numpy()] = np.arange(len(order), dtype=np.int32)
        at = pa.array(position[ranks])  # each row's trial, as an index into `order`
    columns = []
    for name in fields.column_names:
        if name in coded:
            encoded = fields[name].take(order).combine_chunks().dictionary_encode()
            columns.append(pa.DictionaryArray.from_arrays(encoded.indices.take(at), encoded.dictionary))
        else:
            columns.append(fields[name].take(rank))
    metrics = rows.drop_columns(["_rank"])
    return pa.Table.from_arrays(columns + metrics.columns, names=fields.column_names + metrics.column_names)
