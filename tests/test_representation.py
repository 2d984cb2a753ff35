"""Representation similarity and dimensionality (trainer.analysis.representation) against independent references.

The references below are written from the papers' definitions by other routes than the module:
CKA through HSIC with N x N Gram matrices and the centering matrix H; canonical correlations
through scipy's principal angles; PWCCA through the textbook covariance whitening Sxx^-1/2; PCA
through scikit-learn. "Real" activations are the spatially averaged block outputs of two
randomly initialised ResNet20s (seeds 0 and 1) on the embedded digits test set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
from sklearn.decomposition import PCA

from trainer.analysis.representation import cca, linear_cka, participation_ratio, pcs_for_variance, pwcca_distance


# ---- independent references ---------------------------------------------------------------
def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, HSIC = tr(KHLH)/(n-1)^2."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def reference_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations = cosines of the principal angles between the centered column spaces, descending."""
    return np.sort(np.cos(scipy.linalg.subspace_angles(x - x.mean(0), y - y.mean(0))))[::-1]


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def reference_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018 by covariance whitening: variates Xc Sxx^-1/2 u_i, alpha_i ~ sum_j |<h_i, x_j>|.

    Constant units are dropped first (as the published code does); the weights come from the side
    with fewer units (x on a tie), as in the published code.
    """
    x, y = x[:, x.std(0) > 0], y[:, y.std(0) > 0]
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    wx, wy = _inv_sqrt(sxx), _inv_sqrt(syy)
    u, rho, vt = np.linalg.svd(wx @ sxy @ wy)
    if x.shape[1] <= y.shape[1]:
        variates, units = xc @ wx @ u, xc
    else:
        variates, units = yc @ wy @ vt.T, yc
    variates = variates / np.linalg.norm(variates, axis=0)
    alpha = np.abs(variates.T @ units).sum(axis=1)
    alpha = alpha / alpha.sum()
    return float(1.0 - alpha @ rho)


def reference_pcs(x: np.ndarray, fraction: float) -> int:
    ratios = np.cumsum(PCA(svd_solver="full").fit(x).explained_variance_ratio_)
    return int(np.searchsorted(ratios, fraction)) + 1


# ---- data -----------------------------------------------------------------------------------
def related_pair(
    rng: np.random.Generator, n: int, u1: int, u2: int, shared: int = 6, noise: float = 0.7, relu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Two representations driven by `shared` common latents plus private noise, with uneven unit scales and offsets."""
    z = rng.normal(size=(n, shared))
    x = z @ rng.normal(size=(shared, u1)) + noise * rng.normal(size=(n, u1)) * rng.uniform(0.2, 3.0, size=u1)
    y = z @ rng.normal(size=(shared, u2)) + noise * rng.normal(size=(n, u2)) * rng.uniform(0.2, 3.0, size=u2)
    x, y = x + rng.uniform(-2, 2, size=u1), y + rng.uniform(-2, 2, size=u2)
    if relu:  # nonnegative, nonzero-mean units like a network's after its ReLU
        x, y = np.maximum(x, 0.0), np.maximum(y, 0.0)
    return x, y


@pytest.fixture(scope="module")
def real() -> dict[int, list[np.ndarray]]:
    """Block activations [359, U] (U = 16, 16, 16, 32, ..., 64) of two random-init ResNet20s, per seed."""
    import torch

    from trainer.data import load_dataset
    from trainer.models import build_model

    data = load_dataset("digits", "./data", torch.device("cpu"))
    out = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet20", 10, 1).eval()
        blocks: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for xb, _ in data.test_batches(256):
                _, feats = model(xb, capture=True)
                assert feats is not None
                blocks = [[f] for f in feats] if not blocks else [b + [f] for b, f in zip(blocks, feats)]
        out[seed] = [torch.cat(b).double().numpy() for b in blocks]
    return out


def test_real_activations_include_dead_units(real: dict[int, list[np.ndarray]]) -> None:
    # Block 3 of seed 0 has units that are 0 on every image: the constant-unit handling meets real data.
    assert (real[0][3].std(0) == 0).any()
    assert all(np.isfinite(a).all() for acts in real.values() for a in acts)


