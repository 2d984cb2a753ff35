"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019), at 5 severities, in torch.

    corrupt(name, x, severity, generator) -> x'    x: float [B, C, H, W] in [0, 1], any size, C 1 or 3

Hendrycks & Dietterich define each corruption with numpy / scikit-image / Wand code and fixed
parameters per severity (CIFAR-10-C: `make_cifar_c.py`). The maintained package `imagecorruptions`
(bethgelab) needs images of at least 32 px and 3 channels; the digits are 8x8 grey and the
trainer feeds them to the network at that size, so this module re-implements the definitions for
batches of any size and channel count, on the training device, with the CIFAR-10-C parameters
(the severities were tuned for 32 px images: larger images get kernels scaled with their side,
smaller ones keep CIFAR's pixel sizes). Where
the original reads files or calls ImageMagick, this module uses a documented stand-in:

- frost: the original blends one of six photographs of frost; here a seeded fractal texture
  (the fog's plasma fractal, sharpened into crystals) with the original blending weights;
- motion blur (and snow's blurred flakes): ImageMagick's one-sided Gaussian motion blur, as a
  per-image line kernel at the original's random angle;
- glass blur: the original swaps each pixel with a random neighbour, pixel after pixel; here each
  iteration gathers every pixel from a random neighbour at once (a local shuffle, vectorised).

Every random draw comes from the `generator` (a CPU torch.Generator), so a corruption is
deterministic per seed and the same on CPU and GPU. Outputs keep the shape and lie in [0, 1].
The tests check each corruption against its definition: distance from the clean image rising with
severity, shape and range kept, the same output for the same seed (tests/test_robust.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SEVERITIES = (1, 2, 3, 4, 5)

Tensor = torch.Tensor


def _uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float, device: torch.device) -> Tensor:
    return (torch.rand(shape, generator=g) * (high - low) + low).to(device)


def _normal(g: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randn(shape, generator=g).to(device)


def _depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel of every image with `kernel` [k, k] (or one kernel per image, [B, k, k]); reflect padding."""
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    if kernel.dim() == 2:
        weight = kernel.to(x).expand(c, 1, k, k)
        return F.conv2d(xp, weight, groups=c)
    weight = kernel.to(x).repeat_interleave(c, dim=0).unsqueeze(1)  # [B*C, 1, k, k]
    return F.conv2d(xp.reshape(1, b * c, *xp.shape[2:]), weight, groups=b * c).reshape(b, c, h, w)


def _gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    if sigma <= 0:
        return torch.ones(1, 1)
    size = size or 2 * math.ceil(3 * sigma) + 1
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).float()


def _blur(x: Tensor, sigma: float) -> Tensor:
    return _depthwise(x, _gaussian_kernel(sigma)) if sigma > 0 else x


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _zoom_center(x: Tensor, factor: float) -> Tensor:
    """Zoom into the center by `factor` >= 1, keeping the size (the original's zoom of the center crop,
    sampled continuously so that zooms under one pixel still count on 8 px images)."""
    theta = torch.tensor([[1 / factor, 0, 0], [0, 1 / factor, 0]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _scale(x: Tensor) -> float:
    """Pixel sizes of the CIFAR-10-C parameters (32 px) times this: larger images get proportionally
    larger kernels; smaller ones (digits, 8 px) keep the CIFAR sizes, which would round to nothing if shrunk."""
    return max(1.0, x.shape[-1] / 32)


def _motion_kernels(g: torch.Generator, n: int, radius: float, sigma: float, angles: tuple[float, float], scale: float) -> Tensor:
    """[n, k, k] one-sided Gaussian line kernels (ImageMagick's -motion-blur radius x sigma + angle), angle per image."""
    length = max(1, round(radius * scale))
    k = 2 * length + 1
    theta = torch.rand(n, generator=g) * (angles[1] - angles[0]) + angles[0]
    steps = torch.arange(length + 1, dtype=torch.float64)
    weights = torch.exp(-(steps**2) / (2 * (sigma * scale) ** 2))
    kernels = torch.zeros(n, k, k, dtype=torch.float64)
    rad = theta.double() * math.pi / 180
    for i in range(length + 1):
        rows = (length - torch.round(i * torch.sin(rad))).long().clamp(0, k - 1)
        cols = (length + torch.round(i * torch.cos(rad))).long().clamp(0, k - 1)
        kernels[torch.arange(n), rows, cols] += weights[i]
    return (kernels / kernels.sum(dim=(1, 2), keepdim=True)).float()


def _plasma(g: torch.Generator, n: int, size: int, decay: float) -> Tensor:
    """[n, size, size] diamond-square fractals in [0, 1] (Hendrycks's fog), `decay`: how fast the roughness falls."""
    side = 1 << max(2, math.ceil(math.log2(max(size, 2))))
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    maps = np.zeros((n, side, side))
    step, roughness = side, 100.0

    def jitter(a: np.ndarray) -> np.ndarray:
        return a / 4 + roughness * rng.uniform(-roughness, roughness, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:side:step, 0:side:step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:side:step, half:side:step] = jitter(square)
        centers = maps[:, half:side:step, half:side:step]
        corners = maps[:, 0:side:step, 0:side:step]
        maps[:, 0:side:step, half:side:step] = jitter(centers + np.roll(centers, 1, axis=1) + corners + np.roll(corners, -1, axis=2))
        maps[:, half:side:step, 0:side:step] = jitter(centers + np.roll(centers, 1, axis=2) + corners + np.roll(corners, -1, axis=1))
        step //= 2
        roughness /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
    return torch.from_numpy(maps[:, :size, :size]).float()


# ---- the corruptions (parameters per severity: Hendrycks & Dietterich's CIFAR-10-C) -------------
def gaussian_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    return x + _normal(g, tuple(x.shape), x.device) * c


def shot_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (500, 250, 100, 75, 50)[s - 1]  # photons per unit intensity
    return torch.poisson((x * c).cpu(), generator=g).to(x.device) / c


def impulse_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]  # fraction of values replaced, half by 0, half by 1
    hit = _uniform(g, tuple(x.shape), 0, 1, x.device) < c
    salt = (_uniform(g, tuple(x.shape), 0, 1, x.device) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def defocus_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[s - 1]
    radius *= _scale(x)
    r = max(1, math.ceil(radius))
    grid = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).double()
    disk /= disk.sum()
    kernel = F.conv2d(F.pad(disk.view(1, 1, *disk.shape), (1, 1, 1, 1)), _gaussian_kernel(alias, 3).double().view(1, 1, 3, 3))[0, 0]
    return _depthwise(x, (kernel / kernel.sum()).float())


def glass_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[s - 1]
    b, c, h, w = x.shape
    sigma, delta = sigma * _scale(x), round(delta * _scale(x))
    out = _blur(x, sigma)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta + 1, (b, h, w), generator=g)
        dx = torch.randint(-delta, delta + 1, (b, h, w), generator=g)
        src = ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).view(b, 1, h * w).to(x.device)
        out = out.reshape(b, c, h * w).gather(2, src.expand(b, c, h * w)).view(b, c, h, w)
    return _blur(out, sigma)


def motion_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    radius, sigma = ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3))[s - 1]
    return _depthwise(x, _motion_kernels(g, x.shape[0], radius, sigma, (-45, 45), _scale(x)))


