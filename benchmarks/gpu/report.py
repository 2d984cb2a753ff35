"""The check's table: rows run one at a time, each isolated, the files rewritten after every row.

A row is a function returning a `Result`. `Report.run` gives it its own time cap (SIGALRM raises
`RowTimeout` in the row's Python code, so a slow compile or a hung loop ends the row, not the
check), catches what it raises (out of memory, compile, graph capture, decode ...), records the
error's first line, and frees what the row held (gc, the CUDA caching allocator) before the next.
DIR/gpu-check.md and DIR/gpu-check.json are rewritten after each row: a kill keeps every row
measured so far, and the header says how far the check got.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


class RowTimeout(BaseException):
    """The row's time cap ran out (a BaseException: a row's own `except Exception` must not swallow it)."""


@dataclass
class Result:
    images_per_s: float | None
    note: str = ""
    ratio: float | None = None  # fused / separate, loader / synthetic, ... (the note says which)
    status: str = "ok"  # ok | error | not run | not installed


@dataclass
class Row:
    key: str
    name: str
    cap_s: float
    run: Callable[[], Result] = field(repr=False)


@dataclass
class Done:
    key: str
    name: str
    images_per_s: float | None
    ratio: float | None
    note: str
    status: str
    seconds: float
    cap_s: float


def first_line(err: BaseException) -> str:
    """`Type: the first non-empty line of the message` (some errors start their message with a newline)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def header(device: torch.device, mode: str) -> dict[str, Any]:
    """What the figures were measured on: device, driver, library versions, host, date."""
    import torchvision

    from trainer.provenance import device_name, git_info

    driver = None
    if device.type == "cuda":
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    memory = f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB" if device.type == "cuda" else None
    return {
        "device": f"{device_name(device)} ({device})",
        "device_memory": memory,
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": mode,
        **git_info(),
    }


class Report:
    def __init__(self, out: Path, head: dict[str, Any], device: torch.device, budget_s: float | None, start: float) -> None:
        """`start`: perf_counter() when the check began (the budget counts from it, data generation included)."""
        self.out, self.head, self.device = out, head, device
        self.rows: list[Done] = []
        self.results: dict[str, float] = {}  # key -> images/s of the rows that measured
        self.start = start
        self.deadline = None if budget_s is None else self.start + budget_s
        self.planned = 0

    def run(self, rows: list[Row]) -> None:
        self.planned = len(rows)
        self.write()
        for row in rows:
            self.rows.append(self._one(row))
            self.write()
            d = self.rows[-1]
            shown = "-" if d.images_per_s is None else f"{d.images_per_s:,.0f} img/s"
            print(f"[{time.perf_counter() - self.start:5.0f} s] {d.name}: {shown} ({d.status}) {d.note}", flush=True)

    def _one(self, row: Row) -> Done:
        cap = row.cap_s
        if self.deadline is not None:
            left = self.deadline - time.perf_counter()
            if left < min(10.0, cap):
                return Done(
                    row.key, row.name, None, None, f"not run: the check's time budget is spent ({left:.0f} s left)", "not run", 0.0, cap
                )
            cap = min(cap, left)
        start = time.perf_counter()
        try:
            with _alarm(cap):
                r = row.run()
        except RowTimeout:
            r = Result(None, f"error: over its time cap of {cap:.3g} s", status="error")
        except Exception as err:  # noqa: BLE001  # any failure of one row (OOM, compile, capture, decode) is recorded, not fatal
            r = Result(None, f"error: {first_line(err)}", status="error")
        seconds = time.perf_counter() - start
        self._free()
        if r.images_per_s is not None:
            self.results[row.key] = r.images_per_s
        return Done(row.key, row.name, r.images_per_s, r.ratio, r.note, r.status, seconds, cap)

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001  # a sticky CUDA error: later rows will record their own
                pass

    # ---- the files ----------------------------------------------------------------------------
    def write(self) -> None:
        elapsed = time.perf_counter() - self.start
        state = "complete" if len(self.rows) == self.planned else f"in progress: {len(self.rows)} of {self.planned} rows"
        data = {"header": {**self.head, "elapsed_s": round(elapsed, 1), "state": state}, "rows": [asdict(r) for r in self.rows]}
        _atomic(self.out / "gpu-check.json", json.dumps(data, indent=1) + "\n")
        _atomic(self.out / "gpu-check.md", markdown(data))


def markdown(data: dict[str, Any]) -> str:
    h = {k: ("-" if v is None else v) for k, v in data["header"].items()}
    get = lambda key: h.get(key, "-")
    memory = f", {h['device_memory']}" if h.get("device_memory", "-") != "-" else ""
    lines = [
        "# GPU check (`python -m benchmarks.gpu`)",
        "",
        f"{get('device')}{memory}; driver {get('driver')}; torch {get('torch')} (CUDA {get('cuda')}), torchvision {get('torchvision')}, "
        f"cuDNN {get('cudnn')}, Python {get('python')}; host {get('host')} ({get('cpus')} CPUs); {get('date')}; "
        f"git {str(get('git_sha'))[:10]}{' (dirty)' if h.get('git_dirty') is True else ''}.",
        "",
        f"Mode: {get('mode')}. {str(get('state')).capitalize()}, {h.get('elapsed_s', 0):.0f} s. {h.get('jpegs', '')}",
        "",
        "| row | images/s | ratio | note | s (cap) |",
        "|---|---:|---:|---|---:|",
    ]
    for r in data["rows"]:
        rate = "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['name']} | {rate} | {ratio} | {r['note']} | {r['seconds']:.0f} ({r['cap_s']:.0f}) |")
    return "\n".join(lines) + "\n"


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class _alarm:
    """SIGALRM after `seconds` raises RowTimeout in the main thread (no-op where there is no SIGALRM)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = hasattr(signal, "setitimer")

    def __enter__(self) -> None:
        if self.armed:
            self.old = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.seconds))

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)


def _raise_timeout(signum: int, frame: object) -> None:
    raise RowTimeout
