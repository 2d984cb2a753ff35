"""Benchmark of the collector on a synthetic sweep (default: 1,000 trials x 160 epochs, ResNet20 layers).

    python -m orchestrator.bench_collect [--out /tmp/bench-collect] [--trials 1000] [--epochs 160]
                                         [--units] [--repeat 3]

Builds <out>/bench/trials/<id>/{spec.json,status.json,epochs.parquet,layers.parquet} (units.parquet
too with --units) with the trainer's own schemas and plausible numbers (selectivity falls as alpha
goes negative), reusing the tree if it is already there. Then times `python -m orchestrator.collect`,
each run a fresh process (imports and interpreter start included), in three situations:

    cold         no summary yet: every trial is read
    unchanged    collect again, nothing changed
    +10 trials   10 more trials finished since the last collect (removed again afterwards)

and prints a markdown table: median wall time and the largest peak RSS (os.wait4) of the runs.
Targets (issue): 1,000 x 160 collected in <= 5 s and <= 2 GB peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from trainer import results as R
from trainer.spec import TrialSpec

ALPHAS = (-100.0, -50.0, -30.0, -20.0, -10.0, -5.0, -2.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0)
LAYERS = [(f"stage{s}.block{b}", width) for s, width in ((1, 16), (2, 32), (3, 64)) for b in (1, 2, 3)]


def _curves(spec: TrialSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic csi_mean and test_acc per epoch: selectivity rises early, then settles by alpha."""
    e = np.arange(spec.epochs + 1, dtype=float)
    s = np.sign(spec.alpha) * np.log10(1 + abs(spec.alpha))  # -2 .. 2
    csi_final = np.clip(0.30 + 0.12 * s + rng.normal(0, 0.01), 0.01, 0.9)
    csi = 0.12 + (csi_final - 0.12) * (1 - np.exp(-e / 10)) + 0.08 * (e / 5) * np.exp(1 - e / 5)
    acc_final = 0.92 - 0.004 * s**2 - 0.02 * max(s, 0) + rng.normal(0, 0.003)
    acc = 0.1 + (acc_final - 0.1) * (1 - np.exp(-e / 8)) + rng.normal(0, 0.003, e.size)
    return csi + rng.normal(0, 0.004, e.size), acc


def _epoch_rows(spec: TrialSpec, csi: np.ndarray, acc: np.ndarray, rng: np.random.Generator) -> dict[str, list]:
    n = spec.epochs + 1
    train = lambda v: [None] + list(v[1:])  # noqa: E731 - epoch 0 is the initialised network: no training
    loss = 2.3 * np.exp(-np.arange(n) / 20) + 0.05
    return {
        "epoch": list(range(n)), "step": [e * 390 for e in range(n)], "epoch_end": [True] * n,
        "alpha_active": train(np.full(n, spec.alpha)), "lr": train(np.full(n, spec.lr)),
        "train_loss": train(loss), "train_ce": train(loss), "train_selectivity": train(csi * 0.8),
        "train_acc": train(acc + 0.05), "test_loss": list(loss * 1.1), "test_acc": list(acc), "test_top5": [None] * n,
        "csi_mean": list(csi), "seconds": train(rng.uniform(9, 11, n)), "eval_seconds": list(rng.uniform(1, 2, n)),
        "images_per_s": train(rng.uniform(4500, 5500, n)),
    }  # fmt: skip


def _layer_rows(spec: TrialSpec, csi: np.ndarray, rng: np.random.Generator) -> dict[str, list]:
    weights = np.linspace(0.6, 1.4, len(LAYERS))  # deeper layers more selective
    n = spec.epochs + 1
    layer_csi = np.clip(csi[:, None] * weights[None, :] + rng.normal(0, 0.005, (n, len(LAYERS))), 0, 1).ravel()
    return {
        "epoch": list(np.repeat(np.arange(n), len(LAYERS))), "step": list(np.repeat(np.arange(n) * 390, len(LAYERS))),
        "epoch_end": [True] * (n * len(LAYERS)),
        "layer": [name for name, _ in LAYERS] * n, "n_units": [w for _, w in LAYERS] * n,
        "csi_mean": list(layer_csi), "csi_median": list(layer_csi * 0.95), "csi_std": list(layer_csi * 0.3),
    }  # fmt: skip


