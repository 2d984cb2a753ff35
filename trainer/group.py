"""A group of trials trained together as one fused network, each into its own folder as if alone.

    python -m trainer.group --spec A/spec.json --spec B/spec.json ...

Trials with the same `TrialSpec.fuse_key()` (same model, data, epochs, batch size, optimizer and
schedule; alpha, onset/offset and seed may differ) train as one trainer.fused network: one
forward and backward pass for all of them, so a GPU that one ResNet20 leaves mostly idle trains
K at a time. Every member writes exactly the files of a separate run (trainer.run): its rows,
its status.json and its checkpoints, in the single-model layout, so a member resumes alone or
in any group, and the collector cannot tell how a trial was trained.

What happens to each member is its own:
- a member another live process holds is left to it ('busy'); done and diverged members are skipped;
- a member whose loss goes non-finite is failed (diverged) and dropped; the rest are re-fused;
- members whose checkpoints differ (a kill between two members' checkpoint writes) are brought
  level: the one behind trains while the one ahead rides along and is reset to its checkpoint;
- an exception or signal out of the group is recorded in every member's status.json.

Numbers: on CPU a member's numbers do not depend on which or how many (>= 2) trials it is fused
with (the grouped convolution treats groups alike), but a grouped and a dense convolution round
differently. So with fusing on, a fusable trial always trains fused, beside a throwaway twin of
itself when it is alone: its numbers (bitwise on CPU) do not depend on how a launch or a relaunch
after a kill grouped it. `fuse=False` (orchestrator --fuse 1) trains every trial as trainer.run.
"""
from __future__ import annotations

import argparse
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import torch

from trainer import faults
from trainer.attempt import FUSED, Attempt, attempt
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.cli import EXIT_BUSY, EXIT_DONE, EXIT_FAILED, command
from trainer.data import Data, DataInfo, data_info, eval_batch_size, load_dataset
from trainer.errors import UserError
from trainer.fused import FusedResNet20, fused_evaluate, fused_train_epoch
from trainer.lock import TrialBusy
from trainer.loop import NonFiniteLoss, combine, lr_at, optimizer_for
from trainer.models import build_model
from trainer.run import ResultLog, ablate_if_asked, outcome_line, read_spec, run_trial
from trainer.spec import PER_MEMBER_FIELDS, TrialSpec



@dataclass
class Member:
    """One trial of the group: its attempt, its rows, and the state it (re)starts from."""

    attempt: Attempt
    log: ResultLog
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    done: int | None  # epochs in its checkpoint; None: not even the initial evaluation

    @property
    def spec(self) -> TrialSpec:
        return self.attempt.spec

    @property
    def alive(self) -> bool:
        """Not ended by divergence (Attempt.diverged sets its final state)."""
        return self.attempt.final is None


def check_fusable(specs: list[TrialSpec]) -> None:
    """One line if `specs` cannot train as one fused network."""
    first = specs[0]
    if first.fuse_key() is None:
        raise UserError(f"trial {first.trial_id}: model '{first.model}' has no fused form; run it alone (trainer.run)")
    for s in specs[1:]:
        if s.fuse_key() != first.fuse_key():
            a, b = first.to_dict(), s.to_dict()
            differ = sorted(k for k in a if k not in PER_MEMBER_FIELDS and a[k] != b[k])
            raise UserError(f"trials {first.trial_id} and {s.trial_id} differ in {', '.join(differ)}; only alpha, onset, offset and seed may")


def run_group(specs: list[TrialSpec], folders: list[Path], fuse: bool = True) -> list[str]:
    """Run (or resume, or skip) each trial in its folder, fused; returns each one's state.

    The one entry point of every backend. With `fuse` off, or a model without a fused form, the
    trials train one after another exactly as trainer.run trains them.

    A state is done, failed or busy (another live process holds that trial). Raises UserError
    for user mistakes; any other exception is recorded in every member's status and re-raised.
    """
    if len(specs) != len(folders) or not specs:
        raise ValueError("run_group needs one folder per spec, and at least one")
    if not fuse or (len(specs) == 1 and specs[0].fuse_key() is None):
        return [_run_alone(spec, Path(folder)) for spec, folder in zip(specs, folders)]
    check_fusable(specs)
    states: list[str | None] = [None] * len(specs)
    with ExitStack() as stack:
        held: list[tuple[int, Attempt]] = []
        for i, (spec, folder) in enumerate(zip(specs, folders)):
            try:
                held.append((i, stack.enter_context(attempt(spec, Path(folder)))))
            except TrialBusy as err:
                print(f"busy: {err}", file=sys.stderr)
                states[i] = "busy"
        todo = [a for _, a in held if a.final is None]
        if todo:
            train_group(todo)
        for a in todo:
            if a.final is None:  # not diverged
                ablate_if_asked(a.spec, a.folder)
    for i, a in held:
        states[i] = a.final  # every attempt that trained ended done or failed on the way out of the stack
    assert all(s is not None for s in states)
    return states  # type: ignore[return-value]


