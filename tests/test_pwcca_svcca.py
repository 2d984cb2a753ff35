"""The svcca-compatible PWCCA distance (trainer.analysis.representation.pwcca_distance_svcca).

`svcca_reference` is a small transcription of google/svcca's `cca_core.get_cca_similarity` and
`pwcca.compute_pwcca` (Apache 2.0, Google 2018; https://github.com/google/svcca), kept to the steps
that make the number, in svcca's layout (neurons x datapoints), including its else-branch as
published (`acts1` indexed with `y_idxs`). On equal widths with every unit kept, svcca takes the
if-branch, so it is the authority there; the else-branch is checked by symmetry instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.analysis.representation import pwcca_distance, pwcca_distance_svcca


def svcca_reference(acts1: np.ndarray, acts2: np.ndarray, epsilon: float, fixed: bool = False) -> float:
    """1 - svcca's PWCCA mean for acts [neurons, datapoints] (google/svcca, transcribed); `fixed`:
    its else-branch projects acts2 (not acts1) with y's mask."""
    numx = acts1.shape[0]
    covariance = np.cov(acts1, acts2)
    sxx, sxy = covariance[:numx, :numx], covariance[:numx, numx:]
    syy = covariance[numx:, numx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    x_idxs, y_idxs = np.abs(np.diagonal(sxx)) >= epsilon, np.abs(np.diagonal(syy)) >= epsilon
    sxx, sxy, syy = sxx[x_idxs][:, x_idxs], sxy[x_idxs][:, y_idxs], syy[y_idxs][:, y_idxs]
    sxx = sxx + epsilon * np.eye(sxx.shape[0])
    syy = syy + epsilon * np.eye(syy.shape[0])

    def sqrtm(a: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(a)
        return np.dot(v, np.dot(np.diag(np.sqrt(w)), np.conj(v).T))

    u, s, v = np.linalg.svd(np.dot(sqrtm(np.linalg.pinv(sxx)), np.dot(sxy, sqrtm(np.linalg.pinv(syy)))))
    s = np.abs(s)
    means1, means2 = acts1.mean(axis=1, keepdims=True), acts2.mean(axis=1, keepdims=True)
    if np.sum(x_idxs) <= np.sum(y_idxs):
        dirns = np.dot(u.T, acts1[x_idxs] - means1[x_idxs]) + means1[x_idxs]
        acts, idxs = acts1, x_idxs
    else:  # as published: acts1 with y's mask (unless fixed)
        dirns = np.dot(v, (acts2 if fixed else acts1)[y_idxs] - means2[y_idxs]) + means2[y_idxs]
        acts, idxs = acts2, y_idxs
    p, _ = np.linalg.qr(dirns.T)
    weights = np.sum(np.abs(np.dot(p.T, acts[idxs].T)), axis=1)
    weights = weights / np.sum(weights)
    return 1.0 - float(np.sum(weights * s))


def relu_pair(seed: int, n: int, u: int, shared: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = np.maximum(z @ rng.normal(size=(shared, u)) + 0.7 * rng.normal(size=(n, u)) + rng.uniform(-1, 1, u), 0)
    y = np.maximum(z @ rng.normal(size=(shared, u)) + 0.7 * rng.normal(size=(n, u)) + rng.uniform(-1, 1, u), 0)
    return x, y


@pytest.mark.parametrize("seed,n,u", [(0, 200, 8), (1, 300, 16), (2, 120, 32)])
@pytest.mark.parametrize("epsilon", [0.0, 1e-10])
def test_matches_svcca_on_equal_widths(seed: int, n: int, u: int, epsilon: float) -> None:
    x, y = relu_pair(seed, n, u)
    want = svcca_reference(x.T, y.T, epsilon)
    assert pwcca_distance_svcca(x, y, epsilon) == pytest.approx(want, abs=1e-9)


def test_differs_from_morcos_formula() -> None:
    x, y = relu_pair(3, 300, 16)
    assert abs(pwcca_distance_svcca(x, y) - pwcca_distance(x, y)) > 0.01


def test_else_branch_uses_y_units() -> None:
    """y with a constant unit keeps fewer units: the weights come from y's units (svcca projects x's
    units with y's mask there). Not x, y swapped: svcca adds the unit means back after projecting, so
    its number depends on the signs the SVD gives the directions, which differ between the two orders."""
    x, y = relu_pair(4, 250, 12)
    y[:, 3] = 0.5  # constant: dropped by epsilon
    got = pwcca_distance_svcca(x, y, 1e-10)
    assert got == pytest.approx(svcca_reference(x.T, y.T, 1e-10, fixed=True), abs=1e-9)
    assert got != pytest.approx(svcca_reference(x.T, y.T, 1e-10), abs=1e-6)  # the published else-branch shifts the weights
    with pytest.raises(IndexError):  # and fails outright when the widths differ
        svcca_reference(x.T, y[:, :8].T, 1e-10)


def test_identical_is_zero_and_constant_is_nan() -> None:
    x, _ = relu_pair(5, 200, 10)
    assert pwcca_distance_svcca(x, x) == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(pwcca_distance_svcca(np.ones((50, 4)), x[:50]))
