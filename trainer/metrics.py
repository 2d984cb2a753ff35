"""The statistics of training and of evaluation, for K >= 1 models at once: each metric is written here once.

    sums = TrainSums(k, device, carry)              # carry: each model's stretch so far (a mid-epoch resume)
    sums.add(loss, ce, si, logits, labels)           # per step: loss, ce, si [K]; logits [K, B, C]; labels [K, B]
    stats = sums.result(regularized, seconds)       # one TrainStats per model

    ev = EvalSums(k, num_classes, device)
    ev.add(logits, labels, feats)                    # per test batch: logits [K, B, C]; labels [B]; feats [B, K*U] per layer
    evals = ev.result(seconds)                       # one EvalStats per model

trainer.loop's one step loop and one evaluation loop feed them, for both engines: the dense one
with K = 1, the fused one with its K models. So a new per-evaluation metric is one more sum in
`EvalSums.add` and one more field in `EvalStats`, a new step statistic one more sum in
`TrainSums.add` and one more field in `TrainStats` (then its column: docs/development.md). Sums stay on the device and are read
once per stretch: a per-step `.item()` would stall a GPU on every step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainer.selectivity import ClassMeanAccumulator, UnitSelectivity


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


NOTHING = TrainStats(0.0, 0.0, None, 0.0, 0, 0, 0.0)


class EmptyTestSet(ValueError):
    """An evaluation saw no image (every test batch unreadable): the data's fault, said by the caller."""


class TrainSums:
    """Running float64 sums of a stretch of training, one entry per model."""

    def __init__(self, k: int, device: torch.device, carry: list[TrainStats] | None = None) -> None:
        c = carry or [NOTHING] * k
        fields = ("loss_sum", "ce_sum", "si_sum", "correct")
        self.loss_sum, self.ce_sum, self.si_sum, self.correct = (
            torch.tensor([getattr(s, f) for s in c], device=device, dtype=torch.float64) for f in fields
        )
        self.images, self.steps, self.seconds = c[0].images, c[0].steps, c[0].seconds

    def add(self, loss: torch.Tensor, ce: torch.Tensor, si: torch.Tensor | None, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of every model: loss, ce and si [K] (si None: regularizer off), logits [K, B, C], labels [K, B]."""
        n = labels.shape[1]
        self.loss_sum += loss.detach() * n
        self.ce_sum += ce.detach() * n
        if si is not None:
            self.si_sum += si.detach()
        self.correct += (logits.argmax(2) == labels).sum(1)
        self.images += n
        self.steps += 1

    def result(self, regularized: list[bool], seconds: float) -> list[TrainStats]:
        """Each model's means; `seconds` of this stretch (a carried stretch's are added)."""
        ls, cs, ss, cr = self.loss_sum.tolist(), self.ce_sum.tolist(), self.si_sum.tolist(), self.correct.tolist()
        total = seconds + self.seconds
        return [
            stats_from_sums(ls[i], cs[i], ss[i] if reg else None, cr[i], self.images, self.steps, total)
            for i, reg in enumerate(regularized)
        ]


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


def per_model_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of each model [K]: logits [K, B, C], labels [K, B]; 'mean' or 'sum' over B."""
    k, b, c = logits.shape
    if k == 1:  # one network: the whole-batch reduction, as the dense path has always computed it (its numbers, bitwise)
        return F.cross_entropy(logits[0], labels[0], reduction=reduction).view(1)
    ce = F.cross_entropy(logits.reshape(k * b, c), labels.reshape(k * b), reduction="none").view(k, b)
    return ce.mean(1) if reduction == "mean" else ce.sum(1)


class EvalSums:
    """Running sums of one evaluation pass of K models over the same test batches."""

    def __init__(self, k: int, num_classes: int, device: torch.device) -> None:
        self.k, self.num_classes = k, num_classes
        zero = torch.zeros(k, device=device, dtype=torch.float64)
        self.loss_sum, self.top1, self.top5 = zero.clone(), zero.clone(), zero.clone()
        # float64 class sums of every layer; the K models' units side by side ([C, K*U]): columns are independent.
        self.means = ClassMeanAccumulator(num_classes)
        self.n = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, feats: list[torch.Tensor]) -> None:
        """One test batch: logits [K, B, C] (float32), labels [B], feats per layer [B, K*U] (model-major)."""
        yk = labels.unsqueeze(0).expand(self.k, -1)
        self.loss_sum += per_model_ce(logits, yk, "sum")
        self.top1 += (logits.argmax(2) == yk).sum(1)
        if self.num_classes >= 100:
            self.top5 += (logits.topk(5, dim=2).indices == yk.unsqueeze(2)).any(2).sum(1)
        self.means.add(feats, labels)
        self.n += labels.shape[0]

    def result(self, seconds: float) -> list[EvalStats]:
        """Each model's EvalStats; `seconds`: the whole pass (shared by the K models)."""
        if not self.n:
            raise EmptyTestSet("the test set is empty")
        layers = self.means.result()  # [K*U] per layer
        ls, t1, t5 = self.loss_sum.tolist(), self.top1.tolist(), self.top5.tolist()
        top5 = self.num_classes >= 100

        def split(u: UnitSelectivity, i: int) -> UnitSelectivity:
            pick = lambda t: t.view(self.k, -1)[i]
            return UnitSelectivity(csi=pick(u.csi), top_class=pick(u.top_class), mu_max=pick(u.mu_max), mu_rest=pick(u.mu_rest))

        return [
            EvalStats(ls[i] / self.n, t1[i] / self.n, t5[i] / self.n if top5 else None, [split(u, i) for u in layers], seconds)
            for i in range(self.k)
        ]
