"""`--check` of the manifest: decode every image once, in parallel processes, with a progress bar.

The decoder is the loaders' own (trainer.imagenet.decode), so a file the check passes is one the
loaders read; a file it fails is skipped up front by both loaders. Progress: tqdm when it is
installed, else one line on stderr rewritten in place.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa

from trainer.imagenet.decode import BadImage, decode_rgb, read_bytes, regular_size
from trainer.imagenet.workers import init_worker, worker_context

CHUNK = 64  # files per task: amortises the inter-process round trip, keeps the bar moving
Result = tuple[bool, str | None, int | None, int | None, int]  # ok, error, height, width, size


def check_file(path: str) -> Result:
    try:
        size = regular_size(path)  # before opening: a FIFO would block the read forever
        data = read_bytes(path)
        image = decode_rgb(data)
    except BadImage as err:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        return False, str(err), None, None, size
    return True, None, int(image.shape[1]), int(image.shape[2]), len(data)


def _check_chunk(paths: list[str]) -> list[Result]:
    return [check_file(p) for p in paths]


class _Progress:
    """tqdm if available, else a one-line counter on stderr; silent when disabled."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled, self.done = total, label, enabled, 0
        self.bar = None
        self.start = self.last = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=f"check {label}", unit="img", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.monotonic() - self.last > 0.5 or self.done == self.total):
            self.last = time.monotonic()
            rate = self.done / max(1e-9, self.last - self.start)
            print(f"\rcheck {self.label}: {self.done}/{self.total} images, {rate:.0f}/s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def check_paths(paths: list[str], workers: int | None, progress: bool, label: str) -> list[Result]:
    """check_file of every path, in order; `workers` processes (1 or None with one CPU: in-process)."""
    bar = _Progress(len(paths), label, progress)
    out: list[Result] = []
    try:
        results: Iterable[list[Result]]
        if (workers or 1) <= 1:
            results = map(_check_chunk, _chunks(paths))
            for chunk in results:
                out.extend(chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=init_worker, initargs=(0, os.getpid())) as pool:
                for chunk in pool.map(_check_chunk, _chunks(paths)):
                    out.extend(chunk)
                    bar.update(len(chunk))
    finally:
        bar.close()
    return out


def check_split(folder: Path, table: pa.Table, workers: int | None, progress: bool, label: str) -> pa.Table:
    """`table` (manifest schema) with ok, error, height, width and size from decoding every file."""
    results = check_paths([str(folder / p) for p in table.column("path").to_pylist()], workers, progress, label)
    ok, error, height, width, size = (list(col) for col in zip(*results)) if results else ([], [], [], [], [])
    columns = {
        "ok": pa.array(ok, pa.bool_()),
        "error": pa.array(error, pa.string()),
        "height": pa.array(height, pa.int32()),
        "width": pa.array(width, pa.int32()),
        "size": pa.array(size, pa.int64()),
    }
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table
