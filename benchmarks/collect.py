"""Benchmark of the collector on a synthetic sweep (default: 1,000 trials x 160 epochs, ResNet20 layers).

    python -m benchmarks.collect [--out /tmp/bench-collect] [--trials 1000] [--epochs 160] [--units] [--repeat 3]

Builds <out>/bench/trials/<id>/{spec.json,status.json,epochs.parquet,layers.parquet} (units.parquet
too with --units) with the trainer's own schemas and plausible numbers (benchmarks.synthetic:
selectivity falls as alpha goes negative), reusing the tree if it is already there. Then times
`python -m orchestrator.collect`, each run a fresh process (imports and interpreter start
included), in three situations:

    cold         no summary yet: every trial is read
    unchanged    collect again, nothing changed
    +10 trials   10 more trials finished since the last collect (removed again afterwards)

and prints a markdown table: median wall time and the largest peak RSS (os.wait4) of the runs.
Targets (docs/benchmarks.md): 1,000 x 160 collected in <= 5 s and <= 2 GB peak memory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.synthetic import write_trial
from trainer import results as R
from trainer.cli import ArgumentParser
from trainer.spec import TrialSpec

ALPHAS = (-100.0, -50.0, -30.0, -20.0, -10.0, -5.0, -2.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0)


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
        if not ((folder / R.STATUS).exists() and (folder / R.UNITS).exists()):  # older trees lacked units.parquet: rewritten
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
    parser = ArgumentParser(prog="python -m benchmarks.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-collect"), help="where the synthetic results root goes")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--units", action="store_true", help="also write units.parquet (the collector never reads it)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.repeat < 1:
        parser.error("--trials, --epochs and --repeat must be >= 1")
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
    print("\n| situation | wall s (median) | CPU s (median) | peak RSS MB (max) | phases, wall/CPU s (last run, in-process) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {runs[-1][3]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
