"""Forms of the training regularizer's SI_batch (trainer.selectivity.SIForm).

Leavitt & Morcos (ICLR 2021) average the CSI of class means over units per layer, then over layers;
Ranadive et al. (TMLR 2023) use class sums, pool all units of a stage, average the stages and leave
the last stage out. Every combination of pooling x skip_last_stage x class_stat is checked against a
loop reference written from that description (float64, autograd through the loops for gradients),
for the per-model `batch_selectivity` and the K-model `batched_selectivity`; the default form must
stay bitwise what it was, and bitwise the fused trainer's batched form as it was.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pytest
import torch

from trainer.selectivity import EPS, SIForm, batch_selectivity, batched_selectivity, class_counts, csi_from_means, present_classes

NAMES = ["stage1.block1", "stage1.block2", "stage2.block1", "stage3.block1", "stage3.block2"]
WIDTHS = [3, 5, 4, 2, 6]  # blocks of one stage differ in width, so pooling units differs from pooling layers
RANADIVE = SIForm.ranadive()
FORMS = [
    SIForm(pooling=p, skip_last_stage=s, class_stat=c, eps=e)
    for p, s, c, e in itertools.product(("layers", "stages"), (False, True), ("mean", "sum"), (1e-7, 1e-6))
]


def form_id(form: SIForm) -> str:
    return f"{form.pooling}-{'skip' if form.skip_last_stage else 'all'}-{form.class_stat}-{form.eps:g}"


# ---- the loop reference ---------------------------------------------------------------------------
def reference_si(
    layers: list[torch.Tensor], labels: list[int], names: list[str], pooling: str, skip_last: bool, class_stat: str, eps: float
) -> torch.Tensor:
    """SI_batch from the description, one unit, class and sample at a time (0-d tensors, so autograd works)."""
    stage_of = [int(name.split(".")[0][len("stage") :]) for name in names]
    last = max(stage_of)
    present = sorted(set(labels))
    if len(present) < 2:
        raise ValueError("fewer than two classes")
    unit_csis: list[list[torch.Tensor]] = []  # per layer, per unit
    for a in layers:
        csis = []
        for u in range(a.shape[1]):
            stats = []
            for c in present:
                members = [i for i in range(len(labels)) if labels[i] == c]
                total = a[members[0], u]
                for i in members[1:]:
                    total = total + a[i, u]
                stats.append(total / len(members) if class_stat == "mean" else total)
            top = 0
            for j in range(1, len(stats)):
                if stats[j] > stats[top]:  # the first of tied maxima, as torch.max on CPU
                    top = j
            others = stats[:top] + stats[top + 1 :]
            rest = others[0]
            for s in others[1:]:
                rest = rest + s
            rest = rest / len(others)
            csis.append((stats[top] - rest) / (stats[top] + rest + eps))
        unit_csis.append(csis)
    kept = [i for i in range(len(layers)) if not (skip_last and stage_of[i] == last)]
    if pooling == "layers":
        parts = [sum(unit_csis[i], torch.zeros((), dtype=torch.float64)) / len(unit_csis[i]) for i in kept]
    else:
        parts = []
        for stage in sorted({stage_of[i] for i in kept}):
            pooled = [c for i in kept if stage_of[i] == stage for c in unit_csis[i]]
            parts.append(sum(pooled, torch.zeros((), dtype=torch.float64)) / len(pooled))
    return sum(parts, torch.zeros((), dtype=torch.float64)) / len(parts)


def reference_with_grad(
    layers: list[torch.Tensor], labels: torch.Tensor, form: SIForm, names: list[str] = NAMES
) -> tuple[float, list[torch.Tensor]]:
    """The reference value and its gradient w.r.t. every layer, computed in float64."""
    xs = [a.detach().double().requires_grad_() for a in layers]
    si = reference_si(xs, labels.tolist(), names, form.pooling, form.skip_last_stage, form.class_stat, form.eps)
    grads = torch.autograd.grad(si, xs, allow_unused=True)
    return si.item(), [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


def random_layers(seed: int, n: int = 24, dtype: torch.dtype = torch.float64, dead: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layers = [torch.relu(torch.randn(n, u, generator=g, dtype=torch.float64)) * (1 + i) for i, u in enumerate(WIDTHS)]
    if dead:
        layers[1][:, 2] = 0.0  # a dead unit: every class statistic 0, a tie in the max
    return [a.to(dtype) for a in layers]


def random_labels(seed: int, n: int = 24) -> torch.Tensor:
    """Classes 0..4 of num_classes 7 (5 and 6 absent), class 4 with a single sample."""
    g = torch.Generator().manual_seed(100 + seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    labels[:4] = torch.tensor([0, 1, 2, 3])
    labels[4] = 4
    return labels


def si_and_grads(
    layers: list[torch.Tensor], labels: torch.Tensor, num_classes: int, form: SIForm
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = [a.detach().clone().requires_grad_() for a in layers]
    si = batch_selectivity(xs, labels, num_classes, form=form, layer_names=NAMES)
    return si, list(torch.autograd.grad(si, xs, allow_unused=True))


def assert_grads_close(got: Sequence[torch.Tensor | None], want: Sequence[torch.Tensor], rtol: float) -> None:
    scale = max(w.abs().max().item() for w in want)
    for g, w in zip(got, want):
        g = torch.zeros_like(w) if g is None else g.double()
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale)


# ---- batch_selectivity against the reference ---------------------------------------------------------
@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_matches_reference_float64(form: SIForm) -> None:
    layers, labels = random_layers(0), random_labels(0)
    want, want_grads = reference_with_grad(layers, labels, form)
    si, grads = si_and_grads(layers, labels, 7, form)
    assert si.dtype == torch.float64
    assert si.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert_grads_close(grads, want_grads, rtol=1e-10)
    if form.skip_last_stage:  # the last stage takes no part at all
        assert grads[3] is None and grads[4] is None


@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_matches_reference_float32(form: SIForm) -> None:
    layers, labels = random_layers(1, dtype=torch.float32), random_labels(1)
    want, want_grads = reference_with_grad(layers, labels, form)
    si, grads = si_and_grads(layers, labels, 7, form)
    assert si.dtype == torch.float32
    assert si.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert_grads_close(grads, want_grads, rtol=1e-4)


@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_absent_classes_do_not_count(form: SIForm) -> None:
    layers, labels = random_layers(2), random_labels(2)
    few = batch_selectivity(layers, labels, 5, form=form, layer_names=NAMES)
    many = batch_selectivity(layers, labels, 12, form=form, layer_names=NAMES)
    shifted = batch_selectivity(layers, labels + 6, 12, form=form, layer_names=NAMES)  # present classes need not come first
    assert torch.equal(few, many) and torch.equal(few, shifted)


@pytest.mark.parametrize("form", [SIForm(), SIForm.ranadive(), *FORMS[:4]], ids=form_id)
def test_one_class_present_raises(form: SIForm) -> None:
    layers = random_layers(3)
    with pytest.raises(ValueError, match="two classes"):
        batch_selectivity(layers, torch.full((24,), 3), 7, form=form, layer_names=NAMES)
    with pytest.raises(ValueError, match="two classes"):
        batched_selectivity([a.expand(2, -1, -1) for a in layers], torch.full((2, 24), 3), 7, form=form, layer_names=NAMES)
    # One model of K with a single class is enough to refuse the batch.
    labels = torch.stack([random_labels(3), torch.full((24,), 3)])
    with pytest.raises(ValueError, match="two classes"):
        batched_selectivity([a.expand(2, -1, -1) for a in layers], labels, 7, form=form, layer_names=NAMES)


@pytest.mark.parametrize("class_stat", ["mean", "sum"])
def test_dead_units_score_zero(class_stat: str) -> None:
    # Every class statistic 0: CSI = (0 - 0) / (0 + 0 + eps) = 0, whatever eps and statistic.
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    dead = torch.zeros(6, 4, dtype=torch.float64)
    live = torch.tensor([[3.0], [1.0], [0.0], [3.0], [1.0], [0.0]], dtype=torch.float64)  # CSI (3 - 0.5) / (3.5 + eps) either way
    names = ["stage1.block1", "stage2.block1"]
    for pooling in ("layers", "stages"):
        form = SIForm(pooling=pooling, class_stat=class_stat)
        scale = 1 if class_stat == "mean" else 2  # two samples per class: sums are twice the means
        want = 0.5 * (0.0 + (3 - 0.5) * scale / ((3 + 0.5) * scale + EPS))
        got = batch_selectivity([dead, live], labels, 3, form=form, layer_names=names)
        assert got.item() == pytest.approx(want, rel=1e-12)
        assert batch_selectivity([dead], labels, 3, form=form, layer_names=names[:1]).item() == 0.0
        batched = batched_selectivity(
            [dead.expand(2, -1, -1), live.expand(2, -1, -1)], labels.expand(2, -1), 3, form=form, layer_names=names
        )
        assert batched.tolist() == pytest.approx([want, want], rel=1e-12)
    # The gradient at the tie (1/eps-sized, to the first tied class, as the reference) is finite and the reference's.
    form = SIForm(pooling="stages", class_stat=class_stat)
    si, grads = si_and_grads_named([dead, live], labels, 3, form, names)
    want_si, want_grads = reference_with_grad([dead, live], labels, form, names)
    assert si.item() == pytest.approx(want_si, rel=1e-12)
    assert all(torch.isfinite(g).all() for g in grads)
    assert_grads_close(grads, want_grads, rtol=1e-10)


def si_and_grads_named(
    layers: list[torch.Tensor], labels: torch.Tensor, num_classes: int, form: SIForm, names: list[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = [a.detach().clone().requires_grad_() for a in layers]
    si = batch_selectivity(xs, labels, num_classes, form=form, layer_names=names)
    return si, list(torch.autograd.grad(si, xs))


def test_single_sample_class_mean_versus_sum() -> None:
    # Class 0 has one sample, class 1 two. Means 3 and 1.5: (3 - 1.5) / 4.5 = 1/3. Sums 3 and 3: a tie, CSI 0.
    acts = torch.tensor([[3.0], [1.0], [2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    names = ["stage1.block1"]
    mean = batch_selectivity([acts], labels, 2, form=SIForm(eps=0.0), layer_names=names)
    total = batch_selectivity([acts], labels, 2, form=SIForm(class_stat="sum", eps=0.0), layer_names=names)
    assert mean.item() == pytest.approx(1 / 3, rel=1e-15)
    assert total.item() == 0.0


def todays_fused_batch_selectivity(
    layer_feats: list[torch.Tensor], labels: torch.Tensor, num_classes: int, eps: float = EPS
) -> torch.Tensor:
    """trainer.fused's batched SI_batch as it was before the forms existed (verbatim, to pin its numbers).

    layer_feats: per tracked layer [K, B, U_l]; labels [K, B] (each model its own batch).
    The same arithmetic as trainer.selectivity.batch_selectivity, with absent classes masked
    instead of left out (one scatter-add over [K, C, sum U_l] for all layers at once).
    """
    if not layer_feats:
        raise ValueError("fused_batch_selectivity needs at least one layer")
    labels = labels.long()
    k, b = labels.shape
    counts = labels.new_zeros(k, num_classes).scatter_add_(1, labels, torch.ones_like(labels))  # [K, C]
    present = counts > 0
    n_present = present.sum(1)
    if int(n_present.min()) < 2:  # the step's one host sync, as in batch_selectivity
        raise ValueError(f"class selectivity needs at least two classes present, got {int(n_present.min())}")
    sizes = [f.shape[2] for f in layer_feats]
    a = torch.cat(layer_feats, dim=2)  # [K, B, U]
    u = a.shape[2]
    sums = a.new_zeros(k, num_classes, u).scatter_add(1, labels.unsqueeze(2).expand(k, b, u), a)
    means = sums / counts.clamp_min(1).unsqueeze(2).to(a.dtype)  # absent classes: 0 / 1 = 0
    mu_max = means.masked_fill(~present.unsqueeze(2), float("-inf")).amax(1)  # [K, U]
    mu_rest = (means.sum(1) - mu_max) / (n_present - 1).unsqueeze(1).to(a.dtype)
    csi = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return torch.stack([c.mean(1) for c in csi.split(sizes, dim=1)]).mean(0)


# ---- the default form is today's, bitwise -------------------------------------------------------------
def todays_batch_selectivity(
    layer_activations: list[torch.Tensor], labels: torch.Tensor, num_classes: int, eps: float = EPS
) -> torch.Tensor:
    """batch_selectivity as it was before the forms existed (kept here verbatim to pin its numbers)."""
    labels = labels.long()
    counts = class_counts(labels, num_classes)
    class_ids = present_classes(counts)
    layer_means = []
    for a in layer_activations:
        sums = a.new_zeros(num_classes, a.shape[1]).index_add(0, labels, a)
        layer_means.append(csi_from_means(sums, counts, eps, class_ids).csi.mean())
    return torch.stack(layer_means).mean()


def todays_csi_from_means(sums: torch.Tensor, counts: torch.Tensor, eps: float, class_ids: torch.Tensor) -> torch.Tensor:
    """csi_from_means' arithmetic as it was (verbatim), for the bitwise check of the shared formula."""
    n_present = class_ids.numel()
    means = sums.index_select(0, class_ids) / counts.index_select(0, class_ids).unsqueeze(1).to(sums.dtype)
    mu_max, _ = means.max(dim=0)
    mu_rest = (means.sum(dim=0) - mu_max) / (n_present - 1)
    return (mu_max - mu_rest) / (mu_max + mu_rest + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_form_is_bitwise_todays(dtype: torch.dtype) -> None:
    layers = random_layers(4, n=64, dtype=dtype)
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(1, 8, (64,), generator=g)  # 7 of 9 classes: a divisor P - 1 = 6 that rounds
    labels[:7] = torch.arange(1, 8)
    xs = [a.clone().requires_grad_() for a in layers]
    old = todays_batch_selectivity(xs, labels, 9)
    old_grads = torch.autograd.grad(old, xs)
    for call in (
        lambda: batch_selectivity(xs, labels, 9),
        lambda: batch_selectivity(xs, labels, 9, EPS),
        lambda: batch_selectivity(xs, labels, 9, form=None),
        lambda: batch_selectivity(xs, labels, 9, form=SIForm()),
        lambda: batch_selectivity(xs, labels, 9, EPS, form=SIForm(), layer_names=NAMES),
    ):
        si = call()
        assert torch.equal(si, old)
        assert all(torch.equal(g, w) for g, w in zip(torch.autograd.grad(si, xs), old_grads))
    # An explicit eps without a form is the default form with that eps, as the old signature had it.
    assert torch.equal(batch_selectivity(layers, labels, 9, 1e-3), todays_batch_selectivity(layers, labels, 9, 1e-3))
    assert torch.equal(batch_selectivity(layers, labels, 9, 1e-3), batch_selectivity(layers, labels, 9, form=SIForm(eps=1e-3)))
    counts = class_counts(labels, 9)
    ids = present_classes(counts)
    sums = layers[0].new_zeros(9, layers[0].shape[1]).index_add(0, labels, layers[0])
    assert torch.equal(csi_from_means(sums, counts, EPS, ids).csi, todays_csi_from_means(sums, counts, EPS, ids))


def test_layer_pooling_with_skip_is_the_default_on_the_kept_layers() -> None:
    layers, labels = random_layers(5, dtype=torch.float32), random_labels(5)
    skip = batch_selectivity(layers, labels, 7, form=SIForm(skip_last_stage=True), layer_names=NAMES)
    assert torch.equal(skip, todays_batch_selectivity(layers[:3], labels, 7))


# ---- pooling and skipping, by hand ------------------------------------------------------------------
def hand_case() -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Two classes, one sample each, so a unit with activations (x0, x1) has CSI (max - min) / (max + min + eps)."""
    labels = torch.tensor([0, 1])
    s1b1 = torch.tensor([[1.0], [0.0]], dtype=torch.float64)  # CSI 1
    s1b2 = torch.tensor([[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]], dtype=torch.float64)  # CSI 0, 0, 0
    s2b1 = torch.tensor([[3.0], [1.0]], dtype=torch.float64)  # CSI 2 / 4 = 0.5
    return [s1b1, s1b2, s2b1], labels, ["stage1.block1", "stage1.block2", "stage2.block1"]


@pytest.mark.parametrize("class_stat", ["mean", "sum"])  # one sample per class: sums are means here
def test_stage_pooling_weighs_units_not_layers(class_stat: str) -> None:
    layers, labels, names = hand_case()
    by = {
        pooling: batch_selectivity(
            layers, labels, 2, form=SIForm(pooling=pooling, class_stat=class_stat, eps=0.0), layer_names=names
        ).item()
        for pooling in ("layers", "stages")
    }
    assert by["layers"] == pytest.approx((1 + 0 + 0.5) / 3, rel=1e-15)  # layers: (1, mean(0, 0, 0), 0.5)
    assert by["stages"] == pytest.approx(((1 + 0 + 0 + 0) / 4 + 0.5) / 2, rel=1e-15)  # stage 1 pools its 4 units
    assert by["layers"] != pytest.approx(by["stages"])
    batched = batched_selectivity(
        [a.expand(3, -1, -1) for a in layers],
        labels.expand(3, -1),
        2,
        form=SIForm(pooling="stages", class_stat=class_stat, eps=0.0),
        layer_names=names,
    )
    assert batched.tolist() == pytest.approx([0.375] * 3, rel=1e-15)


def test_stage_pooling_with_skip_by_hand() -> None:
    layers, labels, names = hand_case()
    got = batch_selectivity(layers, labels, 2, form=SIForm(pooling="stages", skip_last_stage=True, eps=0.0), layer_names=names)
    assert got.item() == pytest.approx(0.25, rel=1e-15)  # stage 1 alone: (1 + 0 + 0 + 0) / 4
    got = batch_selectivity(layers, labels, 2, form=SIForm(skip_last_stage=True, eps=0.0), layer_names=names)
    assert got.item() == pytest.approx(0.5, rel=1e-15)  # layers of stage 1: (1 + 0) / 2


@pytest.mark.parametrize("form", [f for f in FORMS if f.skip_last_stage], ids=form_id)
def test_skip_last_stage_ignores_the_last_stage(form: SIForm) -> None:
    layers, labels = random_layers(6), random_labels(6)
    base = batch_selectivity(layers, labels, 7, form=form, layer_names=NAMES)
    g = torch.Generator().manual_seed(7)
    wild = layers[:3] + [torch.rand(a.shape, generator=g, dtype=a.dtype) * 1e30 for a in layers[3:]]
    assert torch.equal(batch_selectivity(wild, labels, 7, form=form, layer_names=NAMES), base)
    # ... while the same data does move SI when the last stage counts: the check above could fail.
    full = dataclasses.replace(form, skip_last_stage=False)
    assert batch_selectivity(wild, labels, 7, form=full, layer_names=NAMES) != batch_selectivity(
        layers, labels, 7, form=full, layer_names=NAMES
    )
    # "Last" is the highest stage number, wherever its layers are listed, and only that stage goes.
    order = [3, 0, 4, 2, 1]
    shuffled = batch_selectivity([wild[i] for i in order], labels, 7, form=form, layer_names=[NAMES[i] for i in order])
    assert shuffled.item() == pytest.approx(base.item(), rel=1e-14)
    want, _ = reference_with_grad(layers[:3], labels, dataclasses.replace(form, skip_last_stage=False), NAMES[:3])
    assert base.item() == pytest.approx(want, rel=1e-12)
    batched = batched_selectivity([torch.stack([a, w]) for a, w in zip(layers, wild)], torch.stack([labels, labels]), 7, form, NAMES)
    assert batched[0].item() == pytest.approx(base.item(), rel=1e-14) and batched[1].item() == pytest.approx(base.item(), rel=1e-14)


def test_ranadive_preset() -> None:
    form = SIForm.ranadive()
    assert (form.pooling, form.skip_last_stage, form.class_stat, form.eps) == ("stages", True, "sum", 1e-6)
    assert SIForm() == SIForm("layers", False, "mean", 1e-7)
    # Class 0: two samples, class 1: one. Stage 1: activations 1, 1 | 1: means tie (CSI 0), sums 2 vs 1.
    # Stage 2: 0, 0 | 3: sums 0 vs 3. Stage 3 (the last) is left out.
    labels = torch.tensor([0, 0, 1])
    s1 = torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    s3 = torch.tensor([[5.0], [0.0], [9.0]], dtype=torch.float64)
    names = ["stage1.block1", "stage2.block1", "stage3.block1"]
    got = batch_selectivity([s1, s2, s3], labels, 10, form=form, layer_names=names).item()
    want = ((2 - 1) / (3 + 1e-6) + (3 - 0) / (3 + 1e-6)) / 2
    assert got == pytest.approx(want, rel=1e-14)
    assert got != pytest.approx(2 / (3 + 1e-7), rel=1e-10)  # the eps is Ranadive et al.'s, and it shows
    default = batch_selectivity([s1, s2, s3], labels, 10).item()
    assert default == pytest.approx((0 + 3 / (3 + 1e-7) + (9 - 2.5) / (11.5 + 1e-7)) / 3, rel=1e-14)
    batched = batched_selectivity([a.expand(2, -1, -1) for a in (s1, s2, s3)], labels.expand(2, -1), 10, form=form, layer_names=names)
    assert batched.tolist() == pytest.approx([want, want], rel=1e-14)


# ---- batched_selectivity --------------------------------------------------------------------------------
def batched_case(dtype: torch.dtype, dead: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """K = 3 models, each its own batch: different activations and labels (absent classes, a singleton class)."""
    per_model = [random_layers(10 + k, dtype=dtype, dead=dead) for k in range(3)]
    labels = torch.stack([random_labels(10), random_labels(11) % 3, random_labels(12) + 2])  # model 1: classes 0-2 only
    return [torch.stack([m[i] for m in per_model]) for i in range(len(WIDTHS))], labels


@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_batched_equals_per_model(form: SIForm) -> None:
    # No dead units: at a tie the two functions route the gradient differently (amax shares it).
    feats, labels = batched_case(torch.float64, dead=False)
    xs = [f.clone().requires_grad_() for f in feats]
    si = batched_selectivity(xs, labels, 7, form=form, layer_names=NAMES)
    assert si.shape == (3,)
    grads = torch.autograd.grad(si.sum(), xs, allow_unused=True)
    for k in range(3):
        one = [f[k].clone().requires_grad_() for f in feats]
        want = batch_selectivity(one, labels[k], 7, form=form, layer_names=NAMES)
        assert si[k].item() == pytest.approx(want.item(), rel=1e-13, abs=1e-15)
        want_grads = torch.autograd.grad(want, one, allow_unused=True)
        for g, w in zip(grads, want_grads):
            if w is None:
                assert g is None or torch.equal(g[k], torch.zeros_like(g[k]))
            else:
                assert g is not None
                torch.testing.assert_close(g[k], w, rtol=1e-11, atol=1e-14)
    if form.skip_last_stage:
        assert grads[3] is None and grads[4] is None


def test_batched_against_reference_with_dead_units() -> None:
    # The values at a tie agree with the reference too (only the gradient's routing differs there).
    feats, labels = batched_case(torch.float64, dead=True)
    for form in FORMS[::3]:
        si = batched_selectivity(feats, labels, 7, form=form, layer_names=NAMES)
        for k in range(3):
            want, _ = reference_with_grad([f[k] for f in feats], labels[k], form)
            assert si[k].item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_batched_default_is_bitwise_fused(seed: int) -> None:
    feats, labels = batched_case(torch.float32, dead=True)
    g = torch.Generator().manual_seed(seed)
    feats = [f * torch.rand(f.shape, generator=g) for f in feats]
    xs = [f.clone().requires_grad_() for f in feats]
    ref = todays_fused_batch_selectivity(xs, labels, 7)
    ref_grads = torch.autograd.grad(ref.sum(), xs)
    for call in (
        lambda: batched_selectivity(xs, labels, 7),
        lambda: batched_selectivity(xs, labels, 7, SIForm()),
        lambda: batched_selectivity(xs, labels, 7, SIForm(), NAMES, eps=EPS),
    ):
        si = call()
        assert torch.equal(si, ref)
        assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(si.sum(), xs), ref_grads))
    assert torch.equal(batched_selectivity(feats, labels, 7, eps=1e-3), todays_fused_batch_selectivity(feats, labels, 7, 1e-3))


# ---- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "units"}, "pooling must be one of"),
        ({"class_stat": "median"}, "class_stat must be one of"),
        ({"skip_last_stage": "false"}, "skip_last_stage must be True or False"),
        ({"skip_last_stage": 1}, "skip_last_stage must be True or False"),
        ({"eps": -1e-7}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"eps": "1e-7"}, "eps must be"),
    ],
)
def test_form_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SIForm(**kwargs)


@pytest.mark.parametrize("fn", ["single", "batched"])
def test_layer_names_validation(fn: str) -> None:
    layers, labels = random_layers(8), random_labels(8)

    def call(names: list[str] | None, form: SIForm | None = RANADIVE, eps: float | None = None, these: list | None = None) -> torch.Tensor:
        acts = layers if these is None else these
        if fn == "single":
            return batch_selectivity(acts, labels, 7, eps, form=form, layer_names=names)
        return batched_selectivity([a.unsqueeze(0) for a in acts], labels.unsqueeze(0), 7, form, names, eps)

    with pytest.raises(ValueError, match="needs layer_names"):
        call(None)
    with pytest.raises(ValueError, match="needs layer_names"):
        call(None, SIForm(skip_last_stage=True))
    with pytest.raises(ValueError, match="5 layers"):
        call(NAMES[:4])
    with pytest.raises(ValueError, match="not of the form"):
        call([*NAMES[:4], "layer4.0"])
    with pytest.raises(ValueError, match="not of the form"):
        call([*NAMES[:4], "stage3.block2.conv1"])
    with pytest.raises(ValueError, match="duplicates"):
        call([*NAMES[:4], NAMES[0]])
    with pytest.raises(ValueError, match="contradicts"):
        call(NAMES, SIForm.ranadive(), eps=1e-7)
    with pytest.raises(ValueError, match="leaves no layers"):
        call(["stage2.block1", "stage2.block2"], these=layers[:2])
    with pytest.raises(ValueError, match="not of the form"):
        call([*NAMES[:4], "x"], SIForm())  # names given with the default form are still checked
    with pytest.raises(TypeError, match="SIForm"):
        call(NAMES, "ranadive")  # type: ignore[arg-type]
    assert torch.isfinite(call(NAMES, SIForm.ranadive(), eps=1e-6)).all()  # an eps that agrees is fine
    if fn == "batched":
        with pytest.raises(ValueError, match=r"\[K, B, U\]"):
            batched_selectivity(layers, labels.unsqueeze(0), 7)
        with pytest.raises(ValueError, match="needs at least one layer"):
            batched_selectivity([], labels.unsqueeze(0), 7)
