"""Training engines: K trials' networks stepped in lockstep behind one interface.

    engine = make_engine(spec, info, device, states, fused)   # states: one (model, optimizer) per slot
    engine.set_lr(lr)
    stats = engine.train([batches of slot k ...], [alpha of slot k ...])   # one TrainStats per slot
    evals = engine.evaluate(data, eval_batch)                             # one EvalStats per slot
    model_state, optimizer_state = engine.state_of(k, step)               # single-model layout

Both engines train and evaluate through the same two loops, trainer.loop's `train_slots` and
`evaluate_slots`, over K slots: `FusedEngine` holds K resnet20s as one fused network
(trainer.fused's FusedResNet20) and is the path the default job runs (with fusing on, every
ResNet20 trial trains fused, beside a throwaway twin when alone); `DenseEngine` holds one network
as the K = 1 case (trainer.loop's DenseSlots): the other models and `--fuse 1`. What differs is
only the network's layout and how its states are sliced. Both take and give states in the layout
of a single model and its SGD optimizer, so a trial's checkpoint is the same whichever engine
trained it, and trainer.epochs drives both with one protocol. A non-finite training loss is
returned in the stats, never raised: the protocol fails that trial alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from trainer.data import Batch, Data, DataInfo
from trainer.fused import FusedResNet20
from trainer.loop import DenseSlots, Slots, evaluate_slots, optimizer_for, si_form, train_slots
from trainer.metrics import EvalStats, TrainStats
from trainer.models import TrackedNet, build_for
from trainer.spec import TrialSpec

ModelState = dict[str, Any]
OptimizerState = dict[str, Any]


class Engine(Protocol):
    """K networks trained in lockstep; slot k holds one trial."""

    k: int
    layer_names: list[str]

    def set_lr(self, lr: float) -> None: ...

    def train(self, batches: list[Iterable[Batch]], alphas: list[float], carry: list[TrainStats] | None = None) -> list[TrainStats]:
        """A stretch of an epoch: slot k trains on batches[k] with alphas[k]; `carry`: each slot's stretch so far."""
        ...

    def evaluate(self, data: Data, batch_size: int) -> list[EvalStats]: ...

    def state_of(self, k: int, step: int | None = None) -> tuple[ModelState, OptimizerState]:
        """Slot k's model and optimizer state; `step` (checkpoints): the trial's own optimizer steps."""
        ...

    def load(self, k: int, model_state: ModelState, optimizer_state: OptimizerState) -> None: ...


def initial_state(spec: TrialSpec, info: DataInfo, device: torch.device) -> tuple[ModelState, OptimizerState]:
    """A trial's initial weights (seeded by its seed, as when it runs alone) and a fresh optimizer's state."""
    torch.manual_seed(spec.seed)
    model = build_for(spec.model, spec.dataset).to(device)
    return model.state_dict(), optimizer_for(model.parameters(), spec).state_dict()


def _prepare(net: TrackedNet, spec: TrialSpec, device: torch.device) -> TrackedNet:
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if spec.compile:  # in place: state_dict keys stay those of the plain model; compiled once per process and shape
        net.compile()
    return net


class DenseEngine:
    """One network and its optimizer (K = 1)."""

    k = 1

    def __init__(self, spec: TrialSpec, info: DataInfo, device: torch.device, state: tuple[ModelState, OptimizerState]) -> None:
        with torch.random.fork_rng(devices=[]):  # the init is overwritten by `state`; keep the RNG where it was
            model = build_for(spec.model, spec.dataset).to(device)
        model.load_state_dict(state[0])
        self.model = _prepare(model, spec, device)
        self.optimizer = optimizer_for(self.model.parameters(), spec)
        self.optimizer.load_state_dict(state[1])
        self.layer_names = model.block_names
        self.num_classes, self.device, self.form = info.num_classes, device, si_form(spec)
        self.slots: Slots = DenseSlots(self.model)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train(self, batches: list[Iterable[Batch]], alphas: list[float], carry: list[TrainStats] | None = None) -> list[TrainStats]:
        return train_slots(self.slots, self.optimizer, batches, alphas, self.num_classes, self.device, self.form, carry)

    def evaluate(self, data: Data, batch_size: int) -> list[EvalStats]:
        return evaluate_slots(self.slots, data.test_batches(batch_size), self.num_classes, self.device)

    def state_of(self, k: int, step: int | None = None) -> tuple[ModelState, OptimizerState]:
        return self.model.state_dict(), self.optimizer.state_dict()

    def load(self, k: int, model_state: ModelState, optimizer_state: OptimizerState) -> None:
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)


class FusedEngine:
    """K resnet20s as one fused network and one optimizer (elementwise SGD: one optimizer equals K)."""

    def __init__(self, spec: TrialSpec, info: DataInfo, device: torch.device, states: list[tuple[ModelState, OptimizerState]]) -> None:
        self.k = len(states)
        with torch.random.fork_rng(devices=[]):  # the fused init is overwritten; keep the RNG where it was
            net = FusedResNet20(self.k, info.num_classes, info.in_channels).to(device)
        for k, (model_state, _) in enumerate(states):
            net.load_state_for(k, model_state)
        prepared = _prepare(net, spec, device)
        assert isinstance(prepared, FusedResNet20)
        self.net = net = prepared
        self.optimizer = optimizer_for(net.parameters(), spec)
        for k, (_, optimizer_state) in enumerate(states):
            net.load_optimizer_state_for(self.optimizer, k, optimizer_state)
        self.layer_names = net.block_names
        self.num_classes, self.device, self.form = info.num_classes, device, si_form(spec)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train(self, batches: list[Iterable[Batch]], alphas: list[float], carry: list[TrainStats] | None = None) -> list[TrainStats]:
        return train_slots(self.net, self.optimizer, batches, alphas, self.num_classes, self.device, self.form, carry)

    def evaluate(self, data: Data, batch_size: int) -> list[EvalStats]:
        return evaluate_slots(self.net, data.test_batches(batch_size), self.num_classes, self.device)

    def state_of(self, k: int, step: int | None = None) -> tuple[ModelState, OptimizerState]:
        model_state = self.net.state_for(k)
        for name in model_state:
            if step is not None and name.endswith("num_batches_tracked"):  # shared by the fused BatchNorms: the member's own count
                model_state[name] = torch.tensor(step, dtype=torch.long)
        return model_state, self.net.optimizer_state_for(self.optimizer, k)

    def load(self, k: int, model_state: ModelState, optimizer_state: OptimizerState) -> None:
        self.net.load_state_for(k, model_state)
        self.net.load_optimizer_state_for(self.optimizer, k, optimizer_state)


def make_engine(
    spec: TrialSpec, info: DataInfo, device: torch.device, states: list[tuple[ModelState, OptimizerState]], fused: bool
) -> Engine:
    """The engine for these slots' states: fused (K >= 1 slots) or dense (exactly one)."""
    if fused:
        return FusedEngine(spec, info, device, states)
    if len(states) != 1:
        raise ValueError(f"a dense engine trains one network, got {len(states)} states")
    return DenseEngine(spec, info, device, states[0])
