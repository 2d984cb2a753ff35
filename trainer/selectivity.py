"""Class selectivity: pure tensor functions, no Python loop over classes or units.

    mu_c    = mean activation of a unit over the samples of class c (present classes only)
    CSI     = (mu_max - mu_-max) / (mu_max + mu_-max + eps)

`selectivity_index` is the per-unit CSI of a set of activations; `batch_selectivity` is the
regularizer's SI_batch (mean over layers of the mean CSI over units), differentiable, and
`batched_selectivity` the same for K models trained side by side. The evaluation accumulates class
sums over the whole test set with `ClassMeanAccumulator` and reads CSI from the class means with
`csi_from_means`; that reported CSI is always the class-mean definition above.

The statistic is written once: `class_statistic` (class means or sums) and `csi_formula` (CSI
from mu_max and the other classes' statistic) serve all of them. SI_batch keeps two entry points
over that core, for reasons that are numbers, not taste (see `batched_selectivity`); the training
step picks between them in one place, trainer.loop.slot_selectivity (K = 1: `batch_selectivity`).

The regularizer has more than one form in the literature, chosen by an `SIForm`:

    SIForm()           Leavitt & Morcos (ICLR 2021): class means, eps 1e-7, SI = mean over tracked
                       layers of the per-layer unit mean (the default, and what the evaluation reports)
    SIForm.ranadive()  Ranadive et al. (TMLR 2023), as in their ResNet-50 code: class SUMS, eps 1e-6,
                       the units of all blocks of a stage pooled into one stage mean, SI = the mean of
                       the stage means, the last stage left out

Stages are read from the tracked layers' names, `stage<i>.block<j>` (trainer.models).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

EPS = 1e-7

SI_POOLINGS = ("layers", "stages")
SI_CLASS_STATS = ("mean", "sum")
_LAYER_NAME = re.compile(r"stage(\d+)\.block(\d+)")


@dataclass(frozen=True)
class SIForm:
    """Which form of the training regularizer's SI_batch to compute (the evaluation CSI is unaffected).

    pooling          "layers": mean over layers of each layer's mean CSI over units (layers weigh
                     equally); "stages": per stage, the mean CSI over all units of all its blocks
                     (a block with more units weighs more), then the mean over stages (stages weigh
                     equally)
    skip_last_stage  leave the blocks of the highest-numbered tracked stage out of SI
    skip_stages      stage numbers whose blocks are left out of SI (Ranadive et al.'s VGG16 CIFAR
                     code leaves out stages 5 and 6: the last conv group and the classifier layers)
    class_stat       "mean": per-class means (sum / count); "sum": per-class sums, so a class with
                     more samples in the batch has a larger statistic. mu_-max is the mean of the
                     other present classes' statistic either way
    eps              the CSI denominator's guard
    """

    pooling: str = "layers"  # one of SI_POOLINGS
    skip_last_stage: bool = False
    class_stat: str = "mean"  # one of SI_CLASS_STATS
    eps: float = EPS
    skip_stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Strict checks: these arrive from trial configs, where a typo or a string "false" must fail loudly.
        if self.pooling not in SI_POOLINGS:
            raise ValueError(f"SIForm.pooling must be one of {SI_POOLINGS}, got {self.pooling!r}")
        if self.class_stat not in SI_CLASS_STATS:
            raise ValueError(f"SIForm.class_stat must be one of {SI_CLASS_STATS}, got {self.class_stat!r}")
        if not isinstance(self.skip_last_stage, bool):
            raise ValueError(f"SIForm.skip_last_stage must be True or False, got {self.skip_last_stage!r}")
        if not isinstance(self.skip_stages, tuple) or any(isinstance(i, bool) or not isinstance(i, int) for i in self.skip_stages):
            raise ValueError(f"SIForm.skip_stages must be a tuple of stage numbers, got {self.skip_stages!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"SIForm.eps must be a finite number >= 0, got {self.eps!r}")

    @classmethod
    def ranadive(cls) -> SIForm:
        """Ranadive et al. (TMLR 2023): class sums, stage pooling, last stage left out, eps 1e-6."""
        return cls(pooling="stages", skip_last_stage=True, class_stat="sum", eps=1e-6)

    @property
    def needs_layer_names(self) -> bool:
        """Whether computing this form needs the layers' stages (every form but the default pooling of all layers)."""
        return self.pooling != "layers" or self.skip_last_stage or bool(self.skip_stages)


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


