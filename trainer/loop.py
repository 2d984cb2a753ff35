"""One training epoch and one evaluation pass of a single network; read top to bottom, no callbacks.

    train_epoch: SGD over the epoch's batches with loss = CE - alpha * SI_batch (docs/science.md);
                 at alpha = 0 the blocks' activations are not even captured.
    evaluate:    test loss, top-1 (and top-5), and every unit's CSI from class means over the
                 whole test set.

trainer.fused has the same two for K networks trained as one; trainer.engine puts both behind
one interface.

Metrics are summed on the device and read once per epoch: a per-step `.item()` would stall
a GPU on every step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainer import faults
from trainer.data import Batch
from trainer.models import TrackedNet
from trainer.selectivity import EPS, ClassMeanAccumulator, SIForm, TooFewClasses, UnitSelectivity, batch_selectivity
from trainer.spec import TrialSpec


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial has diverged (recorded, never retried)."""


@dataclass(frozen=True)
class TrainStats:
    loss: float
    ce: float
    selectivity: float | None  # mean SI_batch; None when the regularizer was off
    acc: float
    images: int
    steps: int
    seconds: float
    # The float64 running sums behind the means, exactly as accumulated: a stretch of an epoch
    # resumed from a mid-epoch checkpoint continues them, so its means are bitwise an unbroken run's.
    loss_sum: float = 0.0
    ce_sum: float = 0.0
    si_sum: float = 0.0
    correct: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalStats:
    loss: float
    acc: float
    top5: float | None
    layers: list[UnitSelectivity]
    seconds: float


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
    """SGD over `batches`; `carry`: the stretch so far (a mid-epoch resume), whose sums it continues."""
    model.train()
    regularize = alpha != 0.0
    c = carry or TrainStats(0.0, 0.0, None, 0.0, 0, 0, 0.0)
    running = (c.loss_sum, c.ce_sum, c.si_sum, c.correct)
    loss_sum, ce_sum, si_sum, correct = (torch.tensor(v, device=device, dtype=torch.float64) for v in running)
    images, steps = c.images, c.steps
    start = time.perf_counter()
    for x, y in batches:
        with autocast(device):
            logits, feats = model(x, capture=regularize)
            ce = F.cross_entropy(logits.float(), y)
            if regularize:
                si = _selectivity_or_zero(feats, y, num_classes, form, model.block_names)
                loss = ce - alpha * si
                si_sum += si.detach()
            else:
                loss = ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        faults.point("train-step")
        n = y.shape[0]
        loss_sum += loss.detach() * n
        ce_sum += ce.detach() * n
        correct += (logits.argmax(1) == y).sum()
        images += n
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start + c.seconds
    # A non-finite loss is returned, not raised: the caller fails that trial (and only it, in a group).
    return stats_from_sums(loss_sum.item(), ce_sum.item(), si_sum.item() if regularize else None, correct.item(), images, steps, seconds)


def stats_from_sums(
    loss_sum: float, ce_sum: float, si_sum: float | None, correct: float, images: int, steps: int, seconds: float
) -> TrainStats:
    """The means of a stretch of training from its running sums (si_sum None: regularizer off)."""
    return TrainStats(
        loss=loss_sum / max(images, 1),
        ce=ce_sum / max(images, 1),
        selectivity=si_sum / steps if si_sum is not None and steps else None,
        acc=correct / max(images, 1),
        images=images,
        steps=steps,
        seconds=seconds,
        loss_sum=loss_sum,
        ce_sum=ce_sum,
        si_sum=si_sum or 0.0,
        correct=correct,
    )


def _selectivity_or_zero(feats: Any, y: torch.Tensor, num_classes: int, form: SIForm | None, names: list[str]) -> torch.Tensor:
    """SI_batch, or 0 for a batch with fewer than two classes (only tiny batches, or one shrunk by
    skipped images, can have one): the step then trains on cross-entropy alone instead of failing."""
    try:
        return batch_selectivity(feats, y, num_classes, form=form, layer_names=names)
    except TooFewClasses:
        return torch.zeros((), device=y.device)


def combine(parts: list[TrainStats]) -> TrainStats:
    """Statistics of consecutive stretches of one epoch, as if trained in one go."""
    images = sum(p.images for p in parts)
    steps = sum(p.steps for p in parts)
    mean = lambda field: sum(getattr(p, field) * p.images for p in parts) / max(images, 1)
    sel = [p.selectivity for p in parts]
    regularized = [s for s in sel if s is not None]
    return TrainStats(
        loss=mean("loss"), ce=mean("ce"), acc=mean("acc"), images=images, steps=steps,
        selectivity=None if len(regularized) < len(sel) else sum(s * p.steps for s, p in zip(regularized, parts)) / max(steps, 1),
        seconds=sum(p.seconds for p in parts),
    )  # fmt: skip


@torch.no_grad()
def evaluate(model: TrackedNet, batches: Iterable[Batch], num_classes: int, device: torch.device) -> EvalStats:
    model.eval()
    start = time.perf_counter()
    means = ClassMeanAccumulator(num_classes)
    zero = torch.zeros((), device=device, dtype=torch.float64)
    loss_sum, top1, top5 = zero.clone(), zero.clone(), zero.clone()
    n = 0
    for x, y in batches:
        with autocast(device):
            logits, feats = model(x, capture=True)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top1 += (logits.argmax(1) == y).sum()
        if num_classes >= 100:
            top5 += (logits.topk(5, dim=1).indices == y.unsqueeze(1)).any(1).sum()
        means.add(feats, y)
        n += y.shape[0]
    layers = means.result()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EvalStats(
        loss=loss_sum.item() / n,
        acc=top1.item() / n,
        top5=top5.item() / n if num_classes >= 100 else None,
        layers=layers,
        seconds=time.perf_counter() - start,
    )
