"""Representation similarity and dimensionality: do two networks represent the test set alike?

The papers ask whether selectivity regularization changes *what* a layer represents or only the
basis it is written in. Leavitt & Morcos (ICLR 2021) compare regularized with unregularized
networks by PWCCA and relate selectivity to the number of principal components a layer needs;
Ranadive et al. (TMLR 2023) use linear CKA. This module holds those measures as pure functions of
activation matrices, numpy in and numbers out, always computed in float64.

An activation matrix is [N, U]: N test images (rows, the same images in the same order for both
arguments), U units of one layer (a unit = one channel, spatially averaged). Every measure centers
the columns first (subtracts each unit's mean over the images).

Linear CKA (Kornblith, Norouzi, Lee & Hinton, ICML 2019, "Similarity of neural network
representations revisited"), with X, Y centered:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

This equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with Gram matrices K = X X^T, L = Y Y^T,
HSIC(K, L) = tr(K H L H) / (N - 1)^2 and H = I - 11^T / N, because tr(X X^T Y Y^T) = ||Y^T X||_F^2;
the feature-space form costs O(N U^2) instead of O(N^2 U). It is invariant to orthogonal maps,
isotropic scaling and offsets, not to general invertible maps, and lies in [0, 1].

CCA (Hotelling 1936): canonical correlations rho_1 >= rho_2 >= ... are the cosines of the
principal angles between the column spaces of the centered X and Y. They are computed as the
singular values of Qx^T Qy, with Qx, Qy orthonormal bases of those spaces from an SVD (Bjorck &
Golub 1973): no covariance matrix is inverted, so the conditioning is that of X, not of X^T X.

PWCCA (Morcos, Raghu & Bengio, NeurIPS 2018, "Insights on representational similarity in neural
networks with canonical correlation"):

    alpha~_i = sum_j |<h_i, x_j>|,    alpha = alpha~ / sum_i alpha~_i,
    PWCCA distance d(X, Y) = 1 - sum_i alpha_i rho_i

where h_i is the i-th canonical variate of X (unit length, over the N images) and x_j the j-th
centered unit of X: CCA directions that account for much of X's units count more. The measure is
asymmetric; the weights come from the first argument, as in the authors' published code, which
switches to Y only when Y has fewer (retained) directions than X, so that every weighted direction
has a partner. Directions of either representation whose variance is at most `epsilon` times that of
its leading principal direction are dropped before CCA (constant or duplicated units,
U >= N); see `cca`. The canonical correlations agree with that code's; its weights do not follow
the formula above (it orthonormalises u_i^T X rather than the whitened variates u_i^T Sxx^-1/2 X,
and adds the unit means back before projecting uncentered units), so on ReLU activations its
distances come out lower (by 0.07-0.24 on the digits ResNet20's blocks); this module follows the paper.

Dimensionality (used with selectivity in the follow-up to Leavitt & Morcos): the number of
principal components of the centered X needed to explain a fraction (e.g. 0.95) of its total
variance, and the participation ratio (sum lambda)^2 / sum lambda^2 of the PCA eigenvalues
lambda (Gao et al. 2017, "A theory of multineuronal dimensionality, dynamics and measurement").

Zero variance: a representation whose every unit is constant over the images has no direction to
compare, so CKA and PWCCA are NaN; its dimensionality is 0 (both measures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Directions whose variance is at most this fraction of the leading direction's are dropped before
# CCA. Activations come from float32 networks (relative resolution ~6e-8, so variance ratios below
# ~1e-14 are rounding); 1e-10 sits above that noise and far below any direction that matters.
DEFAULT_EPSILON = 1e-10

# A unit whose centered values are this small relative to its raw values is constant up to the
# rounding of its mean; its residue is zeroed so that the scale-free measures do not read it as signal.
_CONSTANT_RTOL = 1e-10


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlations and variates of two centered representations.

    rho: [K] canonical correlations, descending, in [0, 1]; K = min(rank_x, rank_y).
    x_variates: [N, rank_x] canonical variates of x, orthonormal columns (unit length over the
        images, zero mean); column i < K pairs with column i of y_variates, the rest have rho = 0.
    y_variates: [N, rank_y] the same for y.
    """

    rho: np.ndarray
    x_variates: np.ndarray
    y_variates: np.ndarray