# (seed, block) pairs: same block across seeds, different widths, one block with constant (dead) units
REAL_PAIRS = [((0, 0), (1, 0)), ((0, 4), (1, 4)), ((0, 8), (1, 8)), ((0, 2), (0, 6)), ((1, 7), (0, 1)), ((0, 3), (1, 3))]


# ---- linear CKA -----------------------------------------------------------------------------
@pytest.mark.parametrize("n,u1,u2,relu", [(500, 32, 32, False), (500, 16, 48, True), (60, 80, 40, False)])
def test_cka_matches_hsic_reference_random(n: int, u1: int, u2: int, relu: bool) -> None:
    x, y = related_pair(np.random.default_rng(1), n, u1, u2, relu=relu)
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-12)


@pytest.mark.parametrize("a,b", REAL_PAIRS)
def test_cka_matches_hsic_reference_real(real: dict[int, list[np.ndarray]], a: tuple[int, int], b: tuple[int, int]) -> None:
    x, y = real[a[0]][a[1]], real[b[0]][b[1]]
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-12)


def test_cka_invariant_to_rotation_isotropic_scale_and_offset() -> None:
    rng = np.random.default_rng(2)
    x, y = related_pair(rng, 500, 32, 24)
    rot, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    assert linear_cka(x, x @ rot) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x - 3.0) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, y)
    assert 0.05 < base < 0.95
    assert linear_cka(x @ rot * 1e-3 + 100.0, y * 1e4 - 5.0) == pytest.approx(base, abs=1e-12)


def test_cka_not_invariant_to_general_invertible_maps() -> None:
    # What separates CKA from CCA: an anisotropic rescaling changes CKA, never PWCCA.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 32))
    stretched = x * np.geomspace(1.0, 50.0, 32)
    assert linear_cka(x, stretched) < 0.9
    assert pwcca_distance(x, stretched) == pytest.approx(0.0, abs=1e-10)


def test_cka_symmetric_bounded_and_small_for_independent_representations() -> None:
    rng = np.random.default_rng(4)
    small = [linear_cka(rng.normal(size=(500, 32)), rng.normal(size=(500, 32))) for _ in range(3)]
    large = [linear_cka(rng.normal(size=(4000, 32)), rng.normal(size=(4000, 32))) for _ in range(3)]
    assert all(0.0 <= v < 0.15 for v in small + large)
    # For independent isotropic x, y, CKA ~ sqrt(U1 U2) / N: 8x more images, ~8x smaller.
    assert np.mean(large) < np.mean(small) / 4
    x, y = related_pair(rng, 300, 20, 30, relu=True)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-14)
    assert 0.0 <= linear_cka(x, y) <= 1.0


