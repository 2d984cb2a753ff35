"""Where a sweep stands: `python -m orchestrator.status results/<sweep> [--json]`.

Reads the trial folders alone (status.json and the per-trial lock), so it is right whichever
backend ran the trials and whether or not the launcher is still alive.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.plan import load_spec, scan
from trainer.cli import cli
from trainer.errors import UserError
from trainer.status import SEEN_STATES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.status", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="a sweep folder: <results>/<grid name>")
    p.add_argument("--json", action="store_true", help="one JSON object per trial")
    args = p.parse_args(argv)
    if not (args.sweep / "trials").is_dir():
        raise UserError(f"{args.sweep}: not a sweep folder (no trials/ inside); give <results>/<grid name>")
    states = scan(args.sweep)
    rows: list[dict[str, Any]] = []
    for tid, st in states.items():
        try:
            epochs: int | str = load_spec(st.folder).epochs
        except (OSError, ValueError):
            epochs = "?"
        rows.append(
            {"trial_id": tid, "state": st.state, "epoch": st.epoch, "epochs": epochs, "attempts": st.attempts,
             "host": st.host, "error": st.error}
        )  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    counts = Counter(st.state for st in states.values())
    print(
        f"{args.sweep}: {len(states)} trials: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in SEEN_STATES if counts.get(s) or s != "unreadable")
    )
    print(f"{'trial_id':12}  {'state':11}  {'epoch':>9}  {'tries':>5}  {'host':12}  error")
    for r in rows:
        progress = f"{'-' if r['epoch'] is None else r['epoch']}/{r['epochs']}"
        error = (r["error"] or "")[:100]
        print(f"{r['trial_id']:12}  {r['state']:11}  {progress:>9}  {r['attempts']:>5}  {str(r['host'] or '-')[:12]:12}  {error}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
