"""Where a sweep stands: `python -m orchestrator.status results/<sweep> [--json]`.

Reads the trial folders (status.json and the per-trial lock), so it is right whichever backend
ran the trials and whether or not the launcher is still alive. For trials a SLURM launcher
submitted (slurm_job.json), one `squeue` call adds where their jobs are: a trial whose job waits
in the queue shows as `queued (job 123_4)` rather than `pending`, and a job that left the queue
without its trials' outcome (a failing setup line, a wrong python, a killed job) is recorded in
them now (orchestrator.backends.slurm.queue.settle) and shown. Without a reachable SLURM that
part is skipped, with a note. Output into a closed pipe (`... | head -1`) ends quietly.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.plan import load_spec, scan
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError
from trainer.status import SEEN_STATES, TrialState


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.status", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="a sweep folder: <results>/<grid name>")
    p.add_argument("--json", action="store_true", help="one JSON object per trial")
    args = p.parse_args(argv)
    if not (args.sweep / "trials").is_dir():
        raise UserError(f"{args.sweep}: not a sweep folder (no trials/ inside); give <results>/<grid name>")
    states = scan(args.sweep)
    jobs, notes = slurm_jobs(states)
    if notes:
        states = scan(args.sweep)  # settling recorded outcomes: read them back
    for note in notes:
        print(f"slurm: {note}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for tid, st in states.items():
        try:
            epochs: int | str = load_spec(st.folder).epochs
        except (OSError, ValueError):
            epochs = "?"
        job, queue_state = jobs.get(tid, (None, None))
        rows.append(
            {"trial_id": tid, "state": st.state, "epoch": st.epoch, "epochs": epochs, "attempts": st.attempts,
             "host": st.host, "error": _reason(st), "job": job, "queue": queue_state, "log": st.status.log,
             "label": _label(st.state, job, queue_state)}
        )  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps({k: v for k, v in r.items() if k != "label"}))
        return 0
    counts = Counter(r["label"].split(" ")[0] for r in rows)
    shown = [s for s in SEEN_STATES if counts.get(s) or s != "unreadable"]
    shown[shown.index("pending") + 1 : shown.index("pending") + 1] = [s for s in ("queued", "starting") if counts.get(s)]
    print(f"{args.sweep}: {len(states)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in shown))
    width = max([11, *(len(r["label"]) for r in rows)])
    print(f"{'trial_id':12}  {'state':{width}}  {'epoch':>9}  {'tries':>5}  {'host':12}  error")
    for r in rows:
        progress = f"{'-' if r['epoch'] is None else r['epoch']}/{r['epochs']}"
        error = (r["error"] or "")[:100]
        host = str(r["host"] or "-")[:12]
        print(f"{r['trial_id']:12}  {r['label']:{width}}  {progress:>9}  {r['attempts']:>5}  {host:12}  {error}")
    return 0


def slurm_jobs(states: dict[str, TrialState]) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """{trial_id: (its SLURM job, state in the queue or None)} and the outcomes just recorded for vanished jobs.

    Only for trials with a slurm_job.json; one squeue call for all of them. SLURM unreachable:
    nothing, and a note saying so.
    """
    folders = [st.folder for st in states.values() if (st.folder / "slurm_job.json").exists()]
    if not folders:
        return {}, []
    from orchestrator.backends.slurm.queue import job_views, settle, summarize  # only for SLURM sweeps

    try:
        views = job_views(folders, timeout_s=20)  # a controller that is down must not hold status up for long
    except UserError as err:
        return {}, [f"{err}; queue states not shown"]
    notes = summarize(settle(folders, views))  # a few lines, however many trials
    return {f.name: (v.job_id, v.queue_state) for f, v in views.items()}, notes


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
