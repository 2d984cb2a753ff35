"""Collect a sweep's finished trials into tables, a report and figures.

    python -m orchestrator.collect results/<sweep> [--full] [--no-figures] [--timings]

Writes <sweep>/summary/: trials, epochs, layers, conditions, condition_epochs, condition_layers
and excluded (.parquet, each loads with pandas.read_parquet), report.md and figures/*.png.
Only trials whose status.json says `done` are aggregated; failed, unfinished and unreadable ones
are listed in excluded.parquet (and on stdout) with their reason. A corrupt Parquet file is named
on stderr and its trial skipped. Collecting is incremental: rows read last time are taken from
the summary (summary/.cache/manifest.json), so only new or changed trials are read; --full reads
every trial again. Exit status: 0 collected, 2 user mistake (not a sweep, nothing finished).

The summary is derived data: files are replaced atomically (written beside, then renamed) but
not fsynced. The cache manifest is removed before the first summary file is replaced and written
after the last (orchestrator.collect.cache), so a collect killed at any moment leaves no manifest
and the next collect redoes everything: tables, report and figures never stay from different sets
of trials. Kill points for the tests (trainer.faults, SWEEP_FAULT=<site>:1): `collect-rows` (the
rows files written), `collect-tables` (the tables written), `collect-figures` (figures drawn),
`collect-report` (report.md written, manifest not yet).

After the manifest, the record of the fast path (orchestrator.collect.unchanged): the next
`python -m orchestrator.collect` over a sweep whose files and summary are all as they were prints
the same lines, saying "unchanged", and derives nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.collect import cache, command, rows_file, unchanged
from orchestrator.collect.ablations import ablation_figures, ablation_tables
from orchestrator.collect.report import render
from orchestrator.collect.representations import OUTPUTS as REPRESENTATION_OUTPUTS
from orchestrator.collect.representations import representation_figures, representation_tables
from orchestrator.collect.robustness import OUTPUTS as ROBUSTNESS_OUTPUTS
from orchestrator.collect.robustness import robustness_figures, robustness_markdown, robustness_tables
from orchestrator.collect.rows import Cached, Warn, load_cached, prescan, read_rows, with_fields
from orchestrator.collect.scan import KINDS, Trial, fields_schema, load_spec, parse_spec, read_spec, read_trials
from orchestrator.collect.stats import (
    EPOCH_METRICS,
    condition_epochs_table,
    condition_layers_table,
    conditions_table,
    to_pandas,
    trial_sort_key,
    trials_table,
    written_sort_key,
)  # fmt: skip
from orchestrator.folders import sweep_folder, trial_folders
from orchestrator.sweep_lock import holding
from trainer import faults
from trainer import results as R
from trainer.errors import UserError

STATES = ("done", "failed", "running", "pending", "interrupted", "unreadable", "incomplete")
FIGURES = ("test_acc_vs_alpha.png", "csi_vs_alpha.png", "csi_over_epochs.png", "layer_csi_vs_alpha.png")
SHOWN_EXCLUDED = 10  # trials listed on stdout; all of them are in excluded.parquet and report.md
STALE_TEMP_S = 3600  # temp files of a killed collect older than this are removed
COLLECT_LOCK = ".collect.lock"  # in the sweep folder, beside the SLURM launcher's .submit.lock
COLLECT_WAIT_S = 3600.0  # far longer than a collect takes (~20 s cold at 10,000 trials); then one line naming the holder
# Outputs that only some collects write: one that this collect did not write is removed.
OPTIONAL_OUTPUTS = (
    "condition_steps.parquet", "ablation_curves.parquet", "ablation_auc.parquet",
    *(f"figures/{name}" for name in (*FIGURES, "ablation_curves.png", "ablation_auc.png", "early_dynamics.png")),
    *REPRESENTATION_OUTPUTS, *ROBUSTNESS_OUTPUTS,
)  # fmt: skip


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class CollectResult:
    """What one collect did: counts per state, what it read, what it wrote, how long it took."""

    sweep: Path
    summary: Path
    counts: dict[str, int]
    excluded: pd.DataFrame
    read: list[str]  # trial_ids whose Parquet files were read this time
    cached: int  # done trials taken from the previous summary
    written: list[Path] = field(default_factory=list)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase: (wall s, CPU s)


class _Clock:
    """Wall and CPU seconds (all threads) per phase."""

    def __init__(self) -> None:
        self.times: dict[str, tuple[float, float]] = {}
        self._last = (time.perf_counter(), time.process_time())

    def __call__(self, phase: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.times[phase] = (now[0] - self._last[0], now[1] - self._last[1])
        self._last = now


# ---- reading ------------------------------------------------------------------------------------
def _counts(trials: list[Trial]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _require_done(sweep: Path, trials: list[Trial]) -> None:
    if not trials:
        raise UserError(f"{sweep}: no trials yet (trials/ is empty); start them with python -m orchestrator.sweep")
    if not any(t.state == "done" for t in trials):
        counted = ", ".join(f"{n} {s}" for s, n in _counts(trials).items() if n)
        raise UserError(f"{sweep}: no finished trial to collect yet ({counted}); see python -m orchestrator.status {sweep}")


# ---- tables -------------------------------------------------------------------------------------
def _tables(rows: dict[str, pa.Table], fields: pa.Table, done: list[Trial]) -> dict[str, pd.DataFrame]:
    """The trials and condition tables (pandas), from the rows and the trials' fields."""
    # Epoch-end rows for the per-epoch tables; mid-epoch evaluations (eval_every_steps) go, with
    # them, into the per-step table of the early dynamics.
    evals, layers = rows[R.EPOCHS], rows[R.LAYERS]
    epochs = evals if pc.all(evals["epoch_end"]).as_py() else evals.filter(evals["epoch_end"])
    last = fields["epochs"].to_numpy()
    final = epochs.filter(pa.array(epochs["epoch"].to_numpy() == last[epochs["_rank"].to_numpy()]))
    final_df = to_pandas(with_fields(final, fields)).assign(_rank=final["_rank"].to_numpy())
    totals = to_pandas(epochs.group_by("_rank").aggregate([("seconds", "sum"), ("eval_seconds", "sum")]))
    totals = totals.rename(columns={"seconds_sum": "train_seconds_total", "eval_seconds_sum": "eval_seconds_total"})
    # One filter over the layers' rows (14.5 million at 10,000 trials): the final epoch's epoch-end rows.
    at_end = layers["epoch_end"].to_numpy(zero_copy_only=False)
    final_layers = layers.filter(pa.array(at_end & (layers["epoch"].to_numpy() == last[layers["_rank"].to_numpy()])))
    final_layers_df = to_pandas(final_layers.select(["_rank", "layer", "n_units", "csi_mean"]))
    trials = trials_table(final_df, totals, final_layers_df, {t.trial_id: t.status.to_dict() for t in done if t.status is not None})
    epochs_df = to_pandas(epochs.select(["_rank", "epoch", "alpha_active", *EPOCH_METRICS]))
    tables = {
        "trials.parquet": trials,
        "conditions.parquet": conditions_table(trials),
        "condition_epochs.parquet": condition_epochs_table(epochs_df, trials),
        "condition_layers.parquet": condition_layers_table(final_layers_df, trials),
    }
    if not pc.all(evals["epoch_end"]).as_py():
        steps_df = to_pandas(evals.select(["_rank", "step", "epoch", "alpha_active", *EPOCH_METRICS]))
        tables["condition_steps.parquet"] = condition_epochs_table(steps_df, trials, key="step")
    return tables