def _activations(x: np.ndarray, name: str) -> np.ndarray:
    """x as a float64 [N, U] copy; ValueError for anything the measures cannot take."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N images, U units] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    n, u = arr.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 images (rows) to have a variance, got {n}")
    if u < 1:
        raise ValueError(f"{name} needs at least 1 unit (column), got shape {arr.shape}")
    out = arr.astype(np.float64)  # always a copy: centering works in place
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf)")
    return out


def _activation_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _activations(x, "x"), _activations(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"x and y must hold the same images (rows): x has {xa.shape[0]}, y has {ya.shape[0]}")
    return xa, ya


def _centered(x: np.ndarray) -> np.ndarray:
    """Subtract each unit's mean (in place) and zero the rounding residue of constant units."""
    raw_norm = np.linalg.norm(x, axis=0)
    x -= x.mean(axis=0)
    x[:, np.linalg.norm(x, axis=0) <= _CONSTANT_RTOL * raw_norm] = 0.0
    return x


def _principal_basis(xc: np.ndarray, epsilon: float) -> np.ndarray:
    """Orthonormal basis [N, r] of the column space of centered xc, without its negligible directions.

    Even at epsilon = 0 directions at numpy's matrix_rank tolerance are dropped: they are rounding
    noise, and CCA, being scale-free, would give them as much say as real directions.
    """
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return u[:, :0]
    rtol = max(math.sqrt(epsilon), max(xc.shape) * np.finfo(np.float64).eps)
    return u[:, s > rtol * s[0]]


def _cca_centered(xc: np.ndarray, yc: np.ndarray, epsilon: float) -> CCAResult:
    qx, qy = _principal_basis(xc, epsilon), _principal_basis(yc, epsilon)
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return CCAResult(rho=np.zeros(0), x_variates=qx, y_variates=qy)
    a, rho, bt = np.linalg.svd(qx.T @ qy, full_matrices=True)
    # Rounding can push a cosine a hair past 1; correlations live in [0, 1].
    return CCAResult(rho=np.clip(rho, 0.0, 1.0), x_variates=qx @ a, y_variates=qy @ bt.T)


