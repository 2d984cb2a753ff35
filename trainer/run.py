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

import sys
from pathlib import Path

from trainer import results as R
from trainer.ablate import ablate_trial
from trainer.ablation import ablation_plan_of
from trainer.analysis.robust import robust_if_asked
from trainer.attempt import StopRequest, attempt, stop_on_signal
from trainer.cli import EXIT_DONE, EXIT_FAILED, ArgumentParser, command
from trainer.data import Data
from trainer.epochs import train_members
from trainer.errors import UserError
from trainer.represent import represent_if_asked
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
            data = train_members([a], fused=False, stop=stop)
            if a.final is None:  # not diverged
                ablate_if_asked(spec, a.folder, data)
                represent_if_asked(spec, a.folder, data)
                robust_if_asked(spec, a.folder, data)
    assert a.final is not None
    return a.final


def ablate_if_asked(spec: TrialSpec, folder: Path, data: Data | None = None) -> None:
    """The trial's own ablation job (fields ablation_*), in the same attempt as its training, on the
    training's data (a streamed validation set is decoded once for the whole job)."""
    if spec.ablates():
        ablate_trial(folder, ablation_plan_of(spec), spec.device, require_done=False, data=data)


def read_spec(path: Path) -> TrialSpec:
    """A spec.json given on a command line; a missing or malformed one is a user mistake.

    Its folder must be named by its trial id (`<trials>/<trial_id>/spec.json`, as launchers
    make them): a folder named otherwise would train and exit 0, then be refused by the
    collector, and a hand-edited spec.json in a trial's folder would train another trial there.
    """
    if not path.is_file():
        raise UserError(f"{path}: no such spec file")
    try:
        raw = R.read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({str(err)[:80]})") from None
    spec = TrialSpec.from_dict(raw, where=str(path))
    folder = path.absolute().parent
    if folder.name != spec.trial_id:
        raise UserError(
            f"{path}: the spec of trial {spec.trial_id}, but its folder is named {folder.name[:40]!r}; "
            f"a trial's files go in a folder named by its id: move it to {folder.parent / spec.trial_id}/spec.json"
        )
    return spec


def outcome_line(spec: TrialSpec, folder: Path, state: str) -> str:
    return f"{spec.trial_id}: {state}" + (f" ({read_status(folder).error})" if state == "failed" else "")


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
    sys.exit(main())
