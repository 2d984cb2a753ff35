"""Class selectivity index (docs/science.md) and the sign of the regularizer (docs/science.md)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import trainer.loop as loop
from trainer.models import TrackedNet, build_model, resnet20
from trainer.selectivity import ClassMeanAccumulator, batch_selectivity, selectivity_index

EPS = 1e-7


def reference_csi(acts: np.ndarray, labels: np.ndarray, num_classes: int, eps: float = EPS) -> np.ndarray:
    """The CSI definition (docs/science.md) written with plain loops, independent of the tensor code."""
    n, units = acts.shape
    out = np.zeros(units)
    present = [c for c in range(num_classes) if any(labels[i] == c for i in range(n))]
    for u in range(units):
        means = []
        for c in present:
            vals = [float(acts[i, u]) for i in range(n) if labels[i] == c]
            means.append(sum(vals) / len(vals))
        mu_max = max(means)
        k = means.index(mu_max)
        others = means[:k] + means[k + 1 :]
        mu_rest = sum(others) / len(others)
        out[u] = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return out


# ---- selectivity_index: hand-worked values ---------------------------------------------------
def test_hand_worked_three_classes() -> None:
    acts = torch.tensor(
        [
            # unit0 unit1 unit2
            [2.0, 1.0, 0.0],  # class 0
            [4.0, 1.0, 0.0],  # class 0
            [1.0, 1.0, 0.0],  # class 1
            [0.0, 1.0, 6.0],  # class 2
        ]
    )
    labels = torch.tensor([0, 0, 1, 2])
    csi = selectivity_index(acts, labels, num_classes=3)
    # unit0: mu = (2+4)/2 = 3, 1, 0 -> mu_max 3, mu_rest (1+0)/2 = 0.5 -> 2.5 / 3.5 = 0.7142857
    # unit1: mu = 1, 1, 1            -> (1-1)/(1+1) = 0
    # unit2: mu = 0, 0, 6 -> mu_max 6, mu_rest 0 -> 6 / (6 + eps) = 1 - 1.7e-8
    expected = [2.5 / (3.5 + EPS), 0.0, 6.0 / (6.0 + EPS)]
    assert csi.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert csi[0].item() == pytest.approx(5 / 7, rel=1e-6)


def test_hand_worked_two_classes_true_means() -> None:
    # class 0 has one sample, class 1 two: class means must be sum/count, not per-sample.
    acts = torch.tensor([[3.0], [1.0], [2.0]])
    labels = torch.tensor([0, 1, 1])
    # mu_0 = 3, mu_1 = (1+2)/2 = 1.5 -> (3-1.5)/(3+1.5) = 1/3
    assert selectivity_index(acts, labels, 2).item() == pytest.approx(1 / 3, rel=1e-6)


def test_absent_classes_are_left_out() -> None:
    acts = torch.tensor([[2.0], [4.0], [1.0], [0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    # Present: mu = 3, 1, 0 -> 2.5/3.5. Had the 7 absent classes counted as zeros:
    # mu_rest = (1+0+7*0)/9 = 0.111 -> (3-0.111)/(3+0.111) = 0.929.
    few = selectivity_index(acts, labels, num_classes=3)
    many = selectivity_index(acts, labels, num_classes=10)
    assert many.item() == pytest.approx(2.5 / 3.5, rel=1e-6)
    assert torch.equal(few, many)
    # Present classes need not be the first ones.
    assert selectivity_index(acts, labels + 5, num_classes=10).item() == pytest.approx(2.5 / 3.5, rel=1e-6)


def test_dead_units_are_zero() -> None:
    acts = torch.zeros(8, 5)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    csi = selectivity_index(acts, labels, 4)
    assert torch.equal(csi, torch.zeros(5))
    si = batch_selectivity([acts.requires_grad_()], labels, 4)
    assert si.item() == 0.0
    si.backward()
    assert torch.isfinite(acts.grad).all()


@pytest.mark.parametrize("fn", ["index", "batch"])
def test_one_class_present_raises(fn: str) -> None:
    acts = torch.rand(6, 3)
    labels = torch.full((6,), 4)
    with pytest.raises(ValueError, match="two classes"):
        if fn == "index":
            selectivity_index(acts, labels, 10)
        else:
            batch_selectivity([acts], labels, 10)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        selectivity_index(torch.rand(4, 3, 2), torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError):
        selectivity_index(torch.rand(4, 3), torch.tensor([0, 1, 0]), 2)
    with pytest.raises(ValueError):
        batch_selectivity([], torch.tensor([0, 1]), 2)


# ---- against the reference, on random data --------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, units, classes = 40, 7, 6
    labels = rng.integers(0, classes - 1 - seed % 2, n)  # some seeds leave the top classes absent
    labels[:2] = [0, 1]  # at least two classes present
    acts = np.maximum(rng.normal(size=(n, units)), 0.0)  # post-ReLU-like, with zeros
    acts[:, 0] = 0.0  # a dead unit
    got = selectivity_index(torch.tensor(acts), torch.tensor(labels), classes)
    np.testing.assert_allclose(got.numpy(), reference_csi(acts, labels, classes), rtol=1e-10, atol=1e-12)
    got32 = selectivity_index(torch.tensor(acts, dtype=torch.float32), torch.tensor(labels, dtype=torch.int32), classes)
    np.testing.assert_allclose(got32.numpy(), reference_csi(acts, labels, classes), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_range_zero_one_for_nonnegative(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(256, 50, generator=g)) * torch.rand(1, 50, generator=g) * 10
    acts[:, :5] *= torch.rand(256, 5, generator=g) < 0.02  # very sparse units: near-1 CSI
    labels = torch.randint(0, 10, (256,), generator=g)
    csi = selectivity_index(acts, labels, 10)
    assert csi.min() >= 0 and csi.max() <= 1
    assert csi.max() > 0.5  # the sparse units really are selective, so the upper bound was exercised


def test_evaluation_accumulator_equals_whole_set() -> None:
    """Class sums accumulated over batches give the CSI of the whole set at once (docs/science.md)."""
    g = torch.Generator().manual_seed(0)
    acts = [torch.relu(torch.randn(90, u, generator=g)) for u in (3, 5)]
    labels = torch.randint(0, 4, (90,), generator=g)
    acc = ClassMeanAccumulator(4)
    for i in range(0, 90, 32):  # ragged last batch
        acc.add([a[i : i + 32] for a in acts], labels[i : i + 32])
    for got, a in zip(acc.result(), acts):
        ref = reference_csi(a.double().numpy(), labels.numpy(), 4)
        np.testing.assert_allclose(got.csi.numpy(), ref, rtol=1e-9)
        means = [a[labels == c].double().mean(0) for c in range(4)]
        stacked = torch.stack(means)
        assert torch.equal(got.top_class, stacked.argmax(0))
        np.testing.assert_allclose(got.mu_max.numpy(), stacked.max(0).values.numpy(), rtol=1e-12)


# ---- batch_selectivity --------------------------------------------------------------------------
def test_batch_selectivity_is_mean_over_layers_of_unit_means() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (32,), generator=g)
    layers = [torch.relu(torch.randn(32, u, generator=g)) for u in (2, 9, 30)]
    per_layer = [reference_csi(a.double().numpy(), labels.numpy(), 5).mean() for a in layers]
    expected = sum(per_layer) / 3  # layers weigh equally, not units
    by_units = np.concatenate([reference_csi(a.double().numpy(), labels.numpy(), 5) for a in layers]).mean()
    assert abs(expected - by_units) > 1e-3  # the two averages really differ on this data
    assert batch_selectivity(layers, labels, 5).item() == pytest.approx(expected, rel=1e-5)


def test_batch_selectivity_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    # Strictly positive, well-separated values: no ties in the max, so CSI is smooth here.
    layers = [
        (torch.rand(8, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_(),
        (torch.rand(8, 4, generator=g, dtype=torch.float64) + 0.5).requires_grad_(),
    ]
    si = batch_selectivity(layers, labels, num_classes=4)
    si.backward()
    for a in layers:
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a, b: batch_selectivity([a, b], labels, 4), tuple(layers), eps=1e-6, atol=1e-6)
    # One central difference by hand: unit 0 of layer 0, sample 0.
    a, b = (t.detach().clone() for t in layers)
    h = 1e-6
    a_up, a_down = a.clone(), a.clone()
    a_up[0, 0] += h
    a_down[0, 0] -= h
    numeric = (batch_selectivity([a_up, b], labels, 4) - batch_selectivity([a_down, b], labels, 4)).item() / (2 * h)
    assert layers[0].grad[0, 0].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


# ---- the regularizer in training ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_setup() -> tuple[TrackedNet, list, tuple[torch.Tensor, torch.Tensor]]:
    from trainer.data import load_dataset

    data = load_dataset("digits", "/nonexistent-data-root", torch.device("cpu"))
    torch.manual_seed(0)
    model = resnet20(10, 1)
    batches = list(data.train_batches(0, 0, 64, augment=False))[:6]
    test = next(iter(data.test_batches(10_000)))
    return model, batches, test


def _trained_selectivity(setup, alpha: float) -> float:
    base, batches, (x, y) = setup
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stats = loop.train_epoch(model, opt, batches, alpha, 10, torch.device("cpu"))
    assert stats.steps == len(batches)
    assert (stats.selectivity is None) == (alpha == 0)
    model.eval()
    with torch.no_grad():
        _, feats = model(x, capture=True)
    return batch_selectivity(feats, y, 10).item()


@pytest.mark.slow
def test_regularizer_sign(digits_setup) -> None:
    """Same start, same batches: alpha < 0 lowers selectivity, alpha > 0 raises it (docs/science.md)."""
    down = _trained_selectivity(digits_setup, -10.0)
    plain = _trained_selectivity(digits_setup, 0.0)
    up = _trained_selectivity(digits_setup, 10.0)
    # Measured: -10 -> 0.138, 0 -> 0.174, +10 -> 0.211.
    assert down < plain - 0.01
    assert up > plain + 0.01


def test_loss_is_ce_minus_alpha_times_si(digits_setup) -> None:
    base, batches, _ = digits_setup
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights do not move
    stats = loop.train_epoch(model, opt, batches[:2], -3.0, 10, torch.device("cpu"))
    assert stats.loss == pytest.approx(stats.ce + 3.0 * stats.selectivity, rel=1e-6)  # float32 loss


def test_alpha_zero_never_captures(digits_setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """At alpha = 0 the regularizer costs nothing: no capture, no SI_batch (docs/science.md)."""
    base, batches, _ = digits_setup
    captures: list[bool] = []
    calls: list[int] = []
    forward = TrackedNet.forward

    def spy_forward(self, x, capture=False):
        captures.append(capture)
        return forward(self, x, capture=capture)

    def spy_si(*args, **kwargs):
        calls.append(1)
        return batch_selectivity(*args, **kwargs)

    monkeypatch.setattr(TrackedNet, "forward", spy_forward)
    monkeypatch.setattr(loop, "batch_selectivity", spy_si)
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loop.train_epoch(model, opt, batches[:2], 0.0, 10, torch.device("cpu"))
    assert captures == [False, False] and calls == []
    # The spies work: with the regularizer on, both see every step.
    loop.train_epoch(model, opt, batches[:2], -1.0, 10, torch.device("cpu"))
    assert captures[2:] == [True, True] and len(calls) == 2


def test_training_tolerates_a_batch_with_one_class() -> None:
    """A batch holding a single class (tiny batches; images skipped) has no SI: that step trains on CE alone."""
    from trainer.selectivity import TooFewClasses, batched_selectivity

    g = torch.Generator().manual_seed(0)
    feats = [torch.rand(3, 6, 4, generator=g, requires_grad=True), torch.rand(3, 6, 5, generator=g, requires_grad=True)]
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2]])
    with pytest.raises(TooFewClasses):
        batched_selectivity(feats, labels, 3)
    lenient = batched_selectivity(feats, labels, 3, strict=False)
    assert lenient[1] == 0
    for k in (0, 2):  # the other models: exactly their own values
        alone = batched_selectivity([f[k : k + 1] for f in feats], labels[k : k + 1], 3)
        assert torch.equal(lenient[k : k + 1], alone)
    lenient.sum().backward()
    assert all(torch.isfinite(f.grad).all() for f in feats) and all((f.grad[1] == 0).all() for f in feats)

    model = build_model("resnet20", 3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.zeros(4, dtype=torch.long)
    stats = loop.train_epoch(model, opt, [(x, y)], -5.0, 3, torch.device("cpu"))
    assert stats.steps == 1 and stats.selectivity == 0.0