def _run_alone(spec: TrialSpec, folder: Path) -> str:
    try:
        return run_trial(spec, folder)
    except TrialBusy as err:
        print(f"busy: {err}", file=sys.stderr)
        return "busy"


def train_group(attempts: list[Attempt]) -> None:
    """Train the attempts' trials fused to their last epoch; a diverged member ends its own attempt."""
    spec, device = attempts[0].spec, attempts[0].device
    info = data_info(spec.dataset)
    data: Data = load_dataset(spec.dataset, spec.resolved_data_root(), device, spec.num_workers)
    members = [_member(a, info, device) for a in attempts]
    for m in members:
        m.attempt.status[FUSED] = len(members)
    _GroupRun(members, data, info, device).train()


def _member(a: Attempt, info: DataInfo, device: torch.device) -> Member:
    spec = a.spec
    torch.manual_seed(spec.seed)  # the initial weights of the same trial run alone
    model = build_model(spec.model, info.num_classes, info.in_channels).to(device)
    optimizer = optimizer_for(model.parameters(), spec)
    log = ResultLog(a.folder, spec, model.block_names)
    ckpt = load_checkpoint(a.folder, device)
    if ckpt is None:
        return Member(a, log, model.state_dict(), optimizer.state_dict(), done=None)
    log.keep_until(int(ckpt["epoch"]))
    return Member(a, log, ckpt["model"], ckpt["optimizer"], done=int(ckpt["epoch"]))


