"""The settings an after-training job measured with, kept in its Parquet files' metadata.

The ablation and robustness jobs resume: a rerun measures only what its trial's files lack. Before
this record, "what they lack" was keyed by epoch (and piece), not by the settings, so a rerun with
other settings (other fractions, epsilons, image counts) found everything present, added nothing,
reported success, and the old rows stood silently for the new plan. Now each file carries the
settings its rows were measured with (key `sweep.plan`, canonical JSON), and a rerun under other
settings is one line, unless `--replace` asks to measure anew. A file written before the record
existed has none: it is taken as it is (resumed), as before, and `--replace` measures it anew.

Parquet key-value metadata rather than a sidecar file: it travels with the rows (a copied or
renamed file keeps it) and is written in the same atomic replace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.errors import UserError

PLAN_KEY = b"sweep.plan"


class PlanMismatch(UserError):
    """A trial's file holds rows measured with other settings than the ones asked for."""


def plan_text(settings: Mapping[str, Any]) -> bytes:
    """The canonical form of `settings` (tuples as lists, keys sorted): equal settings, equal bytes."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, sort_keys=True).encode()


def with_plan(table: pa.Table, text: bytes) -> pa.Table:
    """`table` carrying `text` (from plan_text) in its schema metadata, which pq.write_table keeps."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), PLAN_KEY: text})


def recorded(path: Path) -> dict[str, Any] | None:
    """The settings recorded in the file at `path`; None when it has none: no file, one written
    before the record, or one too damaged to read its footer (the job's own read of it says so;
    `--replace` measures it anew)."""
    try:
        text = (pq.read_schema(path).metadata or {}).get(PLAN_KEY)
        return json.loads(text) if text else None
    except (OSError, pa.ArrowException, ValueError):  # ValueError: a record that is not JSON counts as none
        return None


def measured_anew(paths: list[Path], text: bytes, replace: bool) -> bool:
    """Whether the rows in `paths` must be measured anew under the settings `text`: False when every
    file is absent or holds these settings (or none recorded) and the job resumes; True with
    `replace` when one holds others (or none recorded); else PlanMismatch naming the first such file."""
    asked = json.loads(text)
    for path in paths:
        if not path.exists():
            continue
        old = recorded(path)
        if old == asked:
            continue
        if replace:
            return True
        if old is None:
            continue
        there, here = _differences(old, asked)
        raise PlanMismatch(
            f"{path}: measured with other settings ({there}) than this run asks for ({here}); "
            "allowed: the same settings (the job resumes), or --replace to measure anew"
        )
    return False


def damaged(path: Path, err: Exception) -> UserError:
    """The line for a job's file that cannot be read: `--replace` measures it anew (its settings
    cannot be read, so `measured_anew` says so)."""
    return UserError(f"{path}: damaged ({str(err)[:80]}); measure the trial anew with --replace")


def mixed(paths: list[Path]) -> str | None:
    """A line for the collector when the trials' files of one kind were measured with different
    recorded settings (which its tables would average together), naming one of the minority; None
    when they agree (files without a record are not counted)."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        if (settings := recorded(path)) is not None:
            groups.setdefault(json.dumps(settings, sort_keys=True), []).append(path)
    if len(groups) < 2:
        return None
    by_size = sorted(groups.items(), key=lambda kv: len(kv[1]), reverse=True)
    (usual, most), (odd, few) = by_size[0], by_size[-1]
    there, here = _differences(json.loads(odd), json.loads(usual))
    return (
        f"{len(paths) - len(most)} of {len(paths)} trials' {most[0].name} were measured with other settings "
        f"than the other {len(most)} (e.g. {few[0]}: {there}; the others: {here}), and the tables average them "
        "together; measure them alike (the job's --replace with the settings wanted)"
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, str]:
    """The settings that differ, as `old`'s and `new`'s values ("draws 3", "draws 1")."""
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return "; ".join(f"{k} {_show(old.get(k))}" for k in differ), "; ".join(f"{k} {_show(new.get(k))}" for k in differ)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(_show, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:.4g}"  # epsilons are k / 255: 0.003922, not 17 digits
    return "none" if value is None else str(value)
