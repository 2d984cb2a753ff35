"""Collect a sweep's finished trials into tables, a report and figures.

    python -m orchestrator.collect results/<sweep> [--full] [--no-figures] [--timings]

The command (see orchestrator.collect.core for what a collect does). A sweep that nothing changed
since its last collect takes the fast path (orchestrator.collect.unchanged): a stat of every trial
folder's files, then the last collect's lines again, saying "unchanged"; pyarrow and pandas are
not even imported. --full always collects.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from orchestrator.collect import unchanged
from trainer.cli import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder, <results>/<sweep>")
    parser.add_argument("--full", action="store_true", help="ignore the cache and read every trial again")
    parser.add_argument("--no-figures", action="store_true", help="tables and report only")
    parser.add_argument("--timings", action="store_true", help="print the time of each phase to stderr")
    args = parser.parse_args(argv)
    start = (time.perf_counter(), time.process_time())
    lines, inputs = (None, None) if args.full else unchanged.probe(args.sweep, figures=not args.no_figures)
    if lines is not None:
        print(lines.text(args.sweep))
        if args.timings:
            wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
            print(f"timings (wall/CPU s): unchanged {wall:.2f}/{cpu:.2f}", file=sys.stderr)
        return 0
    from orchestrator.collect import core  # pyarrow, pandas: only when collecting

    with core.collecting(core.checked_sweep(args.sweep)) as waited:
        if waited and not args.full:  # the other collect may have brought the summary up to date meanwhile
            lines, inputs = unchanged.probe(args.sweep, figures=not args.no_figures)
            if lines is not None:
                print(lines.text(args.sweep))
                return 0
        result = core.collect(args.sweep, full=args.full, figures=not args.no_figures, inputs=inputs)
    print(core.summary_text(result))
    if args.timings:
        phases = ", ".join(f"{k} {wall:.2f}/{cpu:.2f}" for k, (wall, cpu) in result.timings.items())
        print(f"timings (wall/CPU s): {phases}", file=sys.stderr)
    return 0
