"""Run one trial into its folder: `python -m trainer.run --spec results/<sweep>/trials/<id>/spec.json`.

Files land beside the spec (docs/results.md). Epoch 0 is the initialised network; row `epoch`
e >= 1 is the state after e training epochs, and its `alpha_active` and `lr` are those used while
training that epoch (0-based training epoch e - 1), so `onset_epoch: 5` regularizes rows 6 onwards.

The trial trains alone, on the dense engine, through the one epoch protocol (trainer.epochs): a
trial killed at any moment resumes from its last checkpoint and ends with one row per epoch and,
on CPU, the numbers of an uninterrupted run. Backends run trials through trainer.group, which
trains fusable trials together; this command is the plain way to (re)run one trial by hand.

Exit codes (trainer.cli): 0 done, 2 user mistake, 3 trial failed (recorded in status.json),
75 another live process is running this trial.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer import results as R
from trainer.ablate import ablate_trial
from trainer.attempt import StopRequest, attempt, stop_on_signal
from trainer.cli import EXIT_DONE, EXIT_FAILED, command
from trainer.epochs import train_members
from trainer.errors import UserError
from trainer.spec import TrialSpec
from trainer.status import read_status


def run_trial(spec: TrialSpec, folder: str | Path, stop: StopRequest | None = None) -> str:
    """Run (or resume, or skip if done) one trial alone in `folder`; returns its final state.

    Raises TrialBusy if another live process holds the trial, UserError for user mistakes
    (recorded as failed too), Checkpointed when `stop` was set (recorded as interrupted). Any
    other exception is recorded as failed and re-raised.
    """
    with attempt(spec, Path(folder)) as a:
        if a.final is None:
            train_members([a], fused=False, stop=stop)
            if a.final is None:  # not diverged
                ablate_if_asked(spec, a.folder)
    assert a.final is not None
    return a.final


def ablate_if_asked(spec: TrialSpec, folder: Path) -> None:
    """The trial's own ablation job (field ablation_fractions), in the same attempt as its training."""
    if spec.ablation_fractions is not None:
        ablate_trial(folder, spec.ablation_fractions, spec.ablation_draws, spec.device, require_done=False)


def read_spec(path: Path) -> TrialSpec:
    """A spec.json given on a command line; a missing or malformed one is a user mistake."""
    if not path.is_file():
        raise UserError(f"{path}: no such spec file")
    try:
        raw = R.read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({str(err)[:80]})") from None
    return TrialSpec.from_dict(raw, where=str(path))


def outcome_line(spec: TrialSpec, folder: Path, state: str) -> str:
    return f"{spec.trial_id}: {state}" + (f" ({read_status(folder).error})" if state == "failed" else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, help="the trial's spec.json; results go beside it")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = read_spec(args.spec)
        state = run_trial(spec, args.spec.parent, stop_on_signal())
        print(outcome_line(spec, args.spec.parent, state))
        return EXIT_DONE if state == "done" else EXIT_FAILED

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
