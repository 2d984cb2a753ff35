"""Benchmark of the orchestration itself: `python -m benchmarks.plan [--trials 10000 --done 1000]`.

Prints, in one run: the time to load and plan a grid of N trials against a sweep folder, and the
time to scan M finished trial folders (what `sweep` and `status` do before any training).
Targets: each <= 2 s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.folders import scan, trial_folder
from orchestrator.grid import load_grid
from orchestrator.plan import make_plan
from trainer.cli import ArgumentParser
from trainer.files import RESULTS
from trainer.results import write_json


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--done", type=int, default=1_000)
    args = p.parse_args(argv)
    planned = max(1, args.trials // 100) * 100  # the grid below: alphas x 100 seeds
    if args.trials < 1 or not 0 <= args.done <= planned:
        p.error(f"--trials must be >= 1 and --done from 0 to the grid's {planned} trials")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_alpha = max(1, args.trials // 100)
        grid_path = root / "grid.yaml"
        alphas = ", ".join(str(-50 + 0.01 * i) for i in range(n_alpha))
        grid_path.write_text(f"name: bench\nsweep:\n  alpha: [{alphas}]\n  seed: [{', '.join(map(str, range(100)))}]\n")
        sweep = root / "bench"

        t0 = time.perf_counter()
        grid = load_grid(grid_path)
        t_load = time.perf_counter() - t0
        rows = _tiny_parquet()
        for spec in grid.specs[: args.done]:  # finished trials, as the trainer leaves them
            folder = trial_folder(sweep, spec.trial_id)
            folder.mkdir(parents=True)
            write_json(spec.to_dict(), folder / "spec.json")
            write_json({"state": "done", "attempts": 1, "epoch": spec.epochs}, folder / "status.json")
            for name in RESULTS:  # the plan looks at both ends of each (trainer.files.damaged_results)
                (folder / name).write_bytes(rows)

        t0 = time.perf_counter()
        plan = make_plan(grid.specs, sweep)
        t_plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        states = scan(sweep)
        t_scan = time.perf_counter() - t0
    assert plan.count("done") == args.done and len(states) == args.done
    print(f"{'what':44} {'seconds':>8}  target")
    print(f"{f'load + validate a grid of {len(grid.specs)} trials':44} {t_load:8.3f}")
    print(f"{f'plan {len(grid.specs)} trials ({args.done} done on disk)':44} {t_plan:8.3f}")
    print(f"{'load + plan together':44} {t_load + t_plan:8.3f}  <= 2 s")
    print(f"{f'scan {args.done} finished trial folders':44} {t_scan:8.3f}  <= 2 s")
    return 0


def _tiny_parquet() -> bytes:
    """A small whole Parquet file: the plan reads a few bytes of a done trial's files, never its rows."""
    out = pa.BufferOutputStream()
    pq.write_table(pa.table({"epoch": [0]}), out)
    return out.getvalue().to_pybytes()


if __name__ == "__main__":
    raise SystemExit(main())
