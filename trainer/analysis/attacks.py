"""White-box L-infinity attacks, the dimensionality of a representation's change, and input-unit gradients.

    space = InputSpace(mean, std, device)               the trial's normalisation (data.info)
    fgsm(model, x, y, eps, space)                       -> x_adv   x in [0, 1] pixel units
    pgd(model, x, y, eps, steps, step_size, space, g)   -> x_adv, broken (any iterate misclassified)
    change_dimensionality(clean, perturbed)             -> (pcs_95, participation ratio) of perturbed - clean
    input_unit_gradients(model, x, space, layer, units) -> G [N, U]: mean |d unit / d pixel| per image and unit
    gradient_variability(G)                             -> mean, CV across samples, CV across units

The attacks work in pixel space: images in [0, 1], epsilon in the same units (8/255 is 8 grey
levels), the perturbed image clamped to [0, 1], then normalised as the trial normalises its inputs
(so the ball is the same whatever the trial's input_norm). The network is in evaluation mode and
the loss is the plain cross-entropy: the selectivity regularizer is a training term and is off.
FGSM (Goodfellow et al. 2015) takes one step of eps along the sign of the loss gradient. PGD
(Madry et al. 2018) starts at a uniform random point of the ball (seeded) and takes `steps` signed
steps of `step_size`, projecting back onto the ball and the image range after each; an image
counts as broken when any iterate is misclassified (the attack found an adversarial example).

The dimensionality of the change is the project's PCA measure (trainer.analysis.representation:
components for 95% of the variance, participation ratio) applied to the per-image difference of a
layer's units between the perturbed and the clean input, [N, U].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainer.analysis.representation import participation_ratio, pcs_for_variance
from trainer.models import TrackedNet

VARIANCE_FRACTION = 0.95


class InputSpace:
    """Pixel space [0, 1] <-> the network's normalised input (x - mean) / std, per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def to_pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] (what the data set's test batches hold, before normalisation)."""
        return (normalised * self.std + self.mean).clamp(0, 1)


def _loss_grad(model: TrackedNet, pixels: torch.Tensor, y: torch.Tensor, space: InputSpace) -> torch.Tensor:
    x = pixels.detach().requires_grad_(True)
    logits, _ = model(space.to_model(x))
    loss = F.cross_entropy(logits.float(), y, reduction="sum")  # sum: each image's gradient is its own
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@torch.no_grad()
def predict(model: TrackedNet, pixels: torch.Tensor, space: InputSpace) -> torch.Tensor:
    logits, _ = model(space.to_model(pixels))
    return logits.argmax(1)


def fgsm(model: TrackedNet, pixels: torch.Tensor, y: torch.Tensor, eps: float, space: InputSpace) -> torch.Tensor:
    """The FGSM image of each of `pixels` [B, C, H, W] in [0, 1]: x + eps sign(grad), clamped to [0, 1]."""
    if eps == 0:
        return pixels.clone()
    return (pixels + eps * _loss_grad(model, pixels, y, space).sign()).clamp(0, 1).detach()


def pgd(
    model: TrackedNet,
    pixels: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    space: InputSpace,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD's last iterate per image, and whether any iterate was misclassified (bool [B])."""
    if eps == 0:
        return pixels.clone(), predict(model, pixels, space) != y
    start = (torch.rand(pixels.shape, generator=generator) * 2 - 1).to(pixels.device) * eps
    x = (pixels + start).clamp(0, 1)
    broken = predict(model, x, space) != y
    for _ in range(steps):
        x = x + step_size * _loss_grad(model, x, y, space).sign()
        x = torch.min(torch.max(x, pixels - eps), pixels + eps).clamp(0, 1).detach()
        broken |= predict(model, x, space) != y
    return x, broken


def change_dimensionality(clean: np.ndarray, perturbed: np.ndarray) -> tuple[int | None, float]:
    """Components for 95% of the variance, and the participation ratio, of perturbed - clean ([N, U] each)."""
    delta = np.asarray(perturbed, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    if not np.isfinite(delta).all():
        return None, float("nan")
    return pcs_for_variance(delta, VARIANCE_FRACTION), participation_ratio(delta)


def unit_subset(n_units: int, most: int) -> np.ndarray:
    """Which units of a layer get their input gradient: all, or `most` evenly spaced ones (a cost cap)."""
    if n_units <= most:
        return np.arange(n_units)
    return np.unique(np.linspace(0, n_units - 1, most).round().astype(np.int64))


def input_unit_gradients(model: TrackedNet, pixels: torch.Tensor, space: InputSpace, layer: int, units: np.ndarray) -> np.ndarray:
    """G [B, len(units)]: for each image and unit, the mean absolute gradient of the unit's activation
    (its channel's spatial mean, as for CSI) with respect to the input pixels ([0, 1] units).

    Images do not interact in evaluation mode, so one backward pass per unit over the whole batch
    gives every image's own gradient.
    """
    x = pixels.detach().requires_grad_(True)
    _, feats = model(space.to_model(x), capture=True)
    assert feats is not None
    acts = feats[layer]
    out = np.empty((len(pixels), len(units)))
    for j, u in enumerate(units):
        (grad,) = torch.autograd.grad(acts[:, int(u)].sum(), x, retain_graph=j < len(units) - 1)
        out[:, j] = grad.abs().flatten(1).mean(1).double().cpu().numpy()
    return out


def gradient_variability(g: np.ndarray) -> tuple[float, float, float]:
    """Mean of G [N, U], its coefficient of variation across samples (per unit, averaged over units)
    and across units (per image, averaged over images). Zero-mean columns or rows are left out."""
    g = np.asarray(g, dtype=np.float64)

    def cv(a: np.ndarray, axis: int) -> float:
        mean = a.mean(axis=axis)
        ok = mean > 0
        return float(np.mean(a.std(axis=axis)[ok] / mean[ok])) if ok.any() else float("nan")

    return float(g.mean()), cv(g, 0), cv(g, 1)
