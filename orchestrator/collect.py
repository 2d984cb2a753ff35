"""Collect a sweep's finished trials into tables, a report and figures.

    python -m orchestrator.collect results/<sweep> [--full] [--no-figures] [--timings]

Writes <sweep>/summary/: trials, epochs, layers, conditions, condition_epochs, condition_layers
and excluded (.parquet, each loads with pandas.read_parquet), report.md and figures/*.png.
Only trials whose status.json says `done` are aggregated; failed, unfinished and unreadable ones
are listed in excluded.parquet with their reason. A corrupt Parquet file is named on stderr and
its trial skipped. Collecting is incremental: the trial files read last time are taken from the
summary (summary/.cache/manifest.json), so only new or changed trials are read; --full reads all.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa

from orchestrator import collect_cache as cache
from orchestrator.collect_report import render
from orchestrator.collect_scan import (
    KINDS, Trial, check_sweep, drop_trials, expected_schema, incomplete_trials, read_trials, scan,
)  # fmt: skip
from orchestrator.collect_stats import (
    condition_epochs_table, condition_layers_table, conditions_table, order_rows, to_pandas, trials_table,
)  # fmt: skip
from orchestrator.errors import UserError, cli
from trainer import results as R
from trainer.spec import TrialSpec

STATES = ("done", "failed", "running", "pending", "unreadable", "incomplete")
SHOWN_EXCLUDED = 10  # trials listed on stdout; all of them are in excluded.parquet and report.md
Warn = Callable[[str], None]


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
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase], self._last = now - self._last, now


# ---- reading ------------------------------------------------------------------------------------
def _counts(trials: list[Trial]) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _require_done(sweep: Path, trials: list[Trial]) -> None:
    if not trials:
        raise UserError(f"{sweep}: no trials yet (trials/ is empty); start them with python -m orchestrator.sweep")
    if not any(t.state == "done" for t in trials):
        counted = ", ".join(f"{n} {s}" for s, n in _counts(trials).items() if n)
        raise UserError(f"{sweep}: no finished trial to collect yet ({counted}); see python -m orchestrator.status {sweep}")


def _mark(trial: Trial, state: str, reason: str, warn: Warn) -> None:
    trial.state, trial.reason = state, reason
    warn(f"{trial.folder}: {reason}; trial {trial.trial_id} skipped")


def _fresh_rows(new: list[Trial], warn: Warn) -> dict[str, pa.Table]:
    """The epochs and layers rows of `new` (one scan per kind); bad files and trials are marked."""
    by_folder = {t.folder: t for t in new}
    fresh = {}
    for kind in KINDS:
        fresh[kind], bad = scan([t.folder / kind for t in new], expected_schema(kind))
        for path, reason in bad.items():
            _mark(by_folder[path.parent], "unreadable", f"{kind} unreadable: {reason}", warn)
    bad_ids = {t.trial_id for t in new if t.state != "done"}
    fresh = {k: drop_trials(v, bad_ids) if bad_ids else v for k, v in fresh.items()}
    ids = {t.trial_id: t for t in new}
    for tid, reason in incomplete_trials(fresh[R.EPOCHS], fresh[R.LAYERS]).items():
        if tid in ids:
            _mark(ids[tid], "incomplete", reason, warn)
    gone = {t.trial_id for t in new if t.state != "done"}
    return {k: drop_trials(v, gone) if gone - bad_ids else v for k, v in fresh.items()}


def _rows(summary: Path, done: list[Trial], full: bool, warn: Warn) -> tuple[dict[str, pa.Table], list[str], int]:
    """All rows of the done trials: unchanged ones from the cache, the rest read now."""
    reuse = set() if full else cache.reusable(done, cache.load(summary))
    cached: dict[str, pa.Table] = {}
    if reuse:
        try:
            cached = {kind: cache.read(summary, kind, reuse) for kind in KINDS}
        except (pa.ArrowException, OSError) as err:
            warn(f"{summary}: cached summary unreadable ({str(err).splitlines()[0]}); reading every trial again")
            reuse, cached = set(), {}
    new = [t for t in done if t.trial_id not in reuse]
    fresh = _fresh_rows(new, warn)
    rows = {k: pa.concat_tables([cached[k], fresh[k]]) if cached else fresh[k] for k in KINDS}
    return rows, [t.trial_id for t in new], len(reuse)


# ---- excluded trials ----------------------------------------------------------------------------
def _spec_fields(folder: Path) -> dict:
    try:
        return TrialSpec.from_dict(R.read_json(folder / R.SPEC), str(folder / R.SPEC)).row_fields()
    except (OSError, ValueError):
        return {}


def excluded_table(trials: list[Trial]) -> pa.Table:
    """One row per trial that is not aggregated: its fields (from spec.json), state and reason."""
    extra = [("state", pa.string()), ("reason", pa.string()), ("error_kind", pa.string()), ("attempts", pa.int64()),
             ("host", pa.string()), ("started", pa.string()), ("ended", pa.string())]  # fmt: skip
    schema = pa.schema(list(R.trial_schema(TrialSpec())) + extra)
    order = {s: i for i, s in enumerate(STATES)}
    rows = []
    for t in sorted(trials, key=lambda t: order.get(t.state, len(order))):
        status = {k: t.status.get(k) for k in ("error_kind", "attempts", "host", "started", "ended")}
        rows.append(_spec_fields(t.folder) | {"trial_id": t.trial_id, "state": t.state, "reason": t.reason} | status)
    return pa.Table.from_pylist(rows, schema=schema)


# ---- writing ------------------------------------------------------------------------------------
def _write(table: pa.Table | pd.DataFrame, path: Path) -> Path:
    """Write atomically; Arrow tables get the pandas metadata the DataFrames carry (ints stay Int64)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    else:
        empty = to_pandas(table.slice(0, 0))
        table = table.replace_schema_metadata(pa.Schema.from_pandas(empty, preserve_index=False).metadata)
    R.write_parquet(table, path)
    return path


