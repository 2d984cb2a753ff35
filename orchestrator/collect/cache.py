"""The collector's incremental cache: what the last collect read, so the next one reads only news.

The cached rows are the summary's own epochs.parquet and layers.parquet (no second copy);
summary/.cache/manifest.json records, per trial, the fingerprint (size, mtime_ns, inode) of the
trial files those rows came from, and the fingerprints of the summary files themselves. A trial is
taken from the cache only if its files are unchanged; the cache as a whole is used only if the
summary files are the ones the manifest describes and the code's schema is the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from orchestrator.collect.scan import KINDS, Trial, expected_schema
from trainer import results as R

VERSION = 1
MANIFEST = Path(".cache") / "manifest.json"


def _fp(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _schemas() -> dict[str, str]:
    return {kind: expected_schema(kind).to_string(show_schema_metadata=False) for kind in KINDS}


def load(summary: Path) -> dict[str, dict[str, list[int]]]:
    """{trial_id: {kind: fingerprint}} of the trials whose rows the summary holds; {} if unusable."""
    try:
        manifest = json.loads((summary / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION or manifest.get("schemas") != _schemas():
        return {}
    outputs = manifest.get("outputs", {})
    if any(_fp(summary / kind) != outputs.get(kind) for kind in KINDS):
        return {}  # a summary file was replaced or removed since: its rows are not the manifest's
    return manifest.get("trials", {})


def reusable(done: list[Trial], cached: dict[str, dict[str, list[int]]]) -> set[str]:
    """Done trials whose files are exactly those the cached rows came from."""
    return {
        t.trial_id for t in done
        if t.trial_id in cached and all(list(t.files[k]) == cached[t.trial_id].get(k) for k in KINDS)
    }  # fmt: skip


def read(summary: Path, kind: str, trial_ids: set[str]) -> pa.Table:
    """trial_id and the metric columns of the cached rows of `trial_ids` (raises if unreadable)."""
    dataset = ds.dataset(summary / kind, format="parquet", schema=expected_schema(kind))
    table = dataset.to_table(columns=["trial_id", *R.COLUMNS[kind].names])
    return table.filter(pc.is_in(table["trial_id"], value_set=pa.array(sorted(trial_ids), type=pa.string())))


def save(summary: Path, trials: list[Trial]) -> None:
    """Record that the summary files (just written) hold the rows of `trials`."""
    manifest: dict[str, Any] = {
        "version": VERSION,
        "schemas": _schemas(),
        "outputs": {kind: _fp(summary / kind) for kind in KINDS},
        "trials": {t.trial_id: {k: list(t.files[k]) for k in KINDS} for t in trials},
    }
    (summary / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    R.write_json(manifest, summary / MANIFEST)