def _check_epsilon(epsilon: float) -> None:
    if not (math.isfinite(epsilon) and 0.0 <= epsilon < 1.0):
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between x [N, U1] and y [N, U2] (rows = the same images): 1 = same up to rotation and scale.

    NaN when either representation has zero variance (every unit constant): the formula is 0/0
    and no value would be honest.
    """
    xc, yc = (_centered(a) for a in _activation_pair(x, y))
    x_norm, y_norm = np.linalg.norm(xc), np.linalg.norm(yc)
    if x_norm == 0.0 or y_norm == 0.0:
        return float("nan")
    # CKA is scale-free; unit Frobenius norms keep the fourth powers below from overflowing.
    xc /= x_norm
    yc /= y_norm
    cross = float(np.linalg.norm(yc.T @ xc)) ** 2
    cka = cross / float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    # Cauchy-Schwarz bounds it by 1; rounding can overshoot by an ulp.
    return min(cka, 1.0)


def cca(x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> CCAResult:
    """Canonical correlations and variates of x [N, U1] and y [N, U2] (rows = the same images).

    Directions of either centered representation whose variance is at most `epsilon` times its
    leading principal direction's are dropped first, so rank-deficient inputs (duplicated or
    constant units, U >= N) are handled; the ranks are the variates' column counts. When a
    representation spans the whole centered sample space (rank N - 1, possible once U >= N - 1),
    every canonical correlation with it is 1: CCA needs N well above U to mean anything.
    """
    _check_epsilon(epsilon)
    xc, yc = (_centered(a) for a in _activation_pair(x, y))
    return _cca_centered(xc, yc, epsilon)


def pwcca_distance(x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> float:
    """PWCCA distance 1 - sum_i alpha_i rho_i between x [N, U1] and y [N, U2]: 0 = same up to an invertible linear map.

    The weights alpha_i are the summed absolute projections of x's centered units on x's unit-length
    canonical variates, normalised to sum to 1. If x has more retained directions than y (see
    `cca` for `epsilon`), they come from y instead, as in the published code: only then does every
    weighted variate have a canonical partner. Identical, or invertibly mapped, representations
    give 0; the result lies in [0, 1]. NaN when either representation has zero variance.

    Where some canonical correlations tie, the variates within the tie are not unique and neither
    are their weights, so the distance is not uniquely defined either (unless all correlations are
    equal, e.g. all 1). Activations of real networks do not tie in practice.
    """
    _check_epsilon(epsilon)
    xc, yc = (_centered(a) for a in _activation_pair(x, y))
    res = _cca_centered(xc, yc, epsilon)
    if res.rho.size == 0:
        return float("nan")
    if res.x_variates.shape[1] <= res.y_variates.shape[1]:
        variates, units = res.x_variates, xc
    else:
        variates, units = res.y_variates, yc
    weights = np.abs(variates.T @ units).sum(axis=1)  # [K]: the side's K variates all pair with the other side
    alpha = weights / weights.sum()
    distance = 1.0 - float(alpha @ res.rho)
    return float(np.clip(distance, 0.0, 1.0))


def pwcca_distance_svcca(x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> float:
    """PWCCA distance 1 - sum_i alpha_i rho_i as google/svcca's `pwcca.compute_pwcca` computes it
    (the code Leavitt & Morcos's co-author published), x [N, U1], y [N, U2], with its else-branch fixed.

    svcca's algorithm: covariances scaled by their largest entry; units whose scaled variance is
    below `epsilon` dropped; epsilon added to the diagonals; CCA by the SVD of Sxx^-1/2 Sxy Syy^-1/2
    (pseudo-inverses, square roots by eigendecomposition); the side with fewer kept units gives the
    weights: its directions u_i^T (X - mean) + mean (in the whitened basis, the mean added back)
    are orthonormalised (QR), and each weight is the summed absolute projection of the *uncentered*
    units on one of them. svcca's else-branch (y has fewer kept units) projects x's units with y's
    mask (an IndexError when the widths differ, silently shifted weights otherwise); here it uses
    y's units, so the result is the if-branch's with x and y swapped.

    This is not Morcos et al.'s formula (`pwcca_distance`): on ReLU activations it gives lower
    distances, and the two can disagree on which of two pairs is closer (docs/analysis.md). NaN
    when either representation has zero variance.
    """
    _check_epsilon(epsilon)
    xa, ya = _activation_pair(x, y)
    n = xa.shape[0]
    mx, my = xa.mean(axis=0), ya.mean(axis=0)
    xc, yc = xa - mx, ya - my
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    xmax, ymax = np.abs(sxx).max(), np.abs(syy).max()
    if xmax == 0.0 or ymax == 0.0:
        return float("nan")
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / math.sqrt(xmax * ymax)
    kx, ky = np.abs(np.diagonal(sxx)) >= epsilon, np.abs(np.diagonal(syy)) >= epsilon
    sxx, syy, sxy = sxx[np.ix_(kx, kx)], syy[np.ix_(ky, ky)], sxy[np.ix_(kx, ky)]
    wx = _inverse_sqrt(sxx + epsilon * np.eye(sxx.shape[0]))
    wy = _inverse_sqrt(syy + epsilon * np.eye(syy.shape[0]))
    u, rho, vh = np.linalg.svd(wx @ sxy @ wy)
    rho = np.abs(rho)
    if kx.sum() <= ky.sum():
        directions, units, mean = u.T, xa[:, kx], mx[kx]
    else:
        directions, units, mean = vh, ya[:, ky], my[ky]
    projected = directions @ (units - mean).T + mean[:, None]  # [K, N], as svcca adds the means back
    q, _ = np.linalg.qr(projected.T)
    weights = np.abs(q.T @ units).sum(axis=1)
    weights = weights / weights.sum()
    return float(np.clip(1.0 - float(weights @ rho), 0.0, 1.0))


def _inverse_sqrt(a: np.ndarray) -> np.ndarray:
    """(pinv a)^1/2 of a symmetric positive semi-definite matrix, by its eigendecomposition (as svcca)."""
    w, v = np.linalg.eigh(np.linalg.pinv(a))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """The unbiased HSIC estimator of two n x n Gram matrices (Song et al. 2012; Nguyen, Raghu &
    Kornblith 2021, eq. 3), n >= 4: with K~, L~ the Gram matrices with zeroed diagonals,

        HSIC_1 = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2 1^T K~ L~ 1 / (n-2)] / (n (n-3))
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    kt, lt = k.astype(np.float64), l_.astype(np.float64)
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    total = float(np.sum(kt * lt.T)) + float(kt.sum()) * float(lt.sum()) / ((n - 1) * (n - 2))
    total -= 2.0 * float(kt.sum(axis=0) @ lt.sum(axis=1)) / (n - 2)
    return total / (n * (n - 3))


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021), as Ranadive et al. computed it with torch_cka:
    per minibatch, the unbiased HSIC of the linear Gram matrices of the *flattened* outputs; over
    the batches, CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) mean HSIC(L, L)). Unlike `linear_cka`
    (one Gram matrix over all images, on channels averaged over space), its value depends on the
    batch size and on every spatial position; the two can differ widely (0.18 vs 0.79 on a digits
    ResNet20's stage 1, issue 20's review)."""

    def __init__(self) -> None:
        self.xx = self.xy = self.yy = 0.0
        self.batches = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One minibatch: x [B, ...] and y [B, ...] (the same B images), flattened per image."""
        xf, yf = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1)
        if xf.shape[0] != yf.shape[0]:
            raise ValueError(f"x and y must hold the same images: {xf.shape[0]} vs {yf.shape[0]}")
        k, l_ = xf @ xf.T, yf @ yf.T
        self.xx += unbiased_hsic(k, k)
        self.xy += unbiased_hsic(k, l_)
        self.yy += unbiased_hsic(l_, l_)
        self.batches += 1

    def value(self) -> float:
        """The CKA of the batches added (NaN when a side has no positive HSIC)."""
        if self.batches == 0 or not (self.xx > 0 and self.yy > 0):
            return float("nan")
        return self.xy / math.sqrt(self.xx * self.yy)


