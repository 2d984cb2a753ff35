"""What a backend costs per trial over the bare trainer: `python -m benchmarks.backends`.

    python -m benchmarks.backends [--trials 4 8] [--epochs 1] [--backends local ray] [--cpus N] [--repeat R]

Runs N fresh one-epoch digits trials (seeds 0..N-1, on CPU) three ways and prints wall times side
by side:
    bare     `trainer.trial.run_trial` on each folder in this process, one after another (torch
             already imported, data set already loaded once: the floor)
    <name>   the backend's launcher on the same kind of trials in fresh folders, one trial at a
             time with all N cores, so the difference to bare is the backend's overhead alone:
             start-up and shut-down, per-trial process start and imports, scheduling
overhead per trial = (backend - bare) / N. Each trial is its own group (`fuse: 1`): this measures
what a backend adds per job; fused groups (benchmarks.speed) are a different question. Given two
or more N, a line fit splits it into a fixed cost (start/stop) and a marginal cost per trial.
With --repeat R every measurement is taken R times, interleaved, and the fastest kept (as timeit
does: other load on the machine only ever adds time). To add a backend, add a function
`(spec_paths, sweep, cpus) -> None` to BACKENDS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainer.results import SPEC, write_json
from trainer.spec import TrialSpec


def _make_trials(sweep: Path, n: int, epochs: int) -> list[Path]:
    paths = []
    for seed in range(n):
        spec = TrialSpec(sweep="bench", seed=seed, epochs=epochs, device="cpu")
        folder = sweep / "trials" / spec.trial_id
        folder.mkdir(parents=True)
        write_json(spec.to_dict(), folder / SPEC)
        paths.append(folder / SPEC)
    return paths


def run_bare(paths: list[Path], sweep: Path, cpus: int) -> None:
    import torch

    from orchestrator.folders import load_spec
    from trainer.trial import run_trial

    torch.set_num_threads(cpus)
    for p in paths:
        assert run_trial(load_spec(p.parent), p.parent) == "done"


def _launch(name: str) -> Callable[[list[Path], Path, int], None]:
    """Run the trials through backend `name` exactly as orchestrator.sweep does (its Backend interface)."""

    def run(paths: list[Path], sweep: Path, cpus: int) -> None:
        from orchestrator.backends import backend_for
        from orchestrator.profiles import LocalProfile, Profile, RayProfile

        profiles: dict[str, Profile] = {
            "local": LocalProfile(max_parallel=1, fuse=1),
            "ray": RayProfile(num_cpus=cpus, cpus_per_trial=cpus, max_concurrent=1, fuse=1),
        }
        backend_for(profiles[name]).run([[p.parent] for p in paths], sweep)

    return run


# Each runs the trials of `paths` (spec.json files in `sweep`) to done, one at a time on `cpus` cores.
BACKENDS: dict[str, Callable[[list[Path], Path, int], None]] = {name: _launch(name) for name in ("local", "ray")}


def timed(fn: Callable[[list[Path], Path, int], None], root: Path, name: str, n: int, epochs: int, cpus: int) -> float:
    sweep = root / name
    paths = _make_trials(sweep, n, epochs)
    start = time.perf_counter()
    fn(paths, sweep, cpus)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[4])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=sorted(BACKENDS))
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    try:
        run_bare(_make_trials(root / "warmup", 1, 1), root, args.cpus)  # imports and data loading, untimed
        rows: dict[str, dict[int, float]] = {}
        for r in range(args.repeat):
            for n in args.trials:
                for name in ("bare", *args.backends):
                    fn = run_bare if name == "bare" else BACKENDS[name]
                    wall = timed(fn, root, f"{name}-{n}-{r}", n, args.epochs, args.cpus)
                    print(f"bench: {name} N={n} run {r + 1}: {wall:.1f} s", file=sys.stderr, flush=True)
                    rows.setdefault(name, {})[n] = min(wall, rows.get(name, {}).get(n, wall))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = f", best of {args.repeat}" if args.repeat > 1 else ""
    print(f"\n{args.epochs}-epoch digits trials on CPU, one at a time with {args.cpus} threads; wall seconds{best}")
    fit_header = f"{'fixed':>9}{'per trial':>11}" if len(args.trials) > 1 else ""
    print(f"{'backend':<8}" + "".join(f"{f'N={n}':>10}{'over/trial':>12}" for n in args.trials) + fit_header)
    for name, walls in rows.items():
        over = {n: (walls[n] - rows["bare"][n]) for n in args.trials}
        line = f"{name:<8}" + "".join(f"{walls[n]:>10.1f}{over[n] / n:>12.2f}" for n in args.trials)
        if len(args.trials) > 1:
            fixed, slope = _line_fit(args.trials, [over[n] for n in args.trials])
            line += f"{fixed:>9.1f}{slope:>11.2f}"
        print(line)
    return 0


def _line_fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: a = the fixed overhead, b = overhead per extra trial."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return my - b * mx, b


if __name__ == "__main__":
    raise SystemExit(main())
