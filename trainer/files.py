"""A trial folder's file names, and the atomic write of its files, without pyarrow.

`orchestrator.status` and the rerun plan read only spec.json, status.json and the lock; importing
pyarrow for these names cost ~0.3 s of every such command (issue 25). trainer.results (the
Parquet schemas and writes) re-exports all of this, so either import works.

Every file appears atomically: written beside its final name (a dot-file ending in .tmp-<pid>),
flushed to disk, then renamed over it. A job killed at any moment leaves the previous complete
file, never a half one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer import faults

EPOCHS, LAYERS, UNITS = "epochs.parquet", "layers.parquet", "units.parquet"
SPEC, STATUS, CHECKPOINT = "spec.json", "status.json", "checkpoint.pt"
ABLATIONS = "ablations.parquet"  # written by trainer.analysis.ablation_job, read by the collector
# Written by trainer.analysis.robustness_job (torch), read by the collector, which must not import torch.
ROBUSTNESS, ROBUST_DIMENSIONALITY, ROBUST_GRADIENTS = "robustness.parquet", "robust_dimensionality.parquet", "robust_gradients.parquet"
TMP_MARK = ".tmp-"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextmanager
def temp_for(path: Path) -> Iterator[Path]:
    """The temp name to write `path` under; removed if the write fails. A full disk left a partial
    checkpoint there (a third of a small disk), and the next launch refused for want of the space it took."""
    tmp = _tmp_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)  # a kill (SIGKILL) leaves it: the next attempt removes it (remove_temp_files)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and rename it over `path` (same folder, so the rename is atomic)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(data: dict[str, Any], path: Path) -> None:
    with temp_for(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        faults.point("json-tmp")
        replace_atomically(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_bytes(path: str) -> bytes:
    """The bytes of a small file, as Path.read_bytes gives them, in a third of its time.

    Unbuffered (os.open, os.read): no file object, which was a tenth of `orchestrator.status` over
    10,000 trials' status.json and spec.json (issue 25). Raises what os.open raises (FileNotFoundError...).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) < 1 << 16:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):  # a large file: read on to its end
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# What every finished trial wrote (trainer.resultlog writes the three each epoch): a done trial
# missing one did not leave what its spec says. The collector reads the first two, the ablation job units.
RESULTS = (EPOCHS, LAYERS, UNITS)
PARQUET_MAGIC = b"PAR1"  # at both ends of every whole Parquet file


def kept_checkpoint_epochs(folder: Path) -> list[int]:
    """Epochs whose checkpoints the trial kept (`checkpoints/epoch_NNN.pt`, as trainer.checkpoint keeps
    them; read here without importing torch), ascending."""
    found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in (Path(folder) / "checkpoints").glob("epoch_*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def damaged_results(folder: str | Path, names: tuple[str, ...] = RESULTS) -> str | None:
    """Why a done trial's result files cannot be what it finished with (None: they may be): one is
    missing, or is not a whole Parquet file (cut short, emptied, overwritten: its magic is not at
    both ends). The trainer writes them atomically, so this is damage from outside (a disk, a
    hand). A few bytes read from each, an open and two preads: what `orchestrator.status` and the
    plan can afford for every done trial (issue 25); damage inside a page is the collector's to find.
    """
    for name in names:
        try:
            fd = os.open(f"{os.fspath(folder)}/{name}", os.O_RDONLY)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} is unreadable ({err.strerror or err})"
        try:
            size = os.fstat(fd).st_size
            whole = size >= 12 and os.pread(fd, 4, 0) == PARQUET_MAGIC and os.pread(fd, 4, size - 4) == PARQUET_MAGIC
        except OSError as err:
            return f"{name} is unreadable ({err.strerror or err})"
        finally:
            os.close(fd)
        if not whole:
            return f"{name} is damaged ({size} bytes, not a whole Parquet file)"
    return None


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete what a killed writer left behind (its temp files); returns what was removed."""
    removed = [p for p in folder.glob(f".*{TMP_MARK}*") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
