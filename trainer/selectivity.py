"""Class selectivity (SPEC 1.2-1.5): pure tensor functions, no Python loop over classes or units.

    mu_c    = mean activation of a unit over the samples of class c (present classes only)
    CSI     = (mu_max - mu_-max) / (mu_max + mu_-max + eps)

`selectivity_index` is the per-unit CSI of a set of activations; `batch_selectivity` is the
regularizer's SI_batch (mean over layers of the mean CSI over units), differentiable. The
evaluation accumulates class sums over the whole test set with `ClassMeanAccumulator` and reads
CSI from the class means with `csi_from_means`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-7


@dataclass(frozen=True)
class UnitSelectivity:
    """CSI of every unit of one layer, with the class means behind it."""

    csi: torch.Tensor  # [U]
    top_class: torch.Tensor  # [U] int64, the class of mu_max
    mu_max: torch.Tensor  # [U]
    mu_rest: torch.Tensor  # [U] mean of the other present classes' means


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Samples per class [C] (int64). A scatter-add, not torch.bincount: on CUDA bincount reads
    labels.max() back to the host, a sync the training step should not pay."""
    return labels.new_zeros(num_classes, dtype=torch.int64).index_add_(0, labels, torch.ones_like(labels, dtype=torch.int64))


def class_sums(activations: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums [C, U] and counts [C] with one scatter-add (differentiable in the sums)."""
    sums = activations.new_zeros(num_classes, activations.shape[1]).index_add(0, labels, activations)
    return sums, class_counts(labels, num_classes)


def present_classes(counts: torch.Tensor) -> torch.Tensor:
    """The ids of the classes with samples; ValueError when fewer than two (CSI is undefined then).

    One host sync (nonzero); the regularizer calls it once per batch, not once per layer.
    """
    class_ids = counts.nonzero().squeeze(1)
    if class_ids.numel() < 2:
        raise ValueError(f"class selectivity needs at least two classes present, got {class_ids.numel()}")
    return class_ids


def csi_from_means(
    sums: torch.Tensor, counts: torch.Tensor, eps: float = EPS, class_ids: torch.Tensor | None = None
) -> UnitSelectivity:
    """CSI per unit from class sums [C, U] and counts [C]; absent classes are left out.

    `class_ids`: `present_classes(counts)` if the caller has it already. Raises ValueError when
    fewer than two classes are present: CSI is undefined then.
    """
    if class_ids is None:
        class_ids = present_classes(counts)
    n_present = class_ids.numel()
    means = sums.index_select(0, class_ids) / counts.index_select(0, class_ids).unsqueeze(1).to(sums.dtype)  # [P, U]
    mu_max, arg = means.max(dim=0)
    mu_rest = (means.sum(dim=0) - mu_max) / (n_present - 1)
    csi = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return UnitSelectivity(csi=csi, top_class=class_ids[arg], mu_max=mu_max, mu_rest=mu_rest)


def selectivity_index(
    activations: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float = EPS
) -> torch.Tensor:
    """CSI per unit (SPEC 1.2) of activations [N, U] (already spatially averaged), labels [N]."""
    if activations.dim() != 2:
        raise ValueError(f"activations must be [N, U], got shape {tuple(activations.shape)}")
    if labels.shape != activations.shape[:1]:
        raise ValueError(f"labels must be [N] = [{activations.shape[0]}], got shape {tuple(labels.shape)}")
    sums, counts = class_sums(activations, labels.long(), num_classes)
    return csi_from_means(sums, counts, eps).csi


def batch_selectivity(
    layer_activations: list[torch.Tensor], labels: torch.Tensor, num_classes: int, eps: float = EPS
) -> torch.Tensor:
    """SI_batch (SPEC 1.4): mean over layers of the mean CSI over units, computed on one batch.

    Differentiable through the activations (the max picks a class per unit; its gradient flows
    to that class's mean, as in Leavitt & Morcos).
    """
    if not layer_activations:
        raise ValueError("batch_selectivity needs at least one layer")
    labels = labels.long()
    counts = class_counts(labels, num_classes)
    class_ids = present_classes(counts)  # the batch's one host sync, shared by all layers
    layer_means = []
    for a in layer_activations:
        sums = a.new_zeros(num_classes, a.shape[1]).index_add(0, labels, a)
        layer_means.append(csi_from_means(sums, counts, eps, class_ids).csi.mean())
    return torch.stack(layer_means).mean()


class ClassMeanAccumulator:
    """Running per-class sums of every tracked layer over a whole evaluation pass (SPEC 1.3)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: list[torch.Tensor] | None = None
        self.counts: torch.Tensor | None = None

    def add(self, layer_activations: list[torch.Tensor], labels: torch.Tensor) -> None:
        # float64 sums: a test set of 50k images summed in float32 loses digits in the class means.
        labels = labels.long()
        batch = [class_sums(a.detach().double(), labels, self.num_classes)[0] for a in layer_activations]
        counts = class_counts(labels, self.num_classes)
        if self.sums is None:
            self.sums, self.counts = batch, counts
        else:
            self.sums = [s + b for s, b in zip(self.sums, batch)]
            self.counts = self.counts + counts

    def result(self, eps: float = EPS) -> list[UnitSelectivity]:
        if self.sums is None or self.counts is None:
            raise ValueError("no activations were accumulated")
        return [csi_from_means(s, self.counts, eps) for s in self.sums]