# ---- CCA and PWCCA --------------------------------------------------------------------------
@pytest.mark.parametrize("n,u1,u2", [(500, 32, 32), (500, 12, 40), (500, 40, 12)])
def test_cca_matches_principal_angles_random(n: int, u1: int, u2: int) -> None:
    x, y = related_pair(np.random.default_rng(5), n, u1, u2)
    res = cca(x, y)
    np.testing.assert_allclose(res.rho, reference_rho(x, y), atol=1e-10)
    # The variates are what the correlations say: orthonormal, centered, pairwise correlated by rho.
    k = res.rho.size
    np.testing.assert_allclose(res.x_variates.T @ res.x_variates, np.eye(u1), atol=1e-10)
    np.testing.assert_allclose(res.x_variates.sum(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.abs(res.x_variates[:, :k].T @ res.y_variates[:, :k]), np.diag(res.rho), atol=1e-10)


@pytest.mark.parametrize("a,b", REAL_PAIRS)
def test_cca_matches_principal_angles_real(real: dict[int, list[np.ndarray]], a: tuple[int, int], b: tuple[int, int]) -> None:
    x, y = real[a[0]][a[1]], real[b[0]][b[1]]
    x, y = x[:, x.std(0) > 0], y[:, y.std(0) > 0]  # scipy's orth would keep rounding-level directions of dead units
    np.testing.assert_allclose(cca(x, y).rho, reference_rho(x, y), atol=1e-9)


@pytest.mark.parametrize("n,u1,u2,relu", [(500, 32, 32, False), (500, 32, 32, True), (500, 12, 40, True), (500, 40, 12, True)])
def test_pwcca_matches_reference_random(n: int, u1: int, u2: int, relu: bool) -> None:
    x, y = related_pair(np.random.default_rng(6), n, u1, u2, relu=relu)
    assert pwcca_distance(x, y) == pytest.approx(reference_pwcca(x, y), abs=1e-9)
    assert pwcca_distance(y, x) == pytest.approx(reference_pwcca(y, x), abs=1e-9)


@pytest.mark.parametrize("a,b", REAL_PAIRS)
def test_pwcca_matches_reference_real(real: dict[int, list[np.ndarray]], a: tuple[int, int], b: tuple[int, int]) -> None:
    # (0, 3)/(1, 3) hold dead units: the reference drops them, the module must reach the same value on its own.
    x, y = real[a[0]][a[1]], real[b[0]][b[1]]
    got = pwcca_distance(x, y)
    assert got == pytest.approx(reference_pwcca(x, y), abs=1e-9)
    assert 0.05 < got < 0.95


def test_pwcca_zero_for_identical_and_invertibly_mapped(real: dict[int, list[np.ndarray]]) -> None:
    rng = np.random.default_rng(7)
    x, _ = related_pair(rng, 500, 32, 8, relu=True)
    assert pwcca_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    mix = rng.normal(size=(32, 32))  # invertible with probability 1; condition ~ 1e2
    assert pwcca_distance(x, x @ mix + 4.0) == pytest.approx(0.0, abs=1e-10)
    assert pwcca_distance(x @ mix, x) == pytest.approx(0.0, abs=1e-10)
    act = real[0][5]
    assert pwcca_distance(act, act @ rng.normal(size=(32, 32)) * 1e3) == pytest.approx(0.0, abs=1e-10)


def test_pwcca_bounded_and_large_for_independent_representations() -> None:
    rng = np.random.default_rng(8)
    d = pwcca_distance(rng.normal(size=(500, 32)), rng.normal(size=(500, 32)))
    assert 0.5 < d <= 1.0  # spurious correlations of 32 x 32 random units on 500 images are ~0.1-0.4
    x, y = related_pair(rng, 500, 32, 32)
    assert 0.0 <= pwcca_distance(x, y) < d


def test_pwcca_weights_come_from_x() -> None:
    # x's big unit is the one y shares: weighted by x, the perfect correlation dominates; weighted by y,
    # whose units are all alike in size, it is one of four.
    rng = np.random.default_rng(9)
    a, b, c, d, e, f, g = rng.normal(size=(7, 500))
    x = np.stack([10 * a, b, c, d], axis=1)
    y = np.stack([a, e, f, g], axis=1)
    rho = cca(x, y).rho
    assert rho[0] == pytest.approx(1.0, abs=1e-12) and rho[1] < 0.2
    assert pwcca_distance(x, y) < 0.4
    assert pwcca_distance(y, x) > 0.6
    unweighted = 1.0 - rho.mean()
    assert pwcca_distance(x, y) < unweighted - 0.2


def test_pwcca_wider_x_takes_weights_from_y() -> None:
    # As in the published code: when x has more directions than y, y's variates (which all have a partner) carry the weights.
    x, y = related_pair(np.random.default_rng(10), 500, 48, 16, relu=True)
    assert pwcca_distance(x, y) == pytest.approx(pwcca_distance(y, x), abs=1e-12)
    assert pwcca_distance(x, y) != pytest.approx(1.0 - cca(x, y).rho.mean(), abs=1e-3)


def test_pwcca_rank_deficient_inputs() -> None:
    rng = np.random.default_rng(11)
    x, y = related_pair(rng, 500, 24, 24, relu=True)
    base = pwcca_distance(x, y)
    # Constant (dead) units add no direction and project to nothing; 0.1 leaves rounding residue after centering.
    with_dead = np.concatenate([x, np.zeros((500, 2)), np.full((500, 1), 0.1)], axis=1)
    assert pwcca_distance(with_dead, y) == pytest.approx(base, abs=1e-12)
    assert pwcca_distance(y, with_dead) == pytest.approx(pwcca_distance(y, x), abs=1e-12)
    # Duplicated and linearly dependent units: same column space, same correlations; weights count the copies.
    dup = np.concatenate([x, x[:, :6], x[:, :3] @ rng.normal(size=(3, 4))], axis=1)
    np.testing.assert_allclose(cca(dup, y).rho, cca(x, y).rho, atol=1e-10)
    assert cca(dup, y).x_variates.shape == (500, 24)
    assert 0.0 <= pwcca_distance(dup, y) <= 1.0
    # U >= N: both span the whole centered sample space, so CCA is trivially perfect (documented).
    wide_x, wide_y = rng.normal(size=(40, 64)), rng.normal(size=(40, 50))
    np.testing.assert_allclose(cca(wide_x, wide_y).rho, 1.0, atol=1e-10)
    assert pwcca_distance(wide_x, wide_y) == pytest.approx(0.0, abs=1e-10)
    assert linear_cka(wide_x, wide_y) < 0.95  # CKA is not degenerate there


def test_pwcca_epsilon_drops_weak_directions() -> None:
    rng = np.random.default_rng(12)
    x, y = related_pair(rng, 500, 16, 16)
    xc = x - x.mean(0)
    lead_var = np.linalg.svd(xc, compute_uv=False)[0] ** 2
    # One extra unit whose variance is 1e-8 of x's leading direction: above the default epsilon (1e-10), below 1e-6.
    weak = np.concatenate([x, np.sqrt(1e-8 * lead_var / 500) * rng.normal(size=(500, 1))], axis=1)
    assert cca(weak, y, epsilon=0.0).x_variates.shape[1] == 17
    assert cca(weak, y).x_variates.shape[1] == 17
    assert cca(weak, y, epsilon=1e-6).x_variates.shape[1] == 16
    assert pwcca_distance(weak, y, epsilon=1e-6) == pytest.approx(pwcca_distance(x, y), abs=1e-6)


# ---- zero variance, float32, invalid input -------------------------------------------------
def test_zero_variance_representations() -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=(100, 8))
    flat = np.full((100, 5), 0.3)
    assert np.isnan(linear_cka(x, flat)) and np.isnan(linear_cka(flat, x))
    assert np.isnan(pwcca_distance(x, flat)) and np.isnan(pwcca_distance(flat, flat))
    assert cca(x, flat).rho.size == 0
    assert pcs_for_variance(flat) == 0 and pcs_for_variance(np.zeros((10, 3)), 1.0) == 0
    assert participation_ratio(flat) == 0.0