def collect(path: str | Path, *, full: bool = False, figures: bool = True, warn: Warn = _warn) -> CollectResult:
    """Collect the sweep folder `path` into <path>/summary/ (see the module docstring)."""
    clock = _Clock()
    sweep = check_sweep(Path(path))
    summary = sweep / "summary"
    trials = read_trials(sweep)
    _require_done(sweep, trials)
    clock("status")
    rows, read, n_cached = _rows(summary, [t for t in trials if t.state == "done"], full, warn)
    usable = {t.trial_id: t for t in trials if t.state == "done"}
    if not usable:
        raise UserError(f"{sweep}: no readable finished trial (see the warnings above)")
    clock("scan")
    table = trials_table(rows[R.EPOCHS], rows[R.LAYERS], usable)
    order = table["trial_id"].tolist()
    epochs, layers = order_rows(rows[R.EPOCHS], order), order_rows(rows[R.LAYERS], order)
    conds = conditions_table(table)
    tables = {
        "trials.parquet": table, "conditions.parquet": conds,
        "condition_epochs.parquet": condition_epochs_table(epochs, table),
        "condition_layers.parquet": condition_layers_table(layers, table),
        "excluded.parquet": excluded_table([t for t in trials if t.state != "done"]),
    }  # fmt: skip
    clock("tables")
    summary.mkdir(exist_ok=True)
    written = [_write(epochs, summary / R.EPOCHS), _write(layers, summary / R.LAYERS)]
    cache.save(summary, list(usable.values()))
    written += [_write(t, summary / name) for name, t in tables.items()]
    clock("write")
    pngs = _figures(tables, summary) if figures else []
    clock("figures")
    excluded = tables["excluded.parquet"].to_pandas()
    counts = _counts(trials)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report = summary / "report.md"
    _write_text(render(sweep, table, conds, excluded, counts, pngs, when), report)
    clock("report")
    return CollectResult(sweep, summary, counts, excluded, read, n_cached, written + pngs + [report], clock.times)


def _figures(tables: dict, summary: Path) -> list[Path]:
    from orchestrator.collect_figures import write_figures  # matplotlib: imported only when drawing

    return write_figures(
        tables["conditions.parquet"], tables["condition_epochs.parquet"], tables["condition_layers.parquet"], summary / "figures"
    )


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}{R.TMP_MARK}{os.getpid()}")
    tmp.write_text(text)
    R.replace_atomically(tmp, path)


# ---- the command --------------------------------------------------------------------------------
def summary_text(result: CollectResult) -> str:
    """The short human summary printed to stdout."""
    counted = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n or s in STATES[:4])
    lines = [f"{result.sweep}: {counted} (read {len(result.read)} trials, {result.cached} from the cache)"]
    ex = result.excluded
    for r in ex.head(SHOWN_EXCLUDED).itertuples(index=False):
        where = "" if pd.isna(r.alpha) else f" alpha={r.alpha:g} seed={r.seed}"
        lines.append(f"  {r.state:<10} {r.trial_id}{where}: {r.reason}")
    if len(ex) > SHOWN_EXCLUDED:
        lines.append(f"  ... and {len(ex) - SHOWN_EXCLUDED} more in {result.summary / 'excluded.parquet'}")
    pngs = sum(p.suffix == ".png" for p in result.written)
    lines.append(f"wrote {result.summary}/: {len(result.written) - pngs - 1} tables (.parquet), report.md"
                 + (f", figures/ ({pngs} PNG)" if pngs else ""))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder, <results>/<sweep>")
    parser.add_argument("--full", action="store_true", help="ignore the cache and read every trial again")
    parser.add_argument("--no-figures", action="store_true", help="tables and report only")
    parser.add_argument("--timings", action="store_true", help="print the time of each phase to stderr")
    args = parser.parse_args(argv)
    result = collect(args.sweep, full=args.full, figures=not args.no_figures)
    print(summary_text(result))
    if args.timings:
        print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
