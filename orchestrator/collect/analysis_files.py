"""The collected trials' after-training files (ablations, representations, robustness), each kind
read in one dataset scan.

A file that cannot be read is one warning naming it and is left out of the tables (the rest
stands), never a traceback: before, one damaged ablations.parquet stopped the whole collect. Where
the files record the settings they were measured with (trainer.analysis.plan_record), trials
measured with different settings are one warning too, since the tables average over trials.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from trainer.analysis.plan_record import mixed

Warn = Callable[[str], None]


def read_files(
    folders: list[Path], name: str, warn: Warn, again: str, columns: list[str] | None = None, settings: bool = False
) -> pd.DataFrame | None:
    """The rows of every trial's `name` file (None if no trial has a readable one); `again` is how
    to measure a damaged file anew (the command), `settings`: say when recorded settings differ."""
    paths = [f / name for f in folders if (f / name).exists()]
    if not paths:
        return None
    try:
        table: pa.Table | None = ds.dataset([str(p) for p in paths], format="parquet").to_table(columns=columns)
    except (OSError, pa.ArrowException):  # one file or more is damaged: find which, keep the others
        table, paths = _one_by_one(paths, columns, warn, again)
    if table is None:
        return None
    if settings and (line := mixed(paths)):
        warn(line)
    return table.to_pandas()


def _one_by_one(paths: list[Path], columns: list[str] | None, warn: Warn, again: str) -> tuple[pa.Table | None, list[Path]]:
    tables, good = [], []
    for path in paths:
        try:
            tables.append(pq.read_table(path, columns=columns))
            good.append(path)
        except (OSError, pa.ArrowException) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            first = first.replace(f"Could not open Parquet input source '{path}': ", "")[:120]  # the path is named already
            sweep = path.parent.parent.parent  # <sweep>/trials/<id>/<file>
            warn(f"{path}: unreadable ({first}); left out of the tables; to measure it anew: {again.replace('<sweep>', str(sweep))}")
    return (pa.concat_tables(tables, promote_options="default") if tables else None), good
