"""Performance regression guard: the cheap benchmarks against the figures recorded for this machine kind.

    python -m benchmarks.regress                 # compare; exit 1 if one is more than the margin slower
    python -m benchmarks.regress --record        # measure and record the figures of this machine kind
    python -m benchmarks.regress --only collect,status --repeat 5

Each benchmark is a fresh process (interpreter start and imports included: a stray `import torch`
is exactly the kind of regression to catch), measured in CPU seconds (user + system of the child,
os.wait4), the best of --repeat runs: CPU time does not count the time other jobs held the cores,
and the minimum is the run least disturbed by them. On the synthetic sweep of benchmarks.collect
(default 1,000 trials x 160 epochs, built once under --work and reused):

    collect   python -m orchestrator.collect <sweep> --full (cold: every trial read, figures drawn)
    status    python -m orchestrator.status <sweep>
    plan      load the grid's 10 x --trials specs and plan them against the sweep (the rerun plan)
    step      python -m benchmarks.step on digits, 1 thread: training steps at alpha = 0 and -10
              (the regularizer's overhead is the ratio it prints; the guard compares its CPU time)

The figures are recorded in benchmarks/recorded.json per machine kind: the CPU model and the
number of CPUs this process may use (`machine_kind`). A kind without figures is said and exits 0
(record them with --record). A benchmark fails when its CPU time is above recorded x (1 + margin);
the margins (recorded.json: `margin`, and `margins` per benchmark; --margin overrides all) are
set from the measured run-to-run noise (docs/benchmarks.md). Exit status: 0 within the margin or nothing recorded, 1 slower, 2 usage.

For the guard's own test (tests/test_regress.py), BENCH_REGRESS_SLOW_SCAN=<seconds> makes the
collect benchmark burn that much CPU in each of the collector's file scans (a deliberately slowed
collector); nothing else reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError

RECORDS = Path(__file__).with_name("recorded.json")
BENCHMARKS = ("collect", "status", "plan", "step")
DEFAULT_MARGIN = 0.40  # docs/benchmarks.md: above the run-to-run noise measured on the shared VM
SLOW_ENV = "BENCH_REGRESS_SLOW_SCAN"


def machine_kind() -> str:
    """CPU model and usable CPU count, e.g. 'Intel(R) Xeon(R) Processor @ 2.80GHz x 2': figures compare only within a kind."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or platform.machine()} x {cpus}"


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(CPU s, wall s, peak RSS MB) of one child process; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip()[-500:]}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


# ---- the benchmarks: each returns the command of one run (after any untimed preparation) ---------
def _sweep(args: argparse.Namespace) -> Path:
    from benchmarks.collect import build_tree

    sweep = args.work / f"sweep-{args.trials}x{args.epochs}" / "bench"
    build_tree(sweep, args.trials, args.epochs, units=False)
    return sweep


def _collect(args: argparse.Namespace, sweep: Path) -> list[str]:
    shutil.rmtree(sweep / "summary", ignore_errors=True)
    return [sys.executable, "-m", "benchmarks.regress", "--child", "collect", str(sweep)]