def zoom_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1]
    zooms = np.arange(1, top, 0.01)
    out = x.clone()
    for z in zooms:
        out += _zoom_center(x, float(z))
    return out / (len(zooms) + 1)


def snow(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[s - 1]  # fmt: skip
    b, _, h, w = x.shape
    flakes = _normal(g, (b, 1, h, w), x.device) * scale + loc
    flakes = _zoom_center(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = _depthwise(flakes, _motion_kernels(g, b, radius, sigma, (-135, -45), _scale(x))).clamp(0, 1)
    x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


def frost(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    keep, amount = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[s - 1]
    b, c, h, w = x.shape
    texture = _plasma(g, b * c, max(h, w), 1.5)[:, :h, :w].view(b, c, h, w).to(x.device)
    crystals = texture**3 * 0.8 + 0.2 * (texture > 0.6).float()  # bright sparse ridges, as the frost photographs
    return keep * x + amount * crystals


def fog(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    amount, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[s - 1]
    b, _, h, w = x.shape
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    haze = _plasma(g, b, max(h, w), decay)[:, :h, :w].unsqueeze(1).to(x.device)
    return (x + amount * haze) * top / (top + amount)


def brightness(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[s - 1]
    value = x.amax(dim=1, keepdim=True)  # HSV's V; hue and saturation kept: the channels scale with it
    new = (value + c).clamp(0, 1)
    return torch.where(value > 0, x * new / value.clamp_min(1e-12), new.expand_as(x))


def contrast(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    means = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the original's mean over (H, W)
    return (x - means) * c + means


def elastic_transform(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    alpha, sigma, affine = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[s - 1]
    b, _, h, w = x.shape
    size = 32 * _scale(x)  # the original's parameters are fractions of IMSIZE (32)
    to_grid = 2 / w  # pixels -> grid units (the side spans 2)
    # Random affine: three points moved by up to `affine` x IMSIZE pixels, then a smoothed random field.
    src = torch.tensor([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [-0.5, 0.5, 1.0]], dtype=torch.float64)
    moved = src[:, :2].unsqueeze(0) + (torch.rand(b, 3, 2, generator=g, dtype=torch.float64) * 2 - 1) * affine * size * to_grid
    theta = torch.linalg.solve(src.unsqueeze(0).expand(b, 3, 3), moved).transpose(1, 2).to(x)  # [b, 2, 3]
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    field = (torch.rand(b, 2, h, w, generator=g) * 2 - 1).to(x.device)
    field = _blur(field, sigma * size) * alpha * size * to_grid
    grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def pixelate(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[s - 1]
    h, w = x.shape[-2:]
    small = _resize(x, (max(1, int(h * c)), max(1, int(w * c))), "area")
    return _resize(small, (h, w), "nearest")


def jpeg_compression(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    from PIL import Image

    quality = (80, 65, 58, 50, 40)[s - 1]
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i, im in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        decoded = np.asarray(Image.open(buf))
        out[i] = decoded.reshape(im.shape)
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).float() / 255


FUNCTIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}  # fmt: skip


def corrupt(name: str, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Corruption `name` at `severity` (1-5) of images x (float [B, C, H, W] in [0, 1]); the result in [0, 1].

    The output is quantised to 8 bits, as the published sets store uint8 images.
    """
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    with torch.no_grad():
        out = FUNCTIONS[name](x.float(), severity, generator).clamp(0, 1)
    return (out * 255).round() / 255


def generator_for(seed: int, name: str, severity: int, batch: int) -> torch.Generator:
    """The draws of one (corruption, severity, batch): the same whatever else the job computes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + CORRUPTIONS.index(name) * 10_007 + severity * 101 + batch)
