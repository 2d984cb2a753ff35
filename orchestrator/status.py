"""Where a sweep stands: `python -m orchestrator.status results/<sweep> [--json] [--state S] [--watch N]`.

One row per trial, with the fields that vary in the sweep (alpha, seed, onset_epoch, ...) as
columns (and keys in --json), so a row says which trial it is; a failed, interrupted or
unreadable trial says why and which log to read. `--state failed` shows only those (the counts
stay whole); `--watch N` redraws every N seconds until no trial is running or queued and no
launcher of the sweep is alive (`orchestrator.sweep_lock.launching`).

Reads the trial folders (status.json and the per-trial lock), so it is right whichever backend
ran the trials and whether or not the launcher is still alive. For trials a SLURM launcher
submitted (slurm_job.json), one `squeue` call adds where their jobs are: a trial whose job waits
in the queue shows as `queued (job 123_4)` rather than `pending`, and a job that left the queue
without its trials' outcome (a failing setup line, a wrong python, a killed job) is recorded in
them now (orchestrator.backends.slurm.queue.settle) and shown. Without a reachable SLURM that
part is skipped, with a note. Output into a closed pipe (`... | head -1`) ends quietly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.folders import load_spec, scan_with_specs, sweep_folder
from orchestrator.sweep_lock import launcher_running
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError
from trainer.spec import RESOURCE_FIELDS
from trainer.status import SEEN_STATES, TrialState


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.status", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="a sweep folder: <results>/<grid name>")
    p.add_argument("--json", action="store_true", help="one JSON object per trial")
    p.add_argument(
        "--state", action="append", default=[], help=f"only trials in this state (repeat or comma-separate): {', '.join(FILTERS)}"
    )
    p.add_argument(
        "--watch", type=float, metavar="N", help="redraw every N seconds until nothing runs, waits in a queue or waits for a live launcher"
    )
    args = p.parse_args(argv)
    sweep_folder(args.sweep)
    wanted = {w.strip() for arg in args.state for w in arg.split(",") if w.strip()}
    if wanted - set(FILTERS):
        raise UserError(f"--state {', '.join(sorted(wanted - set(FILTERS)))}: no such state; allowed: {', '.join(FILTERS)}")
    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise UserError(f"--watch {args.watch:g}: allowed: a number of seconds > 0")
    while True:
        rows = show(args.sweep, wanted, args.json, clear=args.watch is not None and sys.stdout.isatty())
        # Pending trials of a live launcher (waiting for a worker, or its first one starting) are still to run.
        if args.watch is None or not (any(r["state"] == "running" or r["queue"] is not None for r in rows) or launcher_running(args.sweep)):
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)


# What --state takes: the recorded states, and what a SLURM queue adds to pending trials.
FILTERS = (*SEEN_STATES, "queued", "starting")


def show(sweep: Path, wanted: set[str], as_json: bool, clear: bool = False) -> list[dict[str, Any]]:
    """Print the sweep's trials once (the counts, then a row per trial in `wanted`, all if empty); returns every row."""
    states, proven = scan_with_specs(sweep)
    jobs, notes = slurm_jobs(states)
    if notes:
        states, proven = scan_with_specs(sweep)  # settling recorded outcomes: read them back
    for note in notes:
        print(f"slurm: {note}", file=sys.stderr)
    specs: dict[str, dict[str, Any]] = {}
    for tid, st in states.items():
        if tid in proven:  # scan read it already: not read twice (issue 25)
            specs[tid] = proven[tid].to_dict()
            continue
        with contextlib.suppress(OSError, ValueError):  # an unreadable spec: its row says so (state unreadable)
            specs[tid] = load_spec(st.folder).to_dict()
    swept = swept_fields(list(specs.values()))
    rows: list[dict[str, Any]] = []
    for tid, st in states.items():
        spec = specs.get(tid)
        job, queue_state, waits = jobs.get(tid, (None, None, None))
        rows.append(
            {"trial_id": tid, **{k: spec[k] if spec else None for k in swept}, "state": st.state, "epoch": st.epoch,
             "epochs": spec["epochs"] if spec else "?", "attempts": st.attempts, "host": st.host, "error": _reason(st),
             "reason": reason(st), "log": log_of(st), "job": job, "queue": queue_state, "queue_reason": waits,
             "label": _label(st.state, job, queue_state)}
        )  # fmt: skip
    shown_rows = [r for r in rows if not wanted or r["state"] in wanted or r["label"].split(" ")[0] in wanted]
    for line in _stuck_lines(rows):
        print(f"slurm: {line}", file=sys.stderr)
    if as_json:
        for r in shown_rows:
            print(json.dumps({k: v for k, v in r.items() if k != "label"}))
        return rows
    if clear:
        print("\033[H\033[J", end="")  # --watch on a terminal: redraw in place
    counts = Counter(r["label"].split(" ")[0] for r in rows)
    shown = [s for s in SEEN_STATES if counts.get(s) or s != "unreadable"]
    shown[shown.index("pending") + 1 : shown.index("pending") + 1] = [s for s in ("queued", "starting") if counts.get(s)]
    print(f"{sweep}: {len(states)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in shown))
    width = max([11, *(len(r["label"]) for r in rows)])
    cols = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in swept}
    swept_head = "".join(f"{k:>{w}}  " for k, w in cols.items())
    print(f"{'trial_id':12}  {swept_head}{'state':{width}}  {'epoch':>9}  {'tries':>5}  {'host':12}  reason")
    for r in shown_rows:
        progress = f"{'-' if r['epoch'] is None else r['epoch']}/{r['epochs']}"
        cells = "".join(f"{_cell(r[k]):>{w}}  " for k, w in cols.items())
        host = str(r["host"] or "-")[:12]
        why = "; ".join(filter(None, [_waits(r), r["reason"]]))
        print(f"{r['trial_id']:12}  {cells}{r['label']:{width}}  {progress:>9}  {r['attempts']:>5}  {host:12}  {why[:160]}")
    return rows