def _status(args: argparse.Namespace, sweep: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.status", str(sweep)]


def _plan(args: argparse.Namespace, sweep: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.regress", "--child", "plan", str(sweep), str(10 * args.trials), str(args.epochs)]


def _step(args: argparse.Namespace, sweep: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.step", "--dataset", "digits", "--steps", "8", "--rounds", "2", "--threads", "1"]


Command = Callable[[argparse.Namespace, Path], list[str]]
COMMANDS: dict[str, Command] = {"collect": _collect, "status": _status, "plan": _plan, "step": _step}


# ---- what the children run ---------------------------------------------------------------------
def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def child_collect(sweep: str) -> int:
    from orchestrator.collect import core, rows

    slow = float(os.environ.get(SLOW_ENV, "0") or 0)
    if slow > 0:  # the guard's test: a collector whose scan got slower
        scan = rows.scan_files

        def slowed(*a: Any, **kw: Any) -> Any:
            _burn(slow)
            return scan(*a, **kw)

        rows.scan_files = slowed
    return core.main([sweep, "--full"])


def child_plan(sweep: str, n: int, epochs: int) -> int:
    """The rerun plan of a grid of `n` trials, the first ones (those of the sweep) on disk."""
    from benchmarks.collect import bench_spec
    from orchestrator.plan import make_plan

    specs = [bench_spec(i, epochs) for i in range(n)]
    plan = make_plan(specs, Path(sweep))
    print(f"{plan.count('done')} done, {len(plan.to_run)} to run")
    return 0


# ---- the guard ---------------------------------------------------------------------------------
def load_records(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"margin": DEFAULT_MARGIN, "kinds": {}}
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable as the recorded figures ({str(err)[:80]}); fix it, or remove it and --record") from None
    if not isinstance(records, dict) or not isinstance(records.get("kinds", {}), dict):
        raise UserError(f"{path}: not the recorded figures (expected an object with 'kinds'); fix it, or remove it and --record")
    return records


def measure(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, float]]:
    sweep = _sweep(args)
    out = {}
    for name in names:
        try:
            runs = [run_child(COMMANDS[name](args, sweep)) for _ in range(args.repeat)]
        except RuntimeError as err:  # a benchmark that no longer runs is a failure of the guard, said in one line
            print(f"  {name:8} could not run: {str(err).splitlines()[0][:300]}", flush=True)
            out[name] = {"cpu_s": math.inf}
            continue
        best = min(runs)
        out[name] = {"cpu_s": round(best[0], 3), "wall_s": round(best[1], 3), "rss_mb": round(max(r[2] for r in runs)),
                     "cpu_s_max": round(max(r[0] for r in runs), 3)}  # fmt: skip
        print(f"  {name:8} CPU {best[0]:7.2f} s (best of {args.repeat}; worst {out[name]['cpu_s_max']:.2f}), "
              f"wall {best[1]:6.2f} s, peak RSS {out[name]['rss_mb']} MB", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--child"]:  # a benchmark's process (see COMMANDS)
        what, rest = raw[1], raw[2:]
        return child_collect(*rest) if what == "collect" else child_plan(rest[0], int(rest[1]), int(rest[2]))
    p = ArgumentParser(prog="python -m benchmarks.regress", description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="store_true", help="record the measured figures for this machine kind")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--repeat", type=int, default=3, help="runs per benchmark; the best CPU time counts")
    p.add_argument("--margin", type=float, default=None, help="allowed slowdown, e.g. 0.3 = 30%% (default: recorded.json's)")
    p.add_argument("--records", type=Path, default=RECORDS, help="the recorded figures (default benchmarks/recorded.json)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-regress"), help="where the synthetic sweep is built and kept")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=160)
    args = p.parse_args(raw)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or set(names) - set(BENCHMARKS):
        p.error(f"--only {args.only}: allowed: a comma-separated subset of {', '.join(BENCHMARKS)}")
    if args.repeat < 1 or args.trials < 1 or args.epochs < 1 or (args.margin is not None and args.margin < 0):
        p.error("--repeat, --trials and --epochs must be >= 1, --margin >= 0")
    records = load_records(args.records)
    kind = machine_kind()
    margin = records.get("margin", DEFAULT_MARGIN) if args.margin is None else args.margin
    margins = {n: margin if args.margin is not None else records.get("margins", {}).get(n, margin) for n in BENCHMARKS}
    setup = f"{args.trials} trials x {args.epochs} epochs"
    load = os.getloadavg()[0]
    print(f"machine kind: {kind}; load average {load:.1f}; sweep {setup}", flush=True)
    recorded = records.get("kinds", {}).get(kind, {})
    if not args.record and (not recorded or recorded.get("setup") != setup):
        print(f"no figures recorded for machine kind {kind!r} ({setup}) in {args.records}: nothing compared; "
              f"record them with python -m benchmarks.regress --record")  # fmt: skip
        return 0
    start = time.perf_counter()
    measured = measure(args, names)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.record:
        entry = recorded if recorded.get("setup") == setup else {}
        entry.update({"setup": setup, "recorded": time.strftime("%Y-%m-%d"), "load": round(load, 1)})
        entry.setdefault("figures", {}).update({n: m["cpu_s"] for n, m in measured.items() if m["cpu_s"] != math.inf})
        records.setdefault("kinds", {})[kind] = entry
        records.setdefault("margin", margin)
        args.records.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        print(f"recorded for {kind!r} in {args.records}")
        return 1 if any(m["cpu_s"] == math.inf for m in measured.values()) else 0
    slower = []
    for name, m in measured.items():
        ref = recorded.get("figures", {}).get(name)
        if ref is None:
            print(f"  {name:8} no recorded figure: not compared")
            continue
        if m["cpu_s"] == math.inf:
            slower.append(f"{name} (could not run)")
            continue
        allowed = margins[name]
        verdict = "ok" if m["cpu_s"] <= ref * (1 + allowed) else "SLOWER"
        print(f"  {name:8} {m['cpu_s']:7.2f} s CPU vs recorded {ref:.2f} s: {m['cpu_s'] / ref - 1:+.0%} (margin +{allowed:.0%}) {verdict}")
        if verdict != "ok":
            slower.append(f"{name} (+{m['cpu_s'] / ref - 1:.0%}, margin +{allowed:.0%})")
    if slower:
        print(f"regression: {', '.join(slower)} slower than recorded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