def _pca_variances(x: np.ndarray) -> np.ndarray:
    """Variances (up to a common factor) of the principal components of x, descending."""
    xc = _centered(_activations(x, "x"))
    return np.linalg.svd(xc, compute_uv=False) ** 2


def pcs_for_variance(x: np.ndarray, fraction: float = 0.95) -> int:
    """How many principal components of x [N, U] (centered) explain at least `fraction` of its variance.

    fraction must be in (0, 1]; at 1.0 the answer is the numerical rank (components holding only
    rounding noise, below ~U ulps of the total variance together, are not counted). A
    representation with zero variance needs 0 components.
    """
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    variances = _pca_variances(x)
    total = variances.sum()
    if total == 0.0:
        return 0
    explained = np.cumsum(variances) / total
    # The cumulative ratios carry rounding of up to ~U ulps; without that much slack fraction=1.0
    # could stop a hair short of 1 and demand components that hold only rounding noise.
    slack = variances.size * np.finfo(np.float64).eps
    k = int(np.searchsorted(explained, fraction - slack, side="left")) + 1
    return min(k, variances.size)


def participation_ratio(x: np.ndarray) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the PCA eigenvalues of x [N, U].

    A smooth dimensionality: k equal components give k, one dominant component gives ~1. 0.0 for a
    representation with zero variance (no dimension at all), matching `pcs_for_variance`.
    """
    variances = _pca_variances(x)
    total = variances.sum()
    if total == 0.0:
        return 0.0
    # Normalising first keeps the squares of large variances finite.
    p = variances / total
    return float(1.0 / np.sum(p**2))
