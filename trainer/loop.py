"""One training epoch and one evaluation pass of a single network; read top to bottom, no callbacks.

    train_epoch: SGD over the epoch's batches with loss = CE - alpha * SI_batch (docs/science.md);
                 at alpha = 0 the blocks' activations are not even captured.
    evaluate:    test loss, top-1 (and top-5), and every unit's CSI from class means over the
                 whole test set.

trainer.fused has the same two for K networks trained as one; trainer.engine puts both behind
one interface. With fusing on (the default), every ResNet20 trial trains and is evaluated by
trainer.fused, even alone; this dense path runs the other models and `--fuse 1`. What both
measure is written once, in trainer.metrics (TrainSums, EvalSums; K = 1 here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from trainer import faults
from trainer.data import Batch
from trainer.metrics import EvalStats, EvalSums, TrainStats, TrainSums
from trainer.models import TrackedNet
from trainer.selectivity import EPS, SIForm, TooFewClasses, batch_selectivity
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
    sums = TrainSums(1, device, [carry] if carry else None)
    start = time.perf_counter()
    for x, y in batches:
        si = None
        with autocast(device):
            logits, feats = model(x, capture=regularize)
            ce = F.cross_entropy(logits.float(), y)
            if regularize:
                si = _selectivity_or_zero(feats, y, num_classes, form, model.block_names)
                loss = ce - alpha * si
            else:
                loss = ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        faults.point("train-step")
        sums.add(loss.view(1), ce.view(1), None if si is None else si.view(1), logits.unsqueeze(0), y.unsqueeze(0))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # A non-finite loss is returned, not raised: the caller fails that trial (and only it, in a group).
    return sums.result([regularize], time.perf_counter() - start)[0]


def _selectivity_or_zero(feats: Any, y: torch.Tensor, num_classes: int, form: SIForm | None, names: list[str]) -> torch.Tensor:
    """SI_batch, or 0 for a batch with fewer than two classes (only tiny batches, or one shrunk by
    skipped images, can have one): the step then trains on cross-entropy alone instead of failing."""
    try:
        return batch_selectivity(feats, y, num_classes, form=form, layer_names=names)
    except TooFewClasses:
        return torch.zeros((), device=y.device)


@torch.no_grad()
def evaluate(model: TrackedNet, batches: Iterable[Batch], num_classes: int, device: torch.device) -> EvalStats:
    """Test loss, top-1 (and top-5) and every unit's CSI over `batches` (trainer.metrics.EvalSums, K = 1)."""
    model.eval()
    start = time.perf_counter()
    sums = EvalSums(1, num_classes, device)
    for x, y in batches:
        with autocast(device):
            logits, feats = model(x, capture=True)
        assert feats is not None
        sums.add(logits.float().unsqueeze(0), y, feats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums.result(time.perf_counter() - start)[0]
