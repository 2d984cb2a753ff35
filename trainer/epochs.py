"""The one epoch protocol: how a trial (or a fused group of trials) goes from its folder to done.

    train_members(attempts, fused)     # attempts: trainer.attempt.Attempt, one per trial, locks held

For every member, from its checkpoint (or from its seeded initial weights):
    epoch 0      evaluate the initialised network -> rows -> checkpoint (kept if asked) -> status
    epoch e + 1  train 0-based epoch e in segments (a mid-epoch evaluation after each but the
                 last: early dynamics) -> evaluate -> rows -> checkpoint -> status

The order rows -> checkpoint -> status is what makes a kill at any moment safe: a resumed member
keeps only the rows its checkpoint covers and replays the next epoch exactly (data order and
augmentation are seeded by (seed, epoch)), so it ends with one row per epoch and, on CPU, the
numbers of an uninterrupted run.

A single trial runs on the dense engine (one network); a fused group on the fused engine, K
networks as one (trainer.engine). With fusing on, a member always trains fused, beside a
throwaway twin of itself when it is alone, so its numbers do not depend on how a launch grouped
it. Per member:
- a non-finite loss fails it alone (diverged); the others are re-fused without it;
- members whose checkpoints differ (a kill between two members' checkpoint writes) are brought
  level: those behind train while those ahead ride along, unrecorded, and are reset to their
  own checkpoint when the others catch up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from trainer import faults
from trainer.attempt import Attempt
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import Batch, Data, DataInfo, data_info, eval_batch_size, load_dataset
from trainer.engine import Engine, ModelState, OptimizerState, initial_state, make_engine
from trainer.loop import NonFiniteLoss, combine, lr_at
from trainer.models import layer_names
from trainer.resultlog import ResultLog
from trainer.spec import TrialSpec


@dataclass
class Member:
    """One trial being trained: its attempt, its rows, and the state it (re)starts from."""

    attempt: Attempt
    log: ResultLog
    model_state: ModelState
    optimizer_state: OptimizerState
    done: int | None  # epochs in its checkpoint; None: not even the initial evaluation

    @property
    def spec(self) -> TrialSpec:
        return self.attempt.spec

    @property
    def alive(self) -> bool:
        """Not ended by divergence (Attempt.diverged sets its final state)."""
        return self.attempt.final is None

    def record(self, epoch: int, data: Data) -> None:
        """The member's status says which epoch its checkpoint holds (orchestrator.status shows it),
        and which images could not be read so far (they are skipped, never fatal)."""
        self.done = epoch
        self.attempt.status.epoch = epoch
        skipped = data.skipped
        if skipped.count:
            self.attempt.status.skipped_images = skipped.as_dict()
        self.attempt.save_status()


def start_member(a: Attempt, info: DataInfo, device: torch.device) -> Member:
    """A member from its checkpoint, or from its seeded initial weights when it has none."""
    log = ResultLog(a.folder, a.spec, layer_names(a.spec.model))
    ckpt = load_checkpoint(a.folder, device)
    if ckpt is None:
        model_state, optimizer_state = initial_state(a.spec, info, device)
        return Member(a, log, model_state, optimizer_state, done=None)
    log.keep_until(int(ckpt["epoch"]))
    return Member(a, log, ckpt["model"], ckpt["optimizer"], done=int(ckpt["epoch"]))


def train_members(attempts: list[Attempt], fused: bool) -> None:
    """Train the attempts' trials to their last epoch; a diverged member ends its own attempt.

    `fused` False: exactly one attempt, on the dense engine. True: any number, on the fused engine
    (their specs have equal `fuse_key()`; trainer.group checks).
    """
    spec, device = attempts[0].spec, attempts[0].device
    info = data_info(spec.dataset)
    data: Data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    members = [start_member(a, info, device) for a in attempts]
    for m in members:
        m.attempt.status.fused = len(members) if fused else False
    EpochRun(members, data, info, device, fused).train()


class EpochRun:
    """The epochs of one set of members; `slots[k]` is the member in engine slot k (None: a twin)."""

    def __init__(self, members: list[Member], data: Data, info: DataInfo, device: torch.device, fused: bool) -> None:
        if not fused and len(members) != 1:
            raise ValueError("unfused training takes exactly one trial")
        self.members, self.data, self.info, self.device, self.fused = members, data, info, device, fused
        self.spec = members[0].spec  # the shared settings (equal fuse keys)
        self.eval_batch = eval_batch_size(data, self.spec.batch_size, device)
        self.steps = data.n_train // self.spec.batch_size
        self.slots: list[Member | None] = []
        self.engine: Engine | None = None

    # ---- the engine over the current slots ------------------------------------------------------
    def load_engine(self, members: list[Member], states: list[tuple[ModelState, OptimizerState]]) -> None:
        """Build the engine holding `members`' states (fused and alone: beside a throwaway twin)."""
        twin = self.fused and len(members) == 1
        self.slots = list(members) + ([None] if twin else [])
        self.engine = make_engine(self.spec, self.info, self.device, states + (states[:1] if twin else []), self.fused)

    def current_states(self, members: list[Member]) -> list[tuple[ModelState, OptimizerState]]:
        assert self.engine is not None
        return [self.engine.state_of(self.slots.index(m)) for m in members]

    def live(self) -> list[Member]:
        return [m for m in self.slots if m is not None and m.alive]

    # ---- the epochs -----------------------------------------------------------------------------
    def train(self) -> None:
        todo = [m for m in self.members if m.done is None or m.done < self.spec.epochs]
        if not todo:
            return
        self.load_engine(todo, [(m.model_state, m.optimizer_state) for m in todo])
        fresh = [m for m in todo if m.done is None]
        if fresh:  # epoch 0: the initialised networks (evaluated by the engine they will train on)
            evals = self.evaluate()
            for m in fresh:
                m.log.add(0, 0, None, None, None, evals[self.slots.index(m)])
                m.log.write()
                self.checkpoint(m, 0, 0)
        for m in todo:
            m.attempt.status.epoch = m.done
            m.attempt.save_status()
        start = min(m.done for m in todo if m.done is not None)
        ahead = [m for m in todo if m.done is not None and m.done > start]  # join when the others catch up
        for e in range(start, self.spec.epochs):  # e: 0-based training epoch; its rows are epoch e + 1
            for m in [m for m in ahead if m.done == e]:
                ahead.remove(m)
                if m.alive:  # its slot takes the state of its own checkpoint
                    assert self.engine is not None
                    self.engine.load(self.slots.index(m), m.model_state, m.optimizer_state)
            self.train_epoch(e)
            live = self.live()
            if not live:
                return
            if len(live) < len([m for m in self.slots if m is not None]):  # someone diverged: re-fuse without it
                self.load_engine(live, self.current_states(live))

    def train_epoch(self, e: int) -> None:
        assert self.engine is not None
        lr = lr_at(self.spec, e)
        self.engine.set_lr(lr)
        # Members behind or level train; members ahead (and the twin) ride along, unrecorded.
        active = [m is not None and m.alive and m.done is not None and m.done <= e for m in self.slots]
        alphas = [m.spec.alpha_at(e) if act and m is not None else 0.0 for m, act in zip(self.slots, active)]
        seeds = [(m or self.live()[0]).spec.seed for m in self.slots]
        with ExitStack() as stack:  # an exception stops the loaders' workers at once, not when garbage-collected
            batches = [stack.enter_context(closing(self.data.train_batches(e, s, self.spec.batch_size, self.spec.augment))) for s in seeds]
            self.train_segments(e, lr, active, alphas, batches)

    def train_segments(self, e: int, lr: float, active: list[bool], alphas: list[float], batches: Sequence[Iterator[Batch]]) -> None:
        """Epoch e's segments: train, evaluate mid-epoch after each but the last, then the epoch's rows and checkpoints."""
        assert self.engine is not None
        cuts = self.spec.eval_steps_in(e, self.steps)
        segments: list[list[Any]] = [[] for _ in self.slots]
        for begin, stop in zip([0, *cuts], [*cuts, self.steps]):
            stats = self.engine.train([islice(b, stop - begin) for b in batches], alphas)
            for k, m in enumerate(self.slots):
                if not active[k] or m is None:
                    continue
                segments[k].append(stats[k])
                if not math.isfinite(stats[k].loss):
                    m.attempt.diverged(NonFiniteLoss(f"non-finite training loss ({stats[k].loss}) in epoch {e + 1} (alpha {alphas[k]})"))
                    active[k] = False
            if not any(active):
                return
            if stop < self.steps:
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
        assert self.engine is not None
        return self.engine.evaluate(self.data, self.eval_batch)

    def checkpoint(self, m: Member, epoch: int, step: int) -> None:
        """Save member m's share as a single trial's checkpoint; then its status says which epoch."""
        assert self.engine is not None
        model_state, optimizer_state = self.engine.state_of(self.slots.index(m), step)
        save_checkpoint(m.attempt.folder, model_state, optimizer_state, epoch, step, keep=epoch in m.spec.kept_epochs())
        m.record(epoch, self.data)
