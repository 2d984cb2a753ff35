"""Run one trial into its folder: `python -m trainer.run --spec results/<sweep>/trials/<id>/spec.json`.

The plain way to (re)run one trial by hand: it trains alone, on the dense engine, through
trainer.trial.run_trial (files beside the spec, docs/results.md). A trial killed at any moment
resumes from its last checkpoint and ends with one row per epoch and, on CPU, the numbers of an
uninterrupted run. Backends run trials through trainer.group, which trains fusable trials together.

Exit codes (trainer.cli): 0 done, 2 user mistake, 3 trial failed (recorded in status.json),
75 another live process is running this trial.
"""

from __future__ import annotations

from pathlib import Path

from trainer.attempt import stop_on_signal
from trainer.cli import EXIT_DONE, EXIT_FAILED, ArgumentParser, command, exit_worker
from trainer.trial import outcome_line, read_spec, run_trial


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, help="the trial's spec.json; results go beside it")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = read_spec(args.spec)
        state = run_trial(spec, args.spec.parent, stop_on_signal())
        print(outcome_line(spec, args.spec.parent, state))
        return EXIT_DONE if state == "done" else EXIT_FAILED

    return command(body)


if __name__ == "__main__":
    exit_worker(main())