def _unit_rows(spec: TrialSpec, rng: np.random.Generator) -> dict[str, list]:
    per_epoch = [(name, u) for name, width in LAYERS for u in range(width)]
    total = (spec.epochs + 1) * len(per_epoch)
    return {
        "epoch": np.repeat(np.arange(spec.epochs + 1), len(per_epoch)), "step": np.repeat(np.arange(spec.epochs + 1) * 390, len(per_epoch)),
        "epoch_end": np.ones(total, dtype=bool),
        "layer": [name for name, _ in per_epoch] * (spec.epochs + 1), "unit": [u for _, u in per_epoch] * (spec.epochs + 1),
        "csi": rng.uniform(0, 0.6, total), "top_class": rng.integers(0, 10, total), "mu_max": rng.uniform(0, 2, total),
        "mu_rest": rng.uniform(0, 1, total),
    }  # fmt: skip


def write_trial(sweep: Path, spec: TrialSpec, units: bool) -> None:
    """One synthetic done trial folder with the trainer's file layout and schemas."""
    folder = sweep / "trials" / spec.trial_id
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((spec.alpha, spec.seed))) % 2**32)
    csi, acc = _curves(spec, rng)
    fields, schema = spec.row_fields(), R.trial_schema(spec)
    files = {R.EPOCHS: _epoch_rows(spec, csi, acc, rng), R.LAYERS: _layer_rows(spec, csi, rng)}
    if units:
        files[R.UNITS] = _unit_rows(spec, rng)
    for name, rows in files.items():
        pq.write_table(R.make_table(name, rows, fields, schema), folder / name)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    status = {"state": "done", "attempts": 1, "error": None, "error_kind": None, "trial_id": spec.trial_id,
              "git_sha": "0" * 40, "git_dirty": False, "host": "bench", "device": "synthetic",
              "versions": {"python": sys.version.split()[0]}, "started": "2026-01-01T00:00:00+00:00",
              "ended": "2026-01-01T00:30:00+00:00"}  # fmt: skip
    (folder / R.STATUS).write_text(json.dumps(status))


def bench_spec(i: int, epochs: int) -> TrialSpec:
    """Trial i of the synthetic grid: alpha cycles through ALPHAS, seed = i // len(ALPHAS)."""
    return TrialSpec(sweep="bench", model="resnet20", dataset="cifar10", alpha=ALPHAS[i % len(ALPHAS)],
                     seed=i // len(ALPHAS), epochs=epochs)  # fmt: skip


def build_tree(sweep: Path, n: int, epochs: int, units: bool, start: int = 0) -> list[Path]:
    """Trials start .. start + n - 1 (existing folders are kept); returns their folders."""
    folders = []
    for i in range(start, start + n):
        spec = bench_spec(i, epochs)
        folder = sweep / "trials" / spec.trial_id
        if not (folder / R.STATUS).exists():
            write_trial(sweep, spec, units)
        folders.append(folder)
    return folders


def run_collect(sweep: Path) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MB, stderr timings line) of one `python -m orchestrator.collect`."""
    cmd = [sys.executable, "-m", "orchestrator.collect", str(sweep), "--timings"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"collect failed ({proc.returncode}): {err}")
    timings = next((line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("timings")), "")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench_collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-collect"), help="where the synthetic results root goes")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--units", action="store_true", help="also write units.parquet (the collector never reads it)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sweep = args.out / "bench"
    start = time.perf_counter()
    build_tree(sweep, args.trials, args.epochs, args.units)
    print(f"tree: {sweep} ({args.trials} trials x {args.epochs} epochs), built/checked in {time.perf_counter() - start:.1f}s")
    results: dict[str, list[tuple[float, float, float, str]]] = {"cold": [], "unchanged": [], "+10 trials": []}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        shutil.rmtree(sweep / "summary", ignore_errors=True)
        results["cold"].append(run_collect(sweep))
        results["unchanged"].append(run_collect(sweep))
        extra = build_tree(sweep, 10, args.epochs, args.units, start=args.trials)
        results["+10 trials"].append(run_collect(sweep))
        for folder in extra:
            shutil.rmtree(folder)
    print(f"\nload average before the runs: {load:.1f} ({os.cpu_count()} CPUs)")
    print("\n| situation | wall s (median) | CPU s (median) | peak RSS MB (max) | phases, wall/CPU s (last run, in-process) |\n|---|---|---|---|---|")
    for name, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {runs[-1][3]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