class TooFewClasses(ValueError):
    """Fewer than two classes present: class selectivity is undefined."""


def present_classes(counts: torch.Tensor) -> torch.Tensor:
    """The ids of the classes with samples; ValueError when fewer than two (CSI is undefined then).

    One host sync (nonzero); the regularizer calls it once per batch, not once per layer.
    """
    class_ids = counts.nonzero().squeeze(1)
    if class_ids.numel() < 2:
        raise TooFewClasses(f"class selectivity needs at least two classes present, got {class_ids.numel()}")
    return class_ids


def class_statistic(sums: torch.Tensor, counts: torch.Tensor, class_stat: str = "mean") -> torch.Tensor:
    """The per-class statistic from class sums [..., C, U] and counts [..., C]: means, or the sums themselves.

    One place for it, in every layout (one model [C, U], K models [K, C, U]). An absent class
    (count 0) gets 0: its sum over no samples divided by 1, never 0 / 0, so no NaN reaches a
    gradient; every caller leaves absent classes out (index_select) or masks them.
    """
    if class_stat == "sum":  # Ranadive et al.: a class with more samples in the batch weighs more
        return sums
    return sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)


def csi_formula(mu_max: torch.Tensor, total: torch.Tensor, n_rest: int | torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CSI and mu_-max per unit from mu_max, the sum of the present classes' statistic and their number less one.

    The one place for the formula: training (one model or K), evaluation (float64 class means),
    class means or class sums alike. `n_rest` is an int (one model) or a tensor broadcasting
    against mu_max (K models, each its own count); the division is the same float operation.
    """
    mu_rest = (total - mu_max) / n_rest
    return (mu_max - mu_rest) / (mu_max + mu_rest + eps), mu_rest


def _csi_from_stats(stats: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSI, arg of the max, mu_max and mu_-max per unit from a per-class statistic [P, U] of the P present classes."""
    mu_max, arg = stats.max(dim=0)
    csi, mu_rest = csi_formula(mu_max, stats.sum(dim=0), stats.shape[0] - 1, eps)
    return csi, arg, mu_max, mu_rest


def csi_from_means(sums: torch.Tensor, counts: torch.Tensor, eps: float = EPS, class_ids: torch.Tensor | None = None) -> UnitSelectivity:
    """CSI per unit from class sums [C, U] and counts [C]; absent classes are left out.

    `class_ids`: `present_classes(counts)` if the caller has it already. Raises ValueError when
    fewer than two classes are present: CSI is undefined then.
    """
    if class_ids is None:
        class_ids = present_classes(counts)
    means = class_statistic(sums, counts).index_select(0, class_ids)  # [P, U]
    csi, arg, mu_max, mu_rest = _csi_from_stats(means, eps)
    return UnitSelectivity(csi=csi, top_class=class_ids[arg], mu_max=mu_max, mu_rest=mu_rest)


def selectivity_index(activations: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float = EPS) -> torch.Tensor:
    """CSI per unit of activations [N, U] (already spatially averaged), labels [N]."""
    if activations.dim() != 2:
        raise ValueError(f"activations must be [N, U], got shape {tuple(activations.shape)}")
    if labels.shape != activations.shape[:1]:
        raise ValueError(f"labels must be [N] = [{activations.shape[0]}], got shape {tuple(labels.shape)}")
    sums, counts = class_sums(activations, labels.long(), num_classes)
    return csi_from_means(sums, counts, eps).csi


# ---- the regularizer's SI_batch ------------------------------------------------------------------
def _resolve_form(form: SIForm | None, eps: float | None) -> SIForm:
    """The form to compute: `eps` alone keeps the default form with that eps; `eps` with a form must agree.

    One source of truth for eps: a form carries its own (1e-7 or Ranadive et al.'s 1e-6), and an
    explicit eps that contradicts it is a wiring mistake, not an override.
    """
    if form is None:
        return SIForm() if eps is None else SIForm(eps=eps)
    if not isinstance(form, SIForm):
        raise TypeError(f"form must be an SIForm or None, got {type(form).__name__}")
    if eps is not None and eps != form.eps:
        raise ValueError(f"eps={eps!r} contradicts form.eps={form.eps!r}; set it in the form (dataclasses.replace)")
    return form


def layer_stages(layer_names: list[str] | tuple[str, ...] | None, n_layers: int) -> list[int]:
    """The stage number i of each tracked layer `stage<i>.block<j>`; ValueError on a missing or malformed list."""
    if layer_names is None:
        raise ValueError("this SIForm needs layer_names (the tracked layers' names, stage<i>.block<j>) to know the stages")
    names = list(layer_names)
    if len(names) != n_layers:
        raise ValueError(f"layer_names has {len(names)} names for {n_layers} layers")
    if len(set(names)) != len(names):
        raise ValueError(f"layer_names has duplicates: {names}")
    stages = []
    for name in names:
        m = _LAYER_NAME.fullmatch(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(f"layer name {name!r} is not of the form stage<i>.block<j>")
        stages.append(int(m.group(1)))
    return stages


def _kept_layers(form: SIForm, stages: list[int] | None, n_layers: int) -> list[int]:
    """Indices of the layers that enter SI: all, or all but those of the last stage and of `skip_stages`."""
    if not form.skip_last_stage and not form.skip_stages:
        return list(range(n_layers))
    assert stages is not None
    left_out = set(form.skip_stages) | ({max(stages)} if form.skip_last_stage else set())
    kept = [i for i, s in enumerate(stages) if s not in left_out]
    if not kept:
        raise ValueError(f"skipping stages {sorted(left_out)} leaves no layers: every tracked layer is in them")
    return kept


def _stage_groups(stages: list[int], kept: list[int]) -> list[list[int]]:
    """The kept layer indices grouped by stage, stages in increasing order, layers in their given order."""
    return [[i for i in kept if stages[i] == s] for s in sorted({stages[i] for i in kept})]


def batch_selectivity(
    layer_activations: list[torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    eps: float | None = None,
    *,
    form: SIForm | None = None,
    layer_names: list[str] | None = None,
) -> torch.Tensor:
    """SI_batch of one batch, differentiable through the activations [N, U_l] (one per layer).

    Default form (`form` None or `SIForm()`): the mean over layers of the mean CSI over units, with
    class means, eps 1e-7 (Leavitt & Morcos). Other forms (see SIForm) need `layer_names`, the
    tracked layers' `stage<i>.block<j>` names, to know the stages. `eps` None takes the form's;
    given, it sets the default form's eps (the old signature) and must agree with an explicit form.

    The max picks a class per unit; its gradient flows to that class's statistic, as in Leavitt &
    Morcos. One host sync per call (the present-class check), whatever the form. This is the one
    model's SI_batch (K = 1 of the training step): absent classes are left out (index_select),
    which the reference numbers (Leavitt & Morcos; Ranadive et al.'s code) pin bitwise.
    """
    if not layer_activations:
        raise ValueError("batch_selectivity needs at least one layer")
    form = _resolve_form(form, eps)
    stages = layer_stages(layer_names, len(layer_activations)) if (layer_names is not None or form.needs_layer_names) else None
    kept = _kept_layers(form, stages, len(layer_activations))
    labels = labels.long()
    counts = class_counts(labels, num_classes)
    class_ids = present_classes(counts)  # the batch's one host sync, shared by all layers
    csis: dict[int, torch.Tensor] = {}
    for i in kept:
        a = layer_activations[i]
        sums = a.new_zeros(num_classes, a.shape[1]).index_add(0, labels, a)
        csis[i] = _csi_from_stats(class_statistic(sums, counts, form.class_stat).index_select(0, class_ids), form.eps)[0]
    if form.pooling == "layers":
        # The default form runs exactly these operations in this order: its numbers are unchanged bitwise.
        return torch.stack([csis[i].mean() for i in kept]).mean()
    assert stages is not None
    return torch.stack([torch.cat([csis[i] for i in group]).mean() for group in _stage_groups(stages, kept)]).mean()


def batched_selectivity(
    layer_feats: list[torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    form: SIForm | None = None,
    layer_names: list[str] | None = None,
    eps: float | None = None,
    strict: bool = True,
) -> torch.Tensor:
    """SI_batch of each of K models [K], differentiable; no Python loop over K, classes or units.

    `strict` False (training): a model whose batch holds fewer than two classes gets SI 0 (no
    gradient) instead of an error, and every other model its exact value.

    layer_feats: per tracked layer [K, B, U_l]; labels [K, B] (each model its own batch). The value
    for model k is batch_selectivity on model k's slice, in the same form (to float rounding).
    Absent classes are masked instead of left out, so all K models and all layers take one
    scatter-add over [K, C, sum U_l]. For the default form the operations are exactly those of
    the fused trainer had before the forms existed (bitwise the same numbers and gradients).

    Ties in the max (e.g. a dead unit whose class statistics are all 0) share the gradient evenly
    (amax), where batch_selectivity gives it to one class (max); the values agree.

    Why this is not batch_selectivity with K = 1 (or that one this with K = 1): both share
    `class_statistic` and `csi_formula`, but (1) absent classes are masked here, left out there,
    so the class sum runs over C classes here and P there, a different float reduction; (2) amax
    here and max there split a tie's gradient differently, and a dead unit is a tie every batch.
    Either change moves numbers that tests pin bitwise: the dense path against Leavitt & Morcos's
    arithmetic and Ranadive et al.'s reference gradients (tests/test_selectivity_forms.py,
    tests/test_vgg_rplus.py, tests/test_reference_trial.py), this one against the fused trainer's
    (test_batched_default_is_bitwise_fused). Only the selection of classes differs; no entry
    point holds a formula of its own.
    """
    if not layer_feats:
        raise ValueError("batched_selectivity needs at least one layer")
    form = _resolve_form(form, eps)
    if labels.dim() != 2:
        raise ValueError(f"labels must be [K, B], got shape {tuple(labels.shape)}")
    for f in layer_feats:
        if f.dim() != 3 or f.shape[:2] != labels.shape:
            raise ValueError(f"layer features must be [K, B, U] with [K, B] = {tuple(labels.shape)}, got {tuple(f.shape)}")
    stages = layer_stages(layer_names, len(layer_feats)) if (layer_names is not None or form.needs_layer_names) else None
    kept = _kept_layers(form, stages, len(layer_feats))
    if form.pooling == "stages":
        assert stages is not None
        groups = _stage_groups(stages, kept)
        kept = [i for g in groups for i in g]  # stage-contiguous, so one split per stage below
    feats = [layer_feats[i] for i in kept]
    labels = labels.long()
    k, b = labels.shape
    counts = labels.new_zeros(k, num_classes).scatter_add_(1, labels, torch.ones_like(labels))  # [K, C]
    present = counts > 0
    n_present = present.sum(1)
    undefined = int(n_present.min()) < 2  # the step's one host sync, as in batch_selectivity
    if undefined and strict:
        raise TooFewClasses(f"class selectivity needs at least two classes present, got {int(n_present.min())}")
    sizes = [f.shape[2] for f in feats]
    a = torch.cat(feats, dim=2)  # [K, B, U]
    u = a.shape[2]
    sums = a.new_zeros(k, num_classes, u).scatter_add(1, labels.unsqueeze(2).expand(k, b, u), a)
    stats = class_statistic(sums, counts, form.class_stat)  # [K, C, U]; absent classes 0
    # Absent classes are 0 in stats, so summing over all C classes sums the present ones.
    mu_max = stats.masked_fill(~present.unsqueeze(2), float("-inf")).amax(1)  # [K, U]
    rest_count = (n_present - 1).clamp_min(1) if undefined else n_present - 1
    csi, _ = csi_formula(mu_max, stats.sum(1), rest_count.unsqueeze(1).to(a.dtype), form.eps)
    if undefined:  # a model whose batch has one class: no SI (0, no gradient), the others exactly as always
        csi = torch.where((n_present >= 2).unsqueeze(1), csi, torch.zeros_like(csi))
    if form.pooling == "stages":
        sizes = [sum(layer_feats[i].shape[2] for i in g) for g in groups]  # units pooled per stage
    return torch.stack([c.mean(1) for c in csi.split(sizes, dim=1)]).mean(0)


class ClassMeanAccumulator:
    """Running per-class sums of every tracked layer over a whole evaluation pass."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: list[torch.Tensor] | None = None
        self.counts: torch.Tensor | None = None

    def add(self, layer_activations: list[torch.Tensor], labels: torch.Tensor) -> None:
        # float64 sums: a test set of 50k images summed in float32 loses digits in the class means.
        labels = labels.long()
        batch = [class_sums(a.detach().double(), labels, self.num_classes)[0] for a in layer_activations]
        counts = class_counts(labels, self.num_classes)
        if self.sums is None or self.counts is None:  # both set together; the second test is for the type checker
            self.sums, self.counts = batch, counts
        else:
            self.sums = [s + b for s, b in zip(self.sums, batch)]
            self.counts = self.counts + counts

    def result(self, eps: float = EPS) -> list[UnitSelectivity]:
        if self.sums is None or self.counts is None:
            raise ValueError("no activations were accumulated")
        return [csi_from_means(s, self.counts, eps) for s in self.sums]
