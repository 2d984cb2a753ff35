"""A group of trials trained together, each into its own folder as if alone: what every backend runs.

    python -m trainer.group --spec A/spec.json --spec B/spec.json ... [--no-fuse]

The CLI of trainer.trial.run_group: trials with the same fuse key train as one fused network
(trainer.engine), each writing exactly the files of a separate run; `--no-fuse` (orchestrator
--fuse 1) trains them one after another, each as trainer.run. trainer.trial says what happens to
each member and what "the same numbers" means.

Exit codes (trainer.cli): 0 every member done, 2 user mistake, 3 some member failed (recorded in
its status.json), 75 some member is held by another live process (the others ran).
"""

from __future__ import annotations

import os
from pathlib import Path

from trainer.attempt import stop_on_signal
from trainer.cli import EXIT_BUSY, EXIT_DONE, EXIT_FAILED, ArgumentParser, command, exit_worker
from trainer.errors import UserError
from trainer.trial import outcome_line, read_spec, run_group


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m trainer.group", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, action="append", help="a member's spec.json (repeat); results go beside it")
    parser.add_argument("--no-fuse", action="store_true", help="train the trials one after another, each as trainer.run")
    args = parser.parse_args(argv)

    def body() -> int:
        seen: dict[str, Path] = {}
        for p in args.spec:  # one trial twice would wait on its own lock
            first = seen.setdefault(os.path.realpath(p.parent), p)
            if first is not p:
                raise UserError(f"--spec {p}: the same trial folder as --spec {first}; allowed: each trial once")
        specs = [read_spec(p) for p in args.spec]
        folders = [p.parent for p in args.spec]
        states = run_group(specs, folders, fused=not args.no_fuse, stop=stop_on_signal())
        for spec, folder, state in zip(specs, folders, states):
            print(outcome_line(spec, folder, state))
        if "failed" in states:
            return EXIT_FAILED
        return EXIT_BUSY if "busy" in states else EXIT_DONE

    return command(body)


if __name__ == "__main__":
    exit_worker(main())
