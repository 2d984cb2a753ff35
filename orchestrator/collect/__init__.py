"""Collect a sweep's finished trials into tables, a report and figures: `python -m orchestrator.collect`.

    from orchestrator.collect import collect
    result = collect("results/<sweep>")            # CollectResult: counts, excluded trials, files written

Modules, in the order a collect uses them:
    command    the command (main): the fast path of an unchanged sweep, else collect()
    unchanged  that fast path: a stat-only check against summary/.cache/unchanged.json
    core       collect(): read, build the tables, write <sweep>/summary/
    scan       the sweep folder, each trial's state (trainer.status.observe), spec fields and file
               fingerprints, and scan_files: one robust scan of many Parquet files (polars, pyarrow on errors)
    cache      the incremental cache (summary/.cache/manifest.json): which rows need no new read
    rows       the done trials' rows: cached + freshly scanned, checked for completeness, ordered
    rows_file  the summary's epochs and layers files: the rows with their trial fields, written fast
    stats      the trials and condition tables: mean / std / sem / 95% CI over seeds
    ablations  ablation curves and areas from the trials' ablations.parquet, and their figures
    figures    the PNG figures (matplotlib, imported only when drawing)
    report     summary/report.md
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.collect.core import CollectResult, collect, main

__all__ = ["CollectResult", "collect", "main"]


def __getattr__(name: str) -> Any:
    """core (pyarrow, pandas) imported on first use: `python -m orchestrator.collect` over an
    unchanged sweep never needs it (orchestrator.collect.command)."""
    if name in __all__:
        from orchestrator.collect import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
