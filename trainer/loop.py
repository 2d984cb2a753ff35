"""The training step loop and the evaluation loop: written once, for K >= 1 networks trained as one.

    train_slots:    SGD over the slots' batches with loss_k = CE_k - alpha_k * SI_batch_k
                    (docs/science.md); with every alpha 0 the blocks' activations are not even captured.
    evaluate_slots: test loss, top-1 (and top-5), and every unit's CSI from class means over the
                    whole test set, per slot.

Both run over `Slots`: K networks whose forward gives per-slot logits [K, B, C] and block features
[K, B, U]. A single TrackedNet is the K = 1 case (`DenseSlots`, views, no copies); FusedResNet20
(trainer.fused) is K ResNet20s as one network. The default job runs this loop with FusedResNet20
(every ResNet20 trial trains fused, beside a throwaway twin when alone); other models and
`--fuse 1` run it with DenseSlots. trainer.engine drives both; `train_epoch` and `evaluate` are the
one-network entry points (one TrainStats / EvalStats) for scripts, benchmarks and tests.

Where things are added, once each: a per-evaluation metric in trainer.metrics (`EvalSums`), a
per-step statistic in trainer.metrics (`TrainSums.add`, fed from the step in `train_slots`), and
SI_batch's arithmetic in trainer.selectivity (chosen per K by `slot_selectivity`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch

from trainer import faults
from trainer.data import Batch
from trainer.metrics import EvalStats, EvalSums, TrainStats, TrainSums, per_model_ce
from trainer.models import TrackedNet
from trainer.selectivity import EPS, SIForm, TooFewClasses, batch_selectivity, batched_selectivity
from trainer.spec import TrialSpec


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial has diverged (recorded, never retried)."""


def lr_at(spec: TrialSpec, epoch: int) -> float:
    """Learning rate of 0-based training epoch `epoch`: step decay at the milestones, or cosine."""
    if spec.lr_schedule == "cosine":
        return 0.5 * spec.lr * (1 + math.cos(math.pi * epoch / spec.epochs))
    return spec.lr * spec.lr_gamma ** sum(epoch >= m for m in spec.milestones())


def optimizer_for(params: Iterable[torch.nn.Parameter], spec: TrialSpec) -> torch.optim.SGD:
    """The trial's optimizer: SGD with the spec's lr, momentum and weight decay (lr set per epoch by lr_at)."""
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def autocast(device: torch.device) -> torch.autocast:
    # bf16 on GPU (no loss scaling needed); CPU stays float32 so results are exact and resumable.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def si_form(spec: TrialSpec) -> SIForm | None:
    """The spec's form of SI_batch; None for the default (Leavitt & Morcos), which runs today's exact path."""
    if (spec.si_pooling, spec.si_skip_last_stage, spec.si_class_stat, spec.si_skip_stages) == ("layers", False, "mean", None):
        return None
    # Class sums are Ranadive et al.'s form, with their eps; class means keep Leavitt & Morcos's.
    eps = 1e-6 if spec.si_class_stat == "sum" else EPS
    return SIForm(spec.si_pooling, spec.si_skip_last_stage, spec.si_class_stat, eps=eps, skip_stages=spec.si_skip_stages or ())