def _waits(row: dict[str, Any]) -> str | None:
    """A queued trial's reason cell: why its job waits in SLURM (squeue's reason), and whether that clears."""
    if not row["label"].startswith("queued") or not row["queue_reason"]:
        return None
    from orchestrator.backends.slurm.queue import stuck  # imported already: only SLURM sweeps have queue reasons

    why = row["queue_reason"]
    meaning = stuck(why)
    return f"SLURM: {why}, cannot start as it is: {meaning}" if meaning else f"SLURM: {why}"


def _stuck_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per pending reason that does not clear by waiting, with how many trials it holds."""
    if not any(r["queue_reason"] for r in rows):
        return []
    from orchestrator.backends.slurm.queue import stuck_lines  # imported already: only SLURM sweeps have queue reasons

    queued = (r["queue_reason"] for r in rows if r["label"].startswith("queued"))
    return [f"{line}; cancel with orchestrator.cancel, change the profile, launch again" for line in stuck_lines(queued, "queued trial(s)")]


def swept_fields(specs: list[dict[str, Any]]) -> list[str]:
    """The trial fields whose values differ between the sweep's trials (alpha, seed, onset_epoch, ...), in spec order.

    Resource fields (device, data root) are where a trial ran, not which trial it is.
    """
    if len(specs) < 2:
        return []
    return [k for k in specs[0] if k not in RESOURCE_FIELDS and _varies(specs, k)]


def _varies(specs: list[dict[str, Any]], key: str) -> bool:
    """Whether `key` takes more than one value (as JSON writes it: 1 and 1.0 differ).

    Values all of one scalar type (the usual case) are compared in C, by value or, for floats,
    by repr (-0.0, nan), which distinguishes exactly what JSON does; anything else by json.dumps.
    """
    values = [s.get(key) for s in specs]
    kind = type(values[0])
    if kind in (str, int, bool, type(None), float) and set(map(type, values)) == {kind}:
        return len(set(map(repr, values)) if kind is float else set(values)) > 1
    return len({json.dumps(v, sort_keys=True) for v in values}) > 1


def reason(st: TrialState) -> str | None:
    """Why a trial is failed, interrupted or unreadable, with the log to read (None otherwise)."""
    if st.state == "failed" or st.state == "unreadable":
        text = st.error
    elif st.state == "interrupted":
        text = st.status.last_interruption or st.status.error or "its process ended without a word (killed?)"
    else:
        return None
    log = log_of(st)
    return f"{text} (log: {log})" if log and text and log not in text else text


LOG = "trainer.log"  # orchestrator.runner.LOG (not imported: the runner imports far more than status needs)
_TAIL = 8192


def log_of(st: TrialState) -> str | None:
    """The log that says why a trial failed or stopped: the one its status names (SLURM's stderr),
    else the trial's trainer.log, or, where its last start was in a fused group, the log of that
    group (its first member's: one process, one log), which the trial's own log points to."""
    if st.status.log or st.state not in ("failed", "interrupted", "unreadable"):
        return st.status.log
    own = st.folder / LOG
    try:
        with open(own, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if " trains with " in line and ": output in " in line:
            return line.split(": output in ", 1)[1].strip()
        if ": trainer.group " in line:  # its last start was its own process: its own log
            break
    return str(own)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def slurm_jobs(states: dict[str, TrialState]) -> tuple[dict[str, tuple[str, str | None, str | None]], list[str]]:
    """{trial_id: (its SLURM job, state in the queue or None, squeue's reason while pending)} and the outcomes just
    recorded for vanished jobs.

    Only for trials with a slurm_job.json; one squeue call for all of them. SLURM unreachable:
    nothing, and a note saying so.
    """
    folders = [st.folder for st in states.values() if os.path.exists(f"{st.folder}/slurm_job.json")]  # no Path join per trial
    if not folders:
        return {}, []
    from orchestrator.backends.slurm.queue import job_views, settle, summarize  # only for SLURM sweeps

    try:
        views = job_views(folders, timeout_s=20)  # a controller that is down must not hold status up for long
    except UserError as err:
        return {}, [f"{err}; queue states not shown"]
    notes = summarize(settle(folders, views))  # a few lines, however many trials
    return {f.name: (v.job_id, v.queue_state, v.reason) for f, v in views.items()}, notes


def _reason(st: TrialState) -> str | None:
    """The error column: a failure's error, or why an interrupted trial stopped (its last interruption)."""
    if st.state == "interrupted" and not st.error:
        return st.status.last_interruption or "no live process holds it (its process ended without a word)"
    return st.error


def _label(state: str, job: str | None, queue_state: str | None) -> str:
    """The state column: a pending or interrupted trial whose job waits in the queue is `queued (job X)`."""
    if job is None or queue_state is None or state not in ("pending", "interrupted", "failed"):
        return state
    if queue_state == "RUNNING":
        return f"starting (job {job})"  # its job runs; the trial has not taken its lock yet
    return f"queued (job {job})"


if __name__ == "__main__":
    sys.exit(cli(main))
