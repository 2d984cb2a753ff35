"""A group of trial attempts: what `python -m trainer.group` and `python -m trainer.run` both call.

    run_group(specs, folders, fused=True, stop=None) -> states   K trials, fused where they can be
    run_trial(spec, folder, stop=None) -> state                  one trial alone (the dense engine)

Each trial trains into its own folder as if alone (docs/results.md). Epoch 0 is the initialised
network; row `epoch` e >= 1 is the state after e training epochs, and its `alpha_active` and `lr`
are those used while training that epoch (0-based training epoch e - 1), so `onset_epoch: 5`
regularizes rows 6 onwards.

The path a reader follows: an attempt per member (trainer.attempt: lock, status.json; a member
another live process holds is left to it, 'busy'; done and diverged members are skipped) ->
trainer.epochs.train_members (the one epoch protocol: resume, evaluations, rows, checkpoints)
-> the analyses the spec asks for at the trial's end, on the training's data
(trainer.analysis: ablation, representation). An exception or signal out of the group is
recorded in every member's status.json.

Trials with the same `TrialSpec.fuse_key()` (same model, data, epochs, batch size, optimizer and
schedule; alpha, onset/offset and seed may differ) train as one fused network (trainer.engine):
one forward and backward pass for all of them. Every member writes exactly the files of a
separate run, so a member resumes alone or in any group, and the collector cannot tell how a
trial was trained. On CPU a member's weights, test accuracy and CSI do not depend on which or how
many (>= 2) trials it is fused with, bitwise (the grouped convolution treats groups alike); its
training statistics (train_loss, train_ce, train_selectivity) agree across group sizes only to
float32 rounding (about 1e-8 relative). A grouped and a dense convolution round differently. So
with fusing on, a fusable trial always trains fused (beside a throwaway twin of itself when
alone), and how a launch grouped it does not change its weights, accuracy or CSI. `fused=False`
(orchestrator --fuse 1) trains every trial alone, as run_trial.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from trainer import results as R
from trainer.analysis.ablation_job import ablate_trial
from trainer.analysis.ablation_plan import ablation_plan_of
from trainer.analysis.representation_job import represent_if_asked
from trainer.analysis.robustness_job import robust_if_asked
from trainer.attempt import Attempt, StopRequest, attempt
from trainer.data import Data
from trainer.epochs import train_members
from trainer.errors import UserError
from trainer.lock import TrialBusy
from trainer.spec import PER_MEMBER_FIELDS, TrialSpec
from trainer.status import read_status


def run_group(specs: list[TrialSpec], folders: list[Path], fused: bool = True, stop: StopRequest | None = None) -> list[str]:
    """Run (or resume, or skip) each trial in its folder, fused; returns each one's state.

    With `fused` off, or a model without a fused form, the trials train one after another exactly
    as run_trial trains them. A state is done, failed or busy (another live process holds that
    trial). Raises UserError for user mistakes; any other exception is recorded in every
    member's status and re-raised.
    """
    if len(specs) != len(folders) or not specs:
        raise ValueError("run_group needs one folder per spec, and at least one")
    if not fused or (len(specs) == 1 and specs[0].fuse_key() is None):
        return [_run_alone(spec, Path(folder), stop) for spec, folder in zip(specs, folders)]
    check_fusable(specs)
    states: list[str] = ["busy"] * len(specs)
    held: list[tuple[int, Attempt]] = []
    with ExitStack() as stack:
        for i, (spec, folder) in enumerate(zip(specs, folders)):
            try:
                held.append((i, stack.enter_context(attempt(spec, Path(folder)))))
            except TrialBusy as err:
                print(f"busy: {err}", file=sys.stderr)
        todo = [a for _, a in held if a.final is None]
        data = train_members(todo, fused=True, stop=stop) if todo else None
        for a in todo:
            analyse_if_asked(a, data)
    for i, a in held:
        assert a.final is not None  # every attempt ended done or failed on the way out of the stack
        states[i] = a.final
    return states


def run_trial(spec: TrialSpec, folder: str | Path, stop: StopRequest | None = None) -> str:
    """Run (or resume, or skip if done) one trial alone in `folder`, on the dense engine; returns its final state.

    Raises TrialBusy if another live process holds the trial, UserError for user mistakes
    (recorded as failed too), Checkpointed when `stop` was set (recorded as interrupted). Any
    other exception is recorded as failed and re-raised.
    """
    with attempt(spec, Path(folder)) as a:
        if a.final is None:
            data = train_members([a], fused=False, stop=stop)
            analyse_if_asked(a, data)
    assert a.final is not None
    return a.final


def analyse_if_asked(a: Attempt, data: Data | None) -> None:
    """The analyses the trial's spec asks for at its end, in the same attempt and on the training's
    data (a streamed validation set is decoded once for the whole job); none for a diverged trial."""
    if a.final is not None:  # diverged
        return
    if a.spec.ablates():
        ablate_trial(a.folder, ablation_plan_of(a.spec), a.spec.device, require_done=False, data=data)
    represent_if_asked(a.spec, a.folder, data)
    robust_if_asked(a.spec, a.folder, data)


def check_fusable(specs: list[TrialSpec]) -> None:
    """One line if `specs` cannot train as one fused network."""
    first = specs[0]
    if first.fuse_key() is None:
        raise UserError(f"trial {first.trial_id}: model '{first.model}' has no fused form; run it alone (trainer.run)")
    for s in specs[1:]:
        if s.fuse_key() != first.fuse_key():
            a, b = first.to_dict(), s.to_dict()
            differ = sorted(k for k in a if k not in PER_MEMBER_FIELDS and a[k] != b[k])
            raise UserError(
                f"trials {first.trial_id} and {s.trial_id} differ in {', '.join(differ)}; only alpha, onset, offset and seed may"
            )


def _run_alone(spec: TrialSpec, folder: Path, stop: StopRequest | None) -> str:
    try:
        return run_trial(spec, folder, stop)
    except TrialBusy as err:
        print(f"busy: {err}", file=sys.stderr)
        return "busy"


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
    """The line a command prints per trial: `<trial_id>: <state>` (and the error of a failed one)."""
    return f"{spec.trial_id}: {state}" + (f" ({read_status(folder).error})" if state == "failed" else "")
