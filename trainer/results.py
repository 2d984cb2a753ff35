"""Result files of one trial (docs/results.md): Parquet schemas and atomic writes.

Every file appears atomically (trainer.files, whose file names and JSON writes this module
re-exports: they need no pyarrow). Every row carries the trial's fields (`TrialSpec.row_fields`),
so the files of many trials concatenate without joins.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer import faults
from trainer.files import (  # noqa: F401  (re-exported: trainer.files holds them without pyarrow)
    ABLATIONS,
    CHECKPOINT,
    EPOCHS,
    LAYERS,
    ROBUST_DIMENSIONALITY,
    ROBUST_GRADIENTS,
    ROBUSTNESS,
    SPEC,
    STATUS,
    TMP_MARK,
    UNITS,
    read_json,
    remove_temp_files,
    replace_atomically,
    temp_for,
    write_json,
)
from trainer.spec import TrialSpec

# Metric columns per file, in order; the trial's fields come first in every file.
EPOCH_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()),
        ("step", pa.int64()),  # optimizer steps taken when this evaluation ran
        ("epoch_end", pa.bool_()),  # False: a mid-epoch evaluation (eval_every_steps) during `epoch`
        ("alpha_active", pa.float64()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_ce", pa.float64()),
        ("train_selectivity", pa.float64()),  # null where the regularizer was off (not computed)
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("test_top5", pa.float64()),  # null for data sets with fewer than 100 classes
        ("csi_mean", pa.float64()),
        ("seconds", pa.float64()),  # wall time of the epoch's training
        ("eval_seconds", pa.float64()),
        ("images_per_s", pa.float64()),  # training images per second
    ]
)
LAYER_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("epoch_end", pa.bool_()),
        ("layer", pa.string()),
        ("n_units", pa.int64()),
        ("csi_mean", pa.float64()),
        ("csi_median", pa.float64()),
        ("csi_std", pa.float64()),
    ]
)
UNIT_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("epoch_end", pa.bool_()),
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("csi", pa.float32()),
        ("top_class", pa.int32()),
        ("mu_max", pa.float32()),
        ("mu_rest", pa.float32()),
    ]
)
COLUMNS = {EPOCHS: EPOCH_COLUMNS, LAYERS: LAYER_COLUMNS, UNITS: UNIT_COLUMNS}


_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _arrow_type(tp: Any) -> pa.DataType:
    """Arrow type of a TrialSpec field type (Optional[X] -> nullable X, tuple[int, ...] -> list)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return _arrow_type(args[0])
    if typing.get_origin(tp) is tuple:
        return pa.list_(_arrow_type(args[0]))
    return _ARROW[tp]


def trial_schema(spec: TrialSpec) -> pa.Schema:
    """Arrow schema of `spec.row_fields()`, typed from the spec's declared field types."""
    hints = typing.get_type_hints(TrialSpec)
    names = {"base_lr": "lr"}
    return pa.schema([(k, pa.string() if k == "trial_id" else _arrow_type(hints[names.get(k, k)])) for k in spec.row_fields()])


def file_schema(name: str, trial_schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(trial_schema) + list(COLUMNS[name]))


def make_table(name: str | pa.Schema, rows: Mapping[str, Any], row_fields: dict[str, Any], trial_schema: pa.Schema) -> pa.Table:
    """A table of metric columns `rows` (column -> values) plus the trial's constant fields.

    `name`: one of the trial's files (its columns in COLUMNS), or the metric columns themselves.
    """
    columns = COLUMNS[name] if isinstance(name, str) else name
    n = len(rows[columns.names[0]])
    arrays = [pa.array([row_fields[f.name]] * n, type=f.type) for f in trial_schema]
    arrays += [pa.array(rows[f.name], type=f.type) for f in columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(trial_schema) + list(columns)))


# ---- atomic files (trainer.files) -------------------------------------------------------------
def write_parquet(table: pa.Table, path: Path) -> None:
    with temp_for(path) as tmp:
        pq.write_table(table, tmp)
        faults.point("parquet-tmp")
        replace_atomically(tmp, path)


def read_rows_until(path: Path, step: int) -> pa.Table | None:
    """The rows of an existing result file a checkpoint taken after `step` optimizer steps covers.

    Steps only grow through a trial (epoch-end rows at e x steps per epoch, mid-epoch rows in
    between), so these are exactly the rows written before that checkpoint.
    """
    if not path.exists():
        return None
    table = pq.read_table(path)
    return table.filter(pc.less_equal(table["step"], step))


def concat(tables: Iterable[pa.Table], promote: bool = False) -> pa.Table:
    """One table of equal-schema tables; `promote`: a file written before a column existed gets it as nulls."""
    return pa.concat_tables(list(tables), promote_options="default" if promote else "none")