class _GroupRun:
    """The epochs of one group; `slots[k]` is the member in fused model k (None: a throwaway twin)."""

    def __init__(self, members: list[Member], data: Data, info: DataInfo, device: torch.device) -> None:
        self.members, self.data, self.device = members, data, device
        self.spec = members[0].spec  # the shared settings (equal fuse keys)
        self.info = info
        self.eval_batch = eval_batch_size(data, self.spec.batch_size, device)
        self.steps = data.n_train // self.spec.batch_size
        self.slots: list[Member | None] = []
        self.net: FusedResNet20 | None = None
        self.opt: torch.optim.Optimizer | None = None

    # ---- the fused network over the current slots ---------------------------------------------
    def fuse(self, members: list[Member], states: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Build the fused network and optimizer holding `members`' states (a twin if only one)."""
        self.slots = list(members) + ([None] if len(members) == 1 else [])
        states = states + ([states[0]] if len(members) == 1 else [])
        with torch.random.fork_rng(devices=[]):  # the fused init is overwritten; keep the RNG where it was
            net = FusedResNet20(len(self.slots), self.info.num_classes, self.info.in_channels).to(self.device)
        for k, (model_state, _) in enumerate(states):
            net.load_state_for(k, model_state)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        if self.spec.compile:  # compiled once per K and shape in this process; re-fusing to the same K reuses it
            net.compile()
        opt = optimizer_for(net.parameters(), self.spec)  # elementwise SGD: one optimizer equals K
        for k, (_, optimizer_state) in enumerate(states):
            net.load_optimizer_state_for(opt, k, optimizer_state)
        self.net, self.opt = net, opt

    def current_states(self, members: list[Member]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        assert self.net is not None and self.opt is not None
        return [(self.net.state_for(self.slots.index(m)), self.net.optimizer_state_for(self.opt, self.slots.index(m))) for m in members]

    def reset_to_checkpoint(self, m: Member) -> None:
        """A member that was ahead joins: its slot takes the state of its checkpoint."""
        assert self.net is not None and self.opt is not None
        k = self.slots.index(m)
        self.net.load_state_for(k, m.model_state)
        self.net.load_optimizer_state_for(self.opt, k, m.optimizer_state)

    # ---- the epochs ---------------------------------------------------------------------------
    def train(self) -> None:
        todo = [m for m in self.members if m.done is None or m.done < self.spec.epochs]
        if not todo:
            return
        self.fuse(todo, [(m.model_state, m.optimizer_state) for m in todo])
        fresh = [m for m in todo if m.done is None]
        if fresh:  # epoch 0: the initialised networks (evaluated fused, as they will train)
            evals = self.evaluate()
            for m in fresh:
                m.log.add(0, 0, None, None, None, evals[self.slots.index(m)])
                m.log.write()
                self.checkpoint(m, 0, 0)
        for m in todo:
            m.attempt.status["epoch"] = m.done
            m.attempt.save_status()
        start = min(m.done for m in todo if m.done is not None)
        ahead = [m for m in todo if m.done is not None and m.done > start]  # join when the others catch up
        for e in range(start, self.spec.epochs):  # e: 0-based training epoch; its rows are epoch e + 1
            for m in [m for m in ahead if m.done == e]:
                ahead.remove(m)
                if m.alive:
                    self.reset_to_checkpoint(m)
            self.train_epoch(e)
            live = self.live()
            if not live:
                return
            if len(live) < len([m for m in self.slots if m is not None]):  # someone diverged: re-fuse without it
                self.fuse(live, self.current_states(live))

    def live(self) -> list[Member]:
        return [m for m in self.slots if m is not None and m.alive]

    def train_epoch(self, e: int) -> None:
        assert self.net is not None and self.opt is not None
        lr = lr_at(self.spec, e)
        for group in self.opt.param_groups:
            group["lr"] = lr
        # Members behind or level train; members ahead (and the twin) ride along, unrecorded.
        active = [m is not None and m.alive and m.done is not None and m.done <= e for m in self.slots]
        alphas = [m.spec.alpha_at(e) if act and m is not None else 0.0 for m, act in zip(self.slots, active)]
        seeds = [(m or self.live()[0]).spec.seed for m in self.slots]
        batches: list[Iterator[Any]] = [iter(self.data.train_batches(e, s, self.spec.batch_size, self.spec.augment)) for s in seeds]
        cuts = self.spec.eval_steps_in(e, self.steps)
        segments: list[list[Any]] = [[] for _ in self.slots]
        for begin, stop in zip([0, *cuts], [*cuts, self.steps]):
            stats = fused_train_epoch(
                self.net, self.opt, [islice(b, stop - begin) for b in batches], alphas, self.info.num_classes, self.device
            )
            for k, m in enumerate(self.slots):
                if not active[k] or m is None:
                    continue
                segments[k].append(stats[k])
                if not math.isfinite(stats[k].loss):
                    m.attempt.diverged(NonFiniteLoss(f"non-finite training loss ({stats[k].loss}) in epoch {e + 1} (alpha {alphas[k]})"))
                    active[k] = False
            if stop < self.steps and any(active):
                evals = self.evaluate()
                for k, m in enumerate(self.slots):
                    if active[k] and m is not None:
                        m.log.add(e + 1, e * self.steps + stop, lr, alphas[k], combine(segments[k]), evals[k], epoch_end=False)
        evals = self.evaluate()
        step = (e + 1) * self.steps
        for k, m in enumerate(self.slots):
            if not active[k] or m is None:
                continue
            m.log.add(e + 1, step, lr, alphas[k], combine(segments[k]), evals[k])
            m.log.write()  # rows first, then the checkpoint: a resume drops rows the checkpoint lacks
            faults.point("rows-written")
            self.checkpoint(m, e + 1, step)

    def evaluate(self) -> list[Any]:
        assert self.net is not None
        return fused_evaluate(self.net, self.data, self.info.num_classes, self.device, self.eval_batch)

    def checkpoint(self, m: Member, epoch: int, step: int) -> None:
        """Save member m's share as a single trial's checkpoint; its status says which epoch."""
        assert self.net is not None and self.opt is not None
        k = self.slots.index(m)
        model_state = self.net.state_for(k)
        for name in model_state:
            if name.endswith("num_batches_tracked"):  # shared by the fused BatchNorms: the member's own count
                model_state[name] = torch.tensor(step, dtype=torch.long)
        save_checkpoint(m.attempt.folder, model_state, self.net.optimizer_state_for(self.opt, k), epoch, step, keep=epoch in m.spec.kept_epochs())
        m.done = epoch
        m.attempt.status["epoch"] = epoch
        m.attempt.save_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.group", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, action="append", help="a member's spec.json (repeat); results go beside it")
    parser.add_argument("--no-fuse", action="store_true", help="train the trials one after another, each as trainer.run")
    args = parser.parse_args(argv)

    def body() -> int:
        specs = [read_spec(p) for p in args.spec]
        folders = [p.parent for p in args.spec]
        states = run_group(specs, folders, fuse=not args.no_fuse)
        for spec, folder, state in zip(specs, folders, states):
            print(outcome_line(spec, folder, state))
        if "failed" in states:
            return EXIT_FAILED
        return EXIT_BUSY if "busy" in states else EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