class Slots(Protocol):
    """K networks trained as one: what the step loop and the evaluation loop need of them."""

    k: int
    block_names: list[str]

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def join(self, parts: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot k's training batch parts[k] as one input, and the labels [K, B]."""
        ...

    def replicate(self, x: torch.Tensor) -> torch.Tensor:
        """One test batch as every slot's input."""
        ...

    def forward_slots(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Logits [K, B, C] and, with `capture`, each block's features [K, B, U] (else None)."""
        ...

    def forward_flat(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Logits [K, B, C] and each block's features [B, K*U] (slot-major): the evaluation's layout."""
        ...


class DenseSlots:
    """One TrackedNet as the K = 1 case of `Slots` (views of its outputs, no copies)."""

    k = 1

    def __init__(self, model: TrackedNet) -> None:
        self.model = model
        self.block_names = model.block_names

    def train(self, mode: bool = True) -> Any:
        return self.model.train(mode)

    def eval(self) -> Any:
        return self.model.eval()

    def join(self, parts: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = parts[0]
        return x, y.unsqueeze(0)

    def replicate(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_slots(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        logits, feats = self.model(x, capture=capture)
        return logits.unsqueeze(0), None if feats is None else [f.unsqueeze(0) for f in feats]

    def forward_flat(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        logits, feats = self.model(x, capture=capture)
        return logits.unsqueeze(0), feats


def slot_selectivity(feats: list[torch.Tensor], y: torch.Tensor, num_classes: int, form: SIForm | None, names: list[str]) -> torch.Tensor:
    """SI_batch of each slot [K] from features [K, B, U] per block and labels [K, B].

    A slot whose batch holds fewer than two classes (only tiny batches, or one shrunk by skipped
    images) gets 0, no gradient: its step trains on cross-entropy alone instead of failing. K = 1
    is the one model's `batch_selectivity`, K > 1 `batched_selectivity`: one statistic
    (trainer.selectivity's core), two ways of selecting the present classes, each pinned bitwise
    by its tests (why both: batched_selectivity's docstring). One host sync per step either way.
    """
    if y.shape[0] == 1:
        try:
            return batch_selectivity([f[0] for f in feats], y[0], num_classes, form=form, layer_names=names).view(1)
        except TooFewClasses:
            return torch.zeros(1, device=y.device)
    return batched_selectivity(feats, y, num_classes, form=form, layer_names=names, strict=False)


def train_slots(
    net: Slots,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Iterable[Batch]],
    alphas: Sequence[float],
    num_classes: int,
    device: torch.device,
    form: SIForm | None = None,
    carry: list[TrainStats] | None = None,
) -> list[TrainStats]:
    """SGD over a stretch of an epoch, slot k on batches[k] with alphas[k]; one TrainStats per slot.

    `carry` (a mid-epoch resume): each slot's stretch so far, whose sums it continues. The slots'
    parameters are disjoint, so the gradient of sum_k loss_k is each slot's own. A non-finite loss
    is returned, not raised: the caller fails that trial (and only it, in a group).
    """
    if len(batches) != net.k or len(alphas) != net.k:
        raise ValueError(f"need K={net.k} batch iterators and alphas, got {len(batches)} and {len(alphas)}")
    net.train()
    regularize = [a != 0.0 for a in alphas]
    capture = any(regularize)
    alpha = torch.tensor(alphas, device=device, dtype=torch.float32)
    sums = TrainSums(net.k, device, carry)
    start = time.perf_counter()
    for parts in zip(*batches):
        x, y = net.join(parts)
        si = None
        with autocast(device):
            logits, feats = net.forward_slots(x, capture=capture)
            ce = per_model_ce(logits.float(), y, "mean")
            if capture:
                assert feats is not None
                si = slot_selectivity(feats, y, num_classes, form, net.block_names)
                loss = ce - alpha * si  # alpha_k = 0: exactly CE_k's gradient for slot k
            else:
                loss = ce
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        faults.point("train-step")
        sums.add(loss, ce, si, logits, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums.result(regularize, time.perf_counter() - start)


@torch.no_grad()
def evaluate_slots(net: Slots, batches: Iterable[Batch], num_classes: int, device: torch.device) -> list[EvalStats]:
    """Every slot on the same test batches: one EvalStats per slot (trainer.metrics.EvalSums).

    The class sums of all K slots are one [C, K*U] float64 scatter-add per layer with the shared
    labels, so each slot's column arithmetic is a lone evaluation's; `seconds` is the whole pass.
    """
    net.eval()
    start = time.perf_counter()
    sums = EvalSums(net.k, num_classes, device)
    for x, y in batches:
        with autocast(device):
            logits, feats = net.forward_flat(net.replicate(x), capture=True)
        assert feats is not None
        sums.add(logits.float(), y, feats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums.result(time.perf_counter() - start)


# ---- one network: the K = 1 entry points ---------------------------------------------------------
def train_epoch(
    model: TrackedNet,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    alpha: float,
    num_classes: int,
    device: torch.device,
    form: SIForm | None = None,
    carry: TrainStats | None = None,
) -> TrainStats:
    """SGD of one network over `batches` (train_slots with K = 1); `carry`: the stretch so far."""
    slots = DenseSlots(model)
    return train_slots(slots, optimizer, [batches], [alpha], num_classes, device, form, [carry] if carry else None)[0]


def evaluate(model: TrackedNet, batches: Iterable[Batch], num_classes: int, device: torch.device) -> EvalStats:
    """Test loss, top-1 (and top-5) and every unit's CSI of one network over `batches` (K = 1)."""
    return evaluate_slots(DenseSlots(model), batches, num_classes, device)[0]