def excluded_table(trials: list[Trial]) -> pa.Table:
    """One row per trial that is not aggregated: its fields (from spec.json), state and reason."""
    extra = [("state", pa.string()), ("reason", pa.string()), ("error_kind", pa.string()), ("attempts", pa.int64()),
             ("host", pa.string()), ("started", pa.string()), ("ended", pa.string())]  # fmt: skip
    schema = pa.schema(list(fields_schema()) + extra)
    order = {s: i for i, s in enumerate(("failed", "unreadable", "incomplete", "interrupted", "running", "pending"))}
    rows = []
    for t in sorted(trials, key=lambda t: order.get(t.state, len(order))):
        recorded = t.status.to_dict() if t.status is not None else {}  # none: every column null
        status = {k: recorded.get(k) for k in ("error_kind", "attempts", "host", "started", "ended")}
        rows.append(t.fields | {"trial_id": t.trial_id, "state": t.state, "reason": t.reason} | status)
    return pa.Table.from_pylist(rows, schema=schema)


# ---- writing ------------------------------------------------------------------------------------
def _replace(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{path.name}{R.TMP_MARK}{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def write_table(table: pa.Table | pd.DataFrame, path: Path) -> Path:
    """Write atomically; Arrow tables get the pandas metadata the DataFrames carry (ints stay Int64)
    and dictionary encoding for the few-valued columns only (rows_file.dictionary_columns)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table.drop(columns=["_rank"], errors="ignore"), preserve_index=False)
        return _replace(path, lambda tmp: pq.write_table(table, tmp))
    table = table.replace_schema_metadata(rows_file.pandas_schema(table).metadata)
    return _replace(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=rows_file.dictionary_columns(table.column_names)))


def _remove_stale_temp(summary: Path) -> None:
    """Temp files a killed collect left behind (an hour old: no live writer still owns them)."""
    for folder in (summary, summary / "figures", summary / cache.MANIFEST.parent):
        for p in folder.glob(f".*{R.TMP_MARK}*"):
            if time.time() - p.stat().st_mtime > STALE_TEMP_S:
                p.unlink(missing_ok=True)


def _figures(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    from orchestrator.collect.figures import write_figures  # matplotlib: imported only when drawing

    return write_figures(tables["conditions.parquet"], tables["condition_epochs.parquet"], tables["condition_layers.parquet"], folder)


def write_rows(rows: pa.Table, fields: pa.Table, path: Path) -> Path:
    """`write_table(with_fields(rows, fields), path)`, the same bytes, written a row group at a time
    with the trial fields as dictionary columns (orchestrator.collect.rows_file): at 10,000 trials the
    field columns of all 14.5 million rows never exist, and their values are not hashed row by row."""
    return _replace(path, lambda tmp: rows_file.write(rows, fields, tmp))


def _drop_stale(summary: Path, kept: list[Path]) -> None:
    """Remove outputs of an earlier collect that this one did not write (they describe other trials)."""
    for name in OPTIONAL_OUTPUTS:
        path = summary / name
        if path not in kept:
            path.unlink(missing_ok=True)


# ---- the collector ------------------------------------------------------------------------------
def collect(path: str | Path, *, full: bool = False, figures: bool = True, warn: Warn = _warn, inputs: str | None = None) -> CollectResult:
    """Collect the sweep folder `path` into <path>/summary/ (see the module docstring).

    Polars reads the trial files on every core; Arrow releases the GIL while it writes, so two
    background threads overlap the work: matplotlib is imported during the scan, and the epochs
    and layers files are written while the tables are built and the figures drawn.
    Crash consistency (orchestrator.collect.cache): the manifest goes before the first summary
    file is replaced and comes back after the last, so tables, report and figures that the
    manifest vouches for always describe one set of trials.
    `inputs`: the sweep's `unchanged.snapshot`, if the caller took one just before (the command's
    `unchanged.probe` does: 0.3 s at 10,000 trials not spent twice).
    One collect of a sweep at a time (`collecting`): a second waits for the first.
    """
    sweep = checked_sweep(path)
    with collecting(sweep):
        return _collect(sweep, sweep / "summary", full, figures, warn, inputs)


def checked_sweep(path: str | Path) -> Path:
    """The sweep folder `path`, once it is one whose summary the collector may write (else one line)."""
    sweep = sweep_folder(Path(path))
    summary = sweep / "summary"
    for folder in (summary, summary / "figures", summary / cache.MANIFEST.parent):
        if folder.exists() and not folder.is_dir():  # before anything is read or written
            raise UserError(f"{folder}: a file, not a folder; the collector writes the summary there: move that file away")
    if not os.access(summary if summary.exists() else sweep, os.W_OK):
        raise UserError(f"{summary}: not writable; collect where you may write, or copy the sweep folder")
    return sweep


@contextlib.contextmanager
def collecting(sweep: Path) -> Iterator[bool]:
    """One collect of a sweep at a time (`<sweep>/.collect.lock`; yields whether it waited for another).

    Two at once (a second terminal, a cron job, a job's epilogue) interleave their writes: one's
    tables beside the other's rows files under a manifest that vouches for neither, and the next
    collect stopped on the rows the manifest did not list (seen with a collect paused mid-write).
    """
    waiting = "another collect of this sweep is running"
    with holding(sweep / COLLECT_LOCK, wait_s=COLLECT_WAIT_S, waiting=waiting, doing="collect") as waited:
        yield waited


def _collect(sweep: Path, summary: Path, full: bool, figures: bool, warn: Warn, inputs: str | None) -> CollectResult:
    clock = _Clock()
    warned: list[str] = []

    def noting(message: str) -> None:  # warnings counted: a collect that warned records no fast path
        warned.append(message)
        warn(message)

    manifest = cache.Manifest() if full else cache.load(summary)
    with ThreadPoolExecutor(max_workers=2) as background:
        early, cached = None, None
        if manifest.trials:  # incremental: the summary's rows are read while the states are looked at
            cached = Cached(background.submit(load_cached, summary).result, frozenset(manifest.trials))
        if inputs is None:  # before any trial file is read: a change from here on fails the next check
            inputs = unchanged.snapshot(sweep)
        folders = trial_folders(sweep, noting)
        raws = [load_spec(folder) for folder in folders]
        if not manifest.trials:  # cold: every trial's files are read, so read them while the states are looked at,
            # in the order of `done` below as the written specs give it (a file out of that order is read again)
            keys = {f: written_sort_key(r, f.name) for f, r in zip(folders, raws) if isinstance(r, dict)}
            try:
                early = background.submit(prescan, sorted(keys, key=keys.__getitem__))
            except TypeError:  # a spec with a value of the wrong type (it will be unreadable): no early read
                early = None
        trials = read_trials(folders)
        _require_done(sweep, trials)
        for t, raw in zip(trials, raws):
            read_spec(t, parse_spec(t.folder, raw))
        done = sorted((t for t in trials if t.state == "done"), key=lambda t: trial_sort_key(t.fields))
        reuse = cache.reusable(done, manifest.trials)
        pngs = [summary / "figures" / f for f in FIGURES]
        same_trials = reuse == set(manifest.trials) == {t.trial_id for t in done}
        figures_current = same_trials and manifest.current(summary, pngs)
        draw = figures and not figures_current
        clock("status")
        if draw:
            background.submit(importlib.import_module, "orchestrator.collect.figures")
        rows, read, n_cached = read_rows(summary, done, reuse, noting, early.result() if early else None, cached)
        early = cached = None  # what they read is in `rows` now: their own copies go (~1 GB at 10,000 trials)
        usable = [t for t in done if t.state == "done"]
        if not usable:
            raise UserError(f"{sweep}: no readable finished trial (see the warnings above)")
        fields = pa.Table.from_pylist([t.fields for t in done], schema=fields_schema())
        clock("scan")
        summary.mkdir(exist_ok=True)
        _remove_stale_temp(summary)
        cache.invalidate(summary)  # from here until cache.save the summary is being replaced
        rows_current = not read and set(manifest.trials) == {t.trial_id for t in usable}
        # The rows files are final once read: written now, beside the tables and figures (the
        # layers file alone is ~10 s of encoding at 10,000 trials, issue 25). Else the summary's
        # epochs and layers files already hold these rows.
        writing = [] if rows_current else [background.submit(write_rows, rows[k], fields, summary / k) for k in KINDS]
        tables = _tables(rows, fields, usable)
        tables.update(ablation_tables([t.folder for t in usable], tables["trials.parquet"], noting))
        tables.update(representation_tables([t.folder for t in usable], tables["trials.parquet"], noting))
        tables.update(robustness_tables([t.folder for t in usable], tables["trials.parquet"], noting))
        excluded = excluded_table([t for t in trials if t.state != "done"])
        clock("tables")
        written = [write_table(t, summary / name) for name, t in tables.items()]
        written.append(write_table(excluded, summary / "excluded.parquet"))
        faults.point("collect-tables")
        # The figures of these trials: drawn now, or those on disk when the manifest vouches for them
        # (kept, unlisted, under --no-figures); others on disk show other trials and are removed below.
        figure_files = _figures(tables, summary / "figures") if draw else (pngs if figures_current else [])
        # The analyses' figures (ablations, representations, robustness: measured after training, so
        # always redrawn when drawn at all); --no-figures draws none (what it says: tables and report).
        shown = figure_files if figures else []
        if figures:
            shown += ablation_figures(tables, summary / "figures")
            shown += representation_figures(tables, tables["trials.parquet"], summary / "figures")
            shown += robustness_figures(tables, summary / "figures")
        for job in writing:
            job.result()
        if writing:
            faults.point("collect-rows")
        faults.point("collect-figures")
        clock("write+figures")
    counts, excluded_df = _counts(trials), excluded.to_pandas()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = render(sweep, tables["trials.parquet"], tables["conditions.parquet"], excluded_df, counts, shown, when)
    text += "\n".join(robustness_markdown(tables))
    report = _replace(summary / "report.md", lambda tmp: _write_text(tmp, text))
    faults.point("collect-report")
    written = [summary / kind for kind in KINDS] + written + shown + [report]
    committed = list(dict.fromkeys(written + figure_files))
    _drop_stale(summary, committed)
    cache.save(summary, usable, committed)  # the commit: everything above describes `usable`
    result = CollectResult(sweep, summary, counts, excluded_df, read, n_cached, written, clock.times)
    if not warned:  # else no record: the next collect is a full one and says its warnings again
        # For a trial not done, the lock decided running (held) vs interrupted or pending (free).
        locks = {t.trial_id: t.state == "running" for t in trials if t.state != "done"}
        unchanged.record(sweep, summary, figures, inputs, locks, summary_lines(result))
    clock("report")
    return result


# ---- the command --------------------------------------------------------------------------------
def summary_lines(result: CollectResult) -> unchanged.Lines:
    """The parts of the short human summary (also what the fast path of an unchanged sweep prints again)."""
    counted = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n or s in STATES[:4])
    lines = []
    ex = result.excluded[result.excluded["state"] != "pending"]  # pending: counted above, nothing to say
    for r in ex.head(SHOWN_EXCLUDED).itertuples(index=False):
        # seed is float in a column that holds nulls (a trial without a readable spec): print it whole
        where = "" if pd.isna(r.alpha) else f" alpha={r.alpha:g} seed={'?' if pd.isna(r.seed) else int(r.seed)}"
        lines.append(f"  {r.state:<11} {r.trial_id}{where}: {r.reason}")
    if len(ex) > SHOWN_EXCLUDED:
        lines.append(f"  ... and {len(ex) - SHOWN_EXCLUDED} more in {result.summary / 'excluded.parquet'}")
    pngs = sum(p.suffix == ".png" for p in result.written)
    tables = sum(p.suffix == ".parquet" for p in result.written)
    outputs = f"{result.summary}/: {tables} tables (.parquet), report.md" + (f", figures/ ({pngs} PNG)" if pngs else "")
    return unchanged.Lines(counted, result.counts.get("done", 0), lines, outputs)


def summary_text(result: CollectResult) -> str:
    """The short human summary printed to stdout."""
    parts = summary_lines(result)
    head = f"{result.sweep}: {parts.counted} (read {len(result.read)} trials, {result.cached} from the cache)"
    return "\n".join([head, *parts.excluded, f"wrote {parts.outputs}"])


def main(argv: list[str] | None = None) -> int:
    """The command, `orchestrator.collect.command.main` (here too for its callers)."""
    return command.main(argv)
