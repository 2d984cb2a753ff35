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
throwaway twin of itself when it is alone, so its weights, test accuracy and CSI do not depend
on how a launch grouped it (bitwise on CPU; its training loss and selectivity to float32
rounding, about 1e-8 relative). Per member:
- a non-finite loss (training, or the test loss after its last step) fails it alone (diverged); the
  others are re-fused without it;
- a damaged checkpoint fails it alone before training (error_kind user: its file needs the user);
- members whose checkpoints differ (a kill between two members' checkpoint writes) are brought
  level: those behind train while those ahead ride along, unrecorded, and are reset to their
  own checkpoint when the others catch up.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from itertools import islice
from typing import Any, NoReturn

import torch

from trainer import faults
from trainer.attempt import Attempt, StopRequest
from trainer.checkpoint import (
    CheckpointUnreadable,
    drop_mid_checkpoint,
    load_checkpoint,
    load_mid_checkpoint,
    save_checkpoint,
    save_mid_checkpoint,
)
from trainer.data import Batch, Data, DataInfo, data_info, eval_batch_size, load_dataset
from trainer.engine import Engine, ModelState, OptimizerState, initial_state, make_engine
from trainer.epochlog import EpochWatch
from trainer.errors import Checkpointed, UserError
from trainer.loop import NonFiniteLoss, lr_at
from trainer.metrics import EmptyTestSet, TrainStats, combine
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
    step: int = 0  # optimizer steps in its checkpoint
    mid: dict[str, Any] | None = None  # a mid-epoch checkpoint that continues from `done` (trainer.checkpoint)

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
        drop_mid_checkpoint(a.folder)
        model_state, optimizer_state = initial_state(a.spec, info, device)
        return Member(a, log, model_state, optimizer_state, done=None)
    if a.status.epoch is None:  # status.json deleted: its checkpoint says where it stands (a done trial trains no more)
        a.status.epoch = int(ckpt["epoch"])
    mid = load_mid_checkpoint(a.folder, device, int(ckpt["epoch"]), on_damaged=a.set_aside)
    log.keep_until(int((mid or ckpt)["step"]))
    return Member(a, log, ckpt["model"], ckpt["optimizer"], done=int(ckpt["epoch"]), step=int(ckpt["step"]), mid=mid)


def train_members(attempts: list[Attempt], fused: bool, stop: StopRequest | None = None) -> Data:
    """Train the attempts' trials to their last epoch; a diverged member ends its own attempt.

    `fused` False: exactly one attempt, on the dense engine. True: any number, on the fused engine
    (their specs have equal `fuse_key()`; trainer.group checks). `stop`: when it is set (a signal
    handler), training stops at the next optimizer step with a mid-epoch checkpoint and raises
    Checkpointed; the next attempt continues from that step. Returns the data set, for analyses
    that run in the same job (a streamed validation set stays decoded).
    """
    spec, device = attempts[0].spec, attempts[0].device
    info = data_info(spec.dataset)
    data: Data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    members = []
    for a in attempts:
        try:
            members.append(start_member(a, info, device))
        except CheckpointUnreadable as err:  # that member alone: the others' checkpoints are theirs
            print(f"error: {err}", file=sys.stderr, flush=True)
            a.cannot_resume(err)
    if not members:
        return data
    for m in members:
        m.attempt.status.fused = len(members) if fused else False
        if loader := getattr(data, "loader", None):  # ImageNet: the loader "auto" resolved to (provenance)
            m.attempt.status.update(loader=loader)
    run = EpochRun(members, data, info, device, fused, stop or StopRequest())
    try:
        run.train()
    finally:
        run.watch.close()  # the trackers drain, bounded in time
    return data


class EpochRun:
    """The epochs of one set of members; `slots[k]` is the member in engine slot k (None: a twin)."""

    def __init__(self, members: list[Member], data: Data, info: DataInfo, device: torch.device, fused: bool, stop: StopRequest) -> None:
        if not fused and len(members) != 1:
            raise ValueError("unfused training takes exactly one trial")
        self.members, self.data, self.info, self.device, self.fused = members, data, info, device, fused
        self.stop = stop
        self.spec = members[0].spec  # the shared settings (equal fuse keys)
        self.eval_batch = eval_batch_size(data, self.spec.batch_size, device)
        self.steps = data.n_train // self.spec.batch_size
        self.slots: list[Member | None] = []
        self.engine: Engine | None = None
        self.watch = EpochWatch(members, self.steps)  # the log line per epoch, and the trackers asked for

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
        resume: Resume | None = None
        if self.common_mid(todo):  # every member stopped at the same step of the same epoch: continue from there
            self.load_engine(todo, [(m.mid["model"], m.mid["optimizer"]) for m in todo if m.mid])
            resume = Resume.of(self.slots)
        else:
            self.load_engine(todo, [(m.model_state, m.optimizer_state) for m in todo])
        fresh = [m for m in todo if m.done is None]
        if fresh:  # epoch 0: the initialised networks (evaluated by the engine they will train on)
            evals = self.evaluate()
            for m in fresh:
                m.log.add(0, 0, None, None, None, evals[self.slots.index(m)])
                m.log.write()
                self.checkpoint(m, 0, 0)
            self.watch.epoch_end(0, fresh)
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
            self.train_epoch(e, resume if resume is not None and e == resume.epoch else None)
            live = self.live()
            if not live:
                return
            if len(live) < len([m for m in self.slots if m is not None]):  # someone diverged: re-fuse without it
                self.load_engine(live, self.current_states(live))

    def common_mid(self, todo: list[Member]) -> bool:
        """Whether every member holds a mid-epoch checkpoint of the same step; if not, none is used.

        Members stopped together (one process, one step), so they agree unless a kill came between
        their writes; then the epoch is replayed from its start, as after any kill.
        """
        points = {(m.done, int(m.mid["step"])) if m.mid else None for m in todo}
        if len(points) == 1 and None not in points:
            return True
        for m in todo:
            if m.mid is not None:
                drop_mid_checkpoint(m.attempt.folder)
                m.mid = None
                m.log.keep_until(m.step)
        return False

    def train_epoch(self, e: int, resume: Resume | None = None) -> None:
        """0-based epoch e; `resume`: continue it where the members' mid-epoch checkpoints stopped."""
        assert self.engine is not None
        lr = lr_at(self.spec, e)
        self.engine.set_lr(lr)
        # Members behind or level train; members ahead (and the twin) ride along, unrecorded.
        active = [m is not None and m.alive and m.done is not None and m.done <= e for m in self.slots]
        alphas = [m.spec.alpha_at(e) if act and m is not None else 0.0 for m, act in zip(self.slots, active)]
        lead = self.live()[0]
        seeds = [(m or lead).spec.seed for m in self.slots]
        start = resume.step if resume is not None else 0
        if resume is not None and start:
            _set_rng(resume.rng)
        else:
            torch.manual_seed(lead.spec.seed * 1_000_003 + e)  # what draws from torch's RNG (dropout) replays per epoch
        with ExitStack() as stack:  # an exception stops the loaders' workers at once, not when garbage-collected
            spec = self.spec
            batches: list[Iterator[Batch]] = [
                stack.enter_context(closing(self.data.train_batches(e, s, spec.batch_size, spec.augment, start_step=start))) for s in seeds
            ]
            # One stop check per step: the fused engine pulls slot 0's batch first.
            batches[0] = _stoppable(batches[0], self.stop)
            self.train_segments(e, lr, active, alphas, batches, resume)

    def train_segments(
        self, e: int, lr: float, active: list[bool], alphas: list[float], batches: Sequence[Iterator[Batch]], resume: Resume | None
    ) -> None:
        """Epoch e's segments: train, evaluate mid-epoch after each but the last, then the epoch's rows and checkpoints.

        `resume`: the segments before its step come back with it; the one it interrupted continues
        from its running sums (`carry`); the batches start at its step.
        """
        assert self.engine is not None
        cuts = self.spec.eval_steps_in(e, self.steps)
        segments: list[list[TrainStats]] = [list(s) for s in resume.segments] if resume else [[] for _ in self.slots]
        at = resume.step if resume else 0  # the epoch's steps trained so far
        carry = resume.carry if resume else None
        for stop in [*cuts, self.steps]:
            if stop <= at:
                continue  # trained before the stop; its statistics came back with the checkpoint
            stats = self.engine.train([islice(b, stop - at) for b in batches], alphas, carry)
            trained = stats[0].steps - (carry[0].steps if carry else 0)
            carry = None  # only the interrupted segment continues a stretch
            for k, m in enumerate(self.slots):
                if not active[k] or m is None:
                    continue
                segments[k].append(stats[k])
                if not math.isfinite(stats[k].loss):
                    m.attempt.diverged(NonFiniteLoss(f"non-finite training loss ({stats[k].loss}) in epoch {e + 1} (alpha {alphas[k]})"))
                    active[k] = False
            if not any(active):
                return
            if at + trained < stop and self.stop.requested:
                self.checkpoint_mid(e, at + trained, active, segments, stats)
            at = stop
            if stop < self.steps:
                evals = self.evaluate()
                self.check_finite(evals, active, alphas, f"in epoch {e + 1}")
                for k, m in enumerate(self.slots):
                    if active[k] and m is not None:
                        m.log.add(e + 1, e * self.steps + stop, lr, alphas[k], combine(segments[k]), evals[k], epoch_end=False)
        if not any(combine(segments[k]).images for k in range(len(self.slots)) if active[k]):
            # Every training batch was unreadable (a batch of bad images is left out): the weights did
            # not move, and the epoch would be recorded as trained (a trial `done` after no step).
            raise UserError(
                f"dataset '{self.spec.dataset}': epoch {e + 1} trained on no image: every training batch was unreadable "
                f"({self.skipped_words() or 'none read'}); "
                "repair or replace those files (python -m trainer.imagenet.manifest --check lists them)"
            )
        evals = self.evaluate()
        self.check_finite(evals, active, alphas, f"after epoch {e + 1}")
        step = (e + 1) * self.steps
        for k, m in enumerate(self.slots):
            if not active[k] or m is None:
                continue
            m.log.add(e + 1, step, lr, alphas[k], combine(segments[k]), evals[k])
            m.log.write()  # rows first, then the checkpoint: a resume drops rows the checkpoint lacks
            faults.point("rows-written")
            self.checkpoint(m, e + 1, step)
        self.watch.epoch_end(e + 1, [m for k, m in enumerate(self.slots) if active[k] and m is not None])

    def evaluate(self) -> list[Any]:
        assert self.engine is not None
        try:
            return self.engine.evaluate(self.data, self.eval_batch)
        except EmptyTestSet:
            seen = self.skipped_words()
            raise UserError(
                f"dataset '{self.spec.dataset}': the evaluation read no test image{f'; {seen}' if seen else ''}; "
                "repair or replace the validation files (python -m trainer.imagenet.manifest --check lists them)"
            ) from None

    def skipped_words(self) -> str:
        """The images skipped so far as unreadable, for a message ("" if none)."""
        skipped = self.data.skipped
        return f"{skipped.count} image(s) skipped as unreadable, e.g. {', '.join(skipped.first[:3])}" if skipped.count else ""

    def check_finite(self, evals: list[Any], active: list[bool], alphas: list[float], when: str) -> None:
        """A network whose last step blew up evaluates to a non-finite loss while its training loss (taken
        before that step) was finite: that member diverged; its rows of this evaluation are not written."""
        for k, m in enumerate(self.slots):
            if active[k] and m is not None and not math.isfinite(evals[k].loss):
                m.attempt.diverged(NonFiniteLoss(f"non-finite test loss ({evals[k].loss}) {when} (alpha {alphas[k]})"))
                active[k] = False

    def checkpoint(self, m: Member, epoch: int, step: int) -> None:
        """Save member m's share as a single trial's checkpoint; then its status says which epoch."""
        assert self.engine is not None
        model_state, optimizer_state = self.engine.state_of(self.slots.index(m), step)
        save_checkpoint(m.attempt.folder, model_state, optimizer_state, epoch, step, keep=epoch in m.spec.kept_epochs())
        drop_mid_checkpoint(m.attempt.folder)  # after the new checkpoint: a kill in between leaves a stale one, ignored
        m.step = step
        m.record(epoch, self.data)

    # ---- stopping inside an epoch and resuming there ---------------------------------------------
    def checkpoint_mid(self, e: int, at: int, active: list[bool], segments: list[list[Any]], stats: list[TrainStats]) -> NoReturn:
        """Stopped at step `at` of epoch e: rows, then a mid-epoch checkpoint per live member; raise Checkpointed."""
        assert self.engine is not None
        step = e * self.steps + at
        where = f"time limit: checkpointed in epoch {e + 1} at step {at} of {self.steps}"
        for k, m in enumerate(self.slots):
            if not active[k] or m is None:
                continue
            model_state, optimizer_state = self.engine.state_of(k, step)
            done_segments = [s.as_dict() for s in segments[k][:-1]]  # the last is the stopped stretch: the carry
            in_epoch = {"step": at, "segments": done_segments, "carry": stats[k].as_dict(), "rng": _get_rng(self.device)}
            m.log.write()  # rows first (the mid-epoch evaluations so far), then the checkpoint
            save_mid_checkpoint(m.attempt.folder, model_state, optimizer_state, e, step, in_epoch)
        raise Checkpointed(where)


@dataclass(frozen=True)
class Resume:
    """Where an epoch stopped by a mid-epoch checkpoint continues: one value, built once by
    EpochRun.train from the members' checkpoints (trainer.checkpoint), consumed by its epoch loop.

    Per engine slot (a twin takes its member's: it is discarded): the epoch's segments finished
    before the stop, and the statistics of the segment the stop interrupted (`carry`), whose
    running sums the engine continues, so the epoch's means are bitwise an unbroken run's.
    """

    epoch: int  # the 0-based training epoch that stopped
    step: int  # its steps trained before the stop: the batches restart there
    rng: dict[str, Any] | None  # torch's RNG states at the stop
    segments: list[list[TrainStats]]
    carry: list[TrainStats]

    @classmethod
    def of(cls, slots: list[Member | None]) -> Resume:
        lead = next(m for m in slots if m is not None)
        assert lead.done is not None

        def in_epoch(m: Member | None) -> dict[str, Any]:
            mid = (m or lead).mid
            assert mid is not None  # EpochRun.common_mid: every member holds one
            return dict(mid["in_epoch"])

        return cls(
            epoch=lead.done,
            step=int(in_epoch(lead)["step"]),
            rng=in_epoch(lead).get("rng"),
            segments=[[TrainStats(**s) for s in in_epoch(m)["segments"]] for m in slots],
            carry=[TrainStats(**in_epoch(m)["carry"]) for m in slots],
        )


def _stoppable(batches: Iterator[Batch], stop: StopRequest) -> Iterator[Batch]:
    """The batches until a stop is requested (checked before each step's batch)."""
    for batch in batches:
        if stop.requested:
            return
        yield batch


def _get_rng(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(state: dict[str, Any] | None) -> None:
    if state is None:
        return
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