def test_float32_input_is_computed_in_float64() -> None:
    x, y = related_pair(np.random.default_rng(14), 500, 32, 32, relu=True)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    assert linear_cka(x32, y32) == linear_cka(x64, y64)
    assert pwcca_distance(x32, y32) == pwcca_distance(x64, y64)
    assert participation_ratio(x32) == participation_ratio(x64)


PAIR_FUNCS: list[Callable[[np.ndarray, np.ndarray], object]] = [linear_cka, pwcca_distance, cca]
SINGLE_FUNCS: list[Callable[[np.ndarray], object]] = [pcs_for_variance, participation_ratio]
GOOD = np.random.default_rng(15).normal(size=(20, 4))
BAD = [
    (np.ones(20), "2-D"),
    (np.ones((20, 4, 2)), "2-D"),
    (np.where(np.eye(20, 4) > 0, np.nan, 1.0), "non-finite"),
    (np.where(np.eye(20, 4) > 0, np.inf, 1.0), "non-finite"),
    (np.ones((1, 4)), "at least 2 images"),
    (np.ones((20, 0)), "at least 1 unit"),
    (np.ones((20, 4), dtype=complex), "real numbers"),
]


@pytest.mark.parametrize("func", PAIR_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad,message", BAD)
def test_pair_functions_reject_bad_input(func: Callable[[np.ndarray, np.ndarray], object], bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        func(bad, GOOD)
    with pytest.raises(ValueError, match=message):
        func(GOOD, bad)


@pytest.mark.parametrize("func", PAIR_FUNCS, ids=lambda f: f.__name__)
def test_pair_functions_reject_mismatched_images(func: Callable[[np.ndarray, np.ndarray], object]) -> None:
    with pytest.raises(ValueError, match="same images"):
        func(GOOD, GOOD[:19])


@pytest.mark.parametrize("func", SINGLE_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad,message", BAD)
def test_single_functions_reject_bad_input(func: Callable[[np.ndarray], object], bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        func(bad)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0000001, float("nan")])
def test_pcs_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        pcs_for_variance(GOOD, fraction)


@pytest.mark.parametrize("epsilon", [-1e-12, 1.0, float("nan")])
def test_cca_rejects_bad_epsilon(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        cca(GOOD, GOOD, epsilon)
    with pytest.raises(ValueError, match="epsilon"):
        pwcca_distance(GOOD, GOOD, epsilon)


# ---- dimensionality -------------------------------------------------------------------------
def test_pcs_matches_sklearn_pca_random() -> None:
    rng = np.random.default_rng(16)
    rot, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    x = rng.normal(size=(500, 32)) * np.geomspace(10.0, 0.1, 32) @ rot + 5.0
    for fraction in (0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        assert pcs_for_variance(x, fraction) == reference_pcs(x, fraction), fraction
    assert pcs_for_variance(x) == pcs_for_variance(x, 0.95)


@pytest.mark.parametrize("seed,block", [(0, 0), (0, 3), (1, 5), (1, 8)])
def test_pcs_matches_sklearn_pca_real(real: dict[int, list[np.ndarray]], seed: int, block: int) -> None:
    x = real[seed][block]
    for fraction in (0.5, 0.9, 0.95, 0.99):
        assert pcs_for_variance(x, fraction) == reference_pcs(x, fraction), fraction


@pytest.mark.parametrize("k", [1, 3, 7])
def test_pcs_counts_the_directions_behind_the_units(k: int) -> None:
    rng = np.random.default_rng(17)
    x = rng.normal(size=(500, k)) @ rng.normal(size=(k, 32)) + 1e-6 * rng.normal(size=(500, 32))
    assert pcs_for_variance(x, 0.95) <= k
    assert pcs_for_variance(x, 0.999999) == k
    assert pcs_for_variance(x, 1.0) <= 32
    # Noise far above rounding (each of its components ~1e-9 of the variance, not ~1e-15) counts at fraction 1.
    noisy = x + 1e-4 * rng.normal(size=(500, 32))
    assert pcs_for_variance(noisy, 0.999999) == k
    assert pcs_for_variance(noisy, 1.0) == 32


def test_pcs_rank_deficient_duplicated_and_fraction_one() -> None:
    rng = np.random.default_rng(18)
    a = rng.normal(size=(300, 8)) * np.geomspace(4.0, 0.5, 8)
    x = np.concatenate([a, a[:, :5], a[:, :3] @ rng.normal(size=(3, 6)), np.full((300, 2), 0.7)], axis=1)  # rank 8 of 29
    assert pcs_for_variance(x, 1.0) == 8
    assert pcs_for_variance(a, 1.0) == 8
    # Duplicating every unit doubles every PCA eigenvalue: the explained ratios, hence the counts, stay.
    for fraction in (0.5, 0.9, 0.95, 1.0):
        assert pcs_for_variance(np.concatenate([a, a], axis=1), fraction) == pcs_for_variance(a, fraction)
    assert pcs_for_variance(a, 1e-9) == 1


def test_participation_ratio() -> None:
    rng = np.random.default_rng(19)
    # 5 orthonormal centered directions of equal variance, spread over 20 units by orthonormal loadings: exactly 5.
    z = rng.normal(size=(200, 5))
    q, _ = np.linalg.qr(z - z.mean(0))
    loadings, _ = np.linalg.qr(rng.normal(size=(20, 5)))
    assert participation_ratio(q @ loadings.T + 1.0) == pytest.approx(5.0, abs=1e-9)
    x = rng.normal(size=(300, 16)) * np.geomspace(3.0, 0.2, 16)
    ev = PCA(svd_solver="full").fit(x).explained_variance_
    assert participation_ratio(x) == pytest.approx(ev.sum() ** 2 / np.sum(ev**2), rel=1e-10)
