"""Minibatch CKA with the unbiased HSIC (Ranadive et al.'s CKA, via torch_cka).

`torch_cka_reference` transcribes the measure of the torch_cka library R+ imports
(AntixK/PyTorch-Model-Compare, MIT; `CKA._HSIC` and the accumulation in `CKA.compare`): per batch
K = X X^T with a zeroed diagonal, the unbiased HSIC by its ones-vector form, summed over batches,
then HSIC(K, L) / (sqrt HSIC(K, K) sqrt HSIC(L, L)). It is written in torch, the project's code in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.analysis.minibatch_cka_job import FC, minibatch_cka
from trainer.analysis.representation import MinibatchCKA
from trainer.data import load_dataset
from trainer.models import build_model


def torch_cka_reference(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    def hsic(k: torch.Tensor, l_: torch.Tensor) -> float:
        n = k.shape[0]
        ones = torch.ones(n, 1, dtype=torch.float64)
        result = torch.trace(k @ l_)
        result += ((ones.t() @ k @ ones @ ones.t() @ l_ @ ones) / ((n - 1) * (n - 2))).item()
        result -= ((ones.t() @ k @ l_ @ ones) * 2 / (n - 2)).item()
        return (1 / (n * (n - 3)) * result).item()

    m = torch.zeros(3, dtype=torch.float64)
    for x, y in zip(xs, ys):
        xt, yt = torch.from_numpy(x).flatten(1), torch.from_numpy(y).flatten(1)
        k, l_ = xt @ xt.t(), yt @ yt.t()
        k.fill_diagonal_(0.0)
        l_.fill_diagonal_(0.0)
        m += torch.tensor([hsic(k, k), hsic(k, l_), hsic(l_, l_)], dtype=torch.float64)
    return float(m[1] / (m[0].sqrt() * m[2].sqrt()))


def test_matches_torch_cka_with_an_uneven_last_batch() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(150, 5))
    x = np.maximum(z @ rng.normal(size=(5, 4 * 3 * 3)) + rng.normal(size=(150, 36)), 0).reshape(150, 4, 3, 3)
    y = np.maximum(z @ rng.normal(size=(5, 20)) + rng.normal(size=(150, 20)), 0)
    xs, ys = [x[i : i + 64] for i in range(0, 150, 64)], [y[i : i + 64] for i in range(0, 150, 64)]
    acc = MinibatchCKA()
    for a, b in zip(xs, ys):
        acc.add(a, b)
    assert acc.value() == pytest.approx(torch_cka_reference(xs, ys), rel=1e-10)


@pytest.mark.slow
def test_two_networks_layer_by_layer() -> None:
    digits = load_dataset("digits", "./data", torch.device("cpu"))
    torch.manual_seed(0)
    a = build_model("resnet20", 10, 1)
    torch.manual_seed(1)
    b = build_model("resnet20", 10, 1)
    same = minibatch_cka(a, a, digits, 64, torch.device("cpu"))
    assert list(same) == [*a.block_names, FC] and all(v == pytest.approx(1.0, abs=1e-12) for v in same.values())
    got = minibatch_cka(a, b, digits, 64, torch.device("cpu"))
    x = next(iter(digits.test_batches(359)))[0]
    with torch.no_grad():
        ha, hb = a.stem(x), b.stem(x)
        ha, hb = a.blocks[0](ha), b.blocks[0](hb)
    fa, fb = ha.flatten(1).double().numpy(), hb.flatten(1).double().numpy()
    batches = list(range(0, 359, 64))
    want = torch_cka_reference([fa[i : i + 64] for i in batches], [fb[i : i + 64] for i in batches])
    assert got["stage1.block1"] == pytest.approx(want, rel=1e-9)
    assert all(0 < v < 1 for v in got.values())


def test_batch_size_is_a_label_field() -> None:
    from trainer.spec import SpecError, TrialSpec

    assert TrialSpec(cka_batch_size=32).trial_id == TrialSpec().trial_id and TrialSpec().cka_batch_size == 64
    with pytest.raises(SpecError, match="field 'cka_batch_size' is 3; allowed: 4 to 359"):
        TrialSpec(cka_batch_size=3)
