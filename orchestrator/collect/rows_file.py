"""The summary's epochs.parquet and layers.parquet: every row with its trial's fields in front.

Used by `python -m orchestrator.collect` (core.write_rows). The file is the one
`pq.write_table(with_fields(rows, fields), use_dictionary=<few-valued columns>)` writes, byte for
byte, for less (issue 25): at 10,000 trials the layers file has 14.5 million rows, and it took
8.7-12.4 s of CPU written plain, 6.9-9.0 s so (docs/benchmarks.md). Most of what is left is
Parquet's encoding, ~0.2-0.28 s per column whatever its values.

A field is constant over its trial's rows, so a row group's field column is written as an Arrow
dictionary array: its dictionary the values of the trials present, in the order they first
appear (as Parquet's dictionary encoder would meet them), its indices one take per row. Parquet's
writer puts such a column's dictionary and indices straight onto the pages, which are the pages
the encoder makes of the plain column. The one other difference, the Arrow schema stored in the
footer (it would say "dictionary"), is avoided by storing the plain schema by hand, under the same
key and in the same order. `tests/test_collect.py::test_rows_file_bytes_equal_the_plain_write`
holds the bytes equal. A field with more than 256 values in a row group (trial_id, a seed axis
of hundreds) is written plain, as are bool and list fields.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.collect.rows import contiguous, with_fields
from orchestrator.collect.scan import fields_schema
from orchestrator.collect.stats import to_pandas

ROW_GROUP = 1024 * 1024  # pyarrow's default row group length: writing slices of it makes the same file
FEW_VALUED = {"epoch", "step", "layer", "n_units", "alpha_active", "lr"}  # dictionary-encoded, with the trial fields
MOST_CODED = 256  # values per row group (index bit width <= 8): the pages are then the encoder's, byte for byte
CODED_TYPES = (pa.string(), pa.int64(), pa.float64())  # Parquet dictionary-encodes these as they are


def pandas_schema(table: pa.Table) -> pa.Schema:
    """`table`'s schema with the pandas metadata its DataFrame would carry (ints stay Int64)."""
    return table.schema.with_metadata(pa.Schema.from_pandas(to_pandas(table.slice(0, 0)), preserve_index=False).metadata)


def dictionary_columns(names: list[str]) -> list[str]:
    """The columns among `names` that Parquet dictionary-encodes: the few-valued ones. Trying it on
    millions of distinct metric values costs a third of the write time for nothing."""
    return [c for c in names if c in FEW_VALUED or c in fields_schema().names]


def write(rows: pa.Table, fields: pa.Table, path: Path) -> None:
    """Write `rows` (metrics, `_rank` into `fields`) with their trial fields in front to `path`."""
    plain = pandas_schema(with_fields(rows.slice(0, 0), fields))
    dictionary = dictionary_columns(plain.names)
    coded = _coded(rows["_rank"].to_numpy(), fields, dictionary)
    schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in coded else f for f in plain])
    starts = range(0, max(rows.num_rows, 1), ROW_GROUP)  # an empty table: one empty write, as write_table

    def part(start: int) -> pa.Table:
        # Contiguous, as the plain write's row group is: Parquet's writer batches values chunk by
        # chunk, so chunk boundaries (a +10 collect's rows are slices of sorted runs) may move its
        # page boundaries. Not seen with pyarrow 26, not promised either; one row group's copy.
        return with_fields(contiguous(rows.slice(start, ROW_GROUP)), fields, coded)

    # The next row group's field columns are built while this one is encoded (both release the GIL);
    # one ahead only, so at most two row groups' columns exist at once.
    with pq.ParquetWriter(path, schema, use_dictionary=dictionary, store_schema=False) as writer, ThreadPoolExecutor(1) as ahead:
        coming = ahead.submit(part, starts[0])
        for start in starts[1:]:
            table, coming = coming.result(), ahead.submit(part, start)
            writer.write_table(table)
        writer.write_table(coming.result())
        # What store_schema=True would add, in its order: the Arrow schema, then the schema's own metadata.
        writer.add_key_value_metadata({b"ARROW:schema": base64.b64encode(plain.serialize().to_pybytes())})
        for key, value in (plain.metadata or {}).items():
            writer.add_key_value_metadata({key: value})


def _coded(rank: np.ndarray, fields: pa.Table, dictionary: list[str]) -> frozenset[str]:
    """The dictionary-encoded fields written as dictionary arrays: those with at most MOST_CODED
    values in every row group (measured: beyond 256 entries Parquet's writer lays the indices of a
    dictionary array out differently, ~250 bytes more per column chunk)."""
    names = [n for n in fields.column_names if n in dictionary and fields.schema.field(n).type in CODED_TYPES]
    for start in range(0, len(rank), ROW_GROUP):
        present = pa.array(np.unique(rank[start : start + ROW_GROUP]))
        names = [n for n in names if len(pc.unique(fields[n].take(present))) <= MOST_CODED]
    return frozenset(names)
