"""A group of trials trained together, each into its own folder as if alone: what every backend runs.

    python -m trainer.group --spec A/spec.json --spec B/spec.json ... [--no-fuse]

Trials with the same `TrialSpec.fuse_key()` (same model, data, epochs, batch size, optimizer and
schedule; alpha, onset/offset and seed may differ) train as one fused network (trainer.engine):
one forward and backward pass for all of them, so a GPU that one ResNet20 leaves mostly idle
trains K at a time. Every member writes exactly the files of a separate run (trainer.run): its
rows, its status.json and its checkpoints, in the single-model layout, so a member resumes alone
or in any group, and the collector cannot tell how a trial was trained. trainer.epochs is the
protocol (what happens to each member: resume, divergence, catching up).

Here: each member's attempt (lock and status; a member another live process holds is left to
it, 'busy'; done and diverged members are skipped), and the ablations asked for at the end.
An exception or signal out of the group is recorded in every member's status.json.

Numbers: on CPU a member's weights, test accuracy and CSI do not depend on which or how many
(>= 2) trials it is fused with, bitwise (the grouped convolution treats groups alike); its
training statistics (train_loss, train_ce, train_selectivity) agree across group sizes only to
float32 rounding (about 1e-8 relative). A grouped and a dense convolution round differently. So
with fusing on, a fusable trial always trains fused (beside a throwaway twin of itself when
alone), and how a launch grouped it does not change its weights, accuracy or CSI.
`fused=False` (orchestrator --fuse 1) trains every trial as trainer.run.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from trainer.analysis.robust import robust_if_asked
from trainer.attempt import Attempt, StopRequest, attempt, stop_on_signal
from trainer.cli import EXIT_BUSY, EXIT_DONE, EXIT_FAILED, ArgumentParser, command
from trainer.epochs import train_members
from trainer.errors import UserError
from trainer.lock import TrialBusy
from trainer.represent import represent_if_asked
from trainer.run import ablate_if_asked, outcome_line, read_spec, run_trial
from trainer.spec import PER_MEMBER_FIELDS, TrialSpec


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


def run_group(specs: list[TrialSpec], folders: list[Path], fused: bool = True, stop: StopRequest | None = None) -> list[str]:
    """Run (or resume, or skip) each trial in its folder, fused; returns each one's state.

    With `fused` off, or a model without a fused form, the trials train one after another exactly
    as trainer.run trains them. A state is done, failed or busy (another live process holds that
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
            if a.final is None:  # not diverged
                ablate_if_asked(a.spec, a.folder, data)
                represent_if_asked(a.spec, a.folder, data)
                robust_if_asked(a.spec, a.folder, data)
    for i, a in held:
        assert a.final is not None  # every attempt ended done or failed on the way out of the stack
        states[i] = a.final
    return states


def _run_alone(spec: TrialSpec, folder: Path, stop: StopRequest | None) -> str:
    try:
        return run_trial(spec, folder, stop)
    except TrialBusy as err:
        print(f"busy: {err}", file=sys.stderr)
        return "busy"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m trainer.group", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, action="append", help="a member's spec.json (repeat); results go beside it")
    parser.add_argument("--no-fuse", action="store_true", help="train the trials one after another, each as trainer.run")
    args = parser.parse_args(argv)

    def body() -> int:
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
    sys.exit(main())
