"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019), at 5 severities, in torch.

    corrupt(name, x, severity, generator) -> x'    x: float [B, C, H, W] in [0, 1], any size, C 1 or 3

Hendrycks & Dietterich define each corruption with numpy / scikit-image / OpenCV / Wand code and
fixed parameters per severity, one table per data set: `make_cifar_c.py` (CIFAR-10-C, 32 px) and
`make_tinyimagenet_c.py` (Tiny-ImageNet-C, 64 px), github.com/hendrycks/robustness,
ImageNet-C/create_c/. PARAMETERS holds both tables as published; images of 64 px and more take the
Tiny-ImageNet-C table, smaller ones the CIFAR-10-C table (pixel sizes scaled with the side above
the table's size; the 8 px digits keep CIFAR's pixel sizes, which would round to nothing if shrunk).

Why not the maintained package `imagecorruptions` (bethgelab, 1.1.2): it carries ImageNet-C's
parameters (for 224 px; e.g. Gaussian noise sigma 0.08-0.38 against CIFAR-10-C's 0.04-0.10), needs
images of at least 32 px, and with current libraries it does not import (pkg_resources is gone from
setuptools >= 81) and, past that, glass blur (scikit-image's removed `multichannel`), fog
(numpy 2's removed `np.float_`) and frost fail. Its numpy re-implementation of ImageMagick's motion
blur is what `motion_blur` and `snow` follow here (the published code calls Wand/ImageMagick).

Where the original reads files, this module uses a documented stand-in:

- frost: the original blends one of six photographs of frost; here a seeded fractal texture
  (the fog's plasma fractal, sharpened into crystals) with the original blending weights;
- glass blur: the original swaps each pixel with a random neighbour, pixel after pixel; here each
  iteration gathers every pixel from a random neighbour at once (a local shuffle, vectorised).

Pixelate and JPEG run the published PIL calls on the 8-bit images; contrast, brightness, the
noises, defocus and motion blur compute the published formulas (tests/test_corruptions.py compares
them with transcriptions of the published code). Outputs are truncated to 8 bits as the published
sets store them (`np.uint8` of the float image).

Every random draw comes from the `generator` (a CPU torch.Generator), so a corruption is
deterministic per seed and the same on CPU and GPU. Outputs keep the shape and lie in [0, 1].
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

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


# The published parameters per severity (1-5), in the published order of each tuple; elastic_transform's
# are the fractions of IMSIZE that the published code multiplies. Source: github.com/hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py (32 px) and make_tinyimagenet_c.py (64 px).
PARAMETERS: dict[str, dict[str, tuple]] = {
    "CIFAR-10-C": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # np.arange(1, top, 0.01)
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
    "Tiny-ImageNet-C": {
        "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
        "shot_noise": (250, 100, 50, 30, 15),
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
        "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
        "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
        "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)),
        "frost": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
        "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)),
        "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
        "jpeg_compression": (65, 58, 50, 40, 25),
    },
}  # fmt: skip
TABLE_SIZES = {"CIFAR-10-C": 32, "Tiny-ImageNet-C": 64}


def table_for(side: int) -> str:
    """Which published table images of this side take: Tiny-ImageNet-C's from 64 px on, else CIFAR-10-C's."""
    return "Tiny-ImageNet-C" if side >= 64 else "CIFAR-10-C"


def _p(x: Tensor, name: str, s: int) -> Any:
    return PARAMETERS[table_for(x.shape[-1])][name][s - 1]


def _scale(x: Tensor) -> float:
    """Pixel sizes of the table's parameters times this: images larger than the table's size get proportionally
    larger kernels; smaller ones (digits, 8 px) keep the table's sizes, which would round to nothing if shrunk."""
    return max(1.0, x.shape[-1] / TABLE_SIZES[table_for(x.shape[-1])])


def _motion(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """ImageMagick's motion blur (-motion-blur radius x sigma + angle) as imagecorruptions re-implements it
    (`_motion_blur`): the image shifted by round(i (cos a, sin a)) for i = 0 .. 2 radius, weighted by a one-sided
    Gaussian of i; one angle per image (degrees). Pixels beyond the border repeat the edge (imagecorruptions
    stops adding shifts once one leaves the image; that happens only on images smaller than the blur)."""
    b, c, h, w = x.shape
    width = 2 * max(1, round(radius)) + 1
    weights = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    rad = angles.double() * math.pi / 180
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    for i, weight in enumerate((weights / weights.sum()).tolist()):
        dy = -torch.ceil(i * torch.sin(rad) - 0.5).long().view(b, 1, 1)
        dx = -torch.ceil(i * torch.cos(rad) - 0.5).long().view(b, 1, 1)
        src = ((rows - dy).clamp(0, h - 1) * w + (cols - dx).clamp(0, w - 1)).view(b, 1, h * w).to(x.device)
        out += weight * flat.gather(2, src.expand(b, c, h * w))
    return out.view(b, c, h, w)


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


# ---- the corruptions (parameters per severity: PARAMETERS, the published tables) ----------------
def gaussian_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    return x + _normal(g, tuple(x.shape), x.device) * _p(x, "gaussian_noise", s)


def shot_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = _p(x, "shot_noise", s)  # photons per unit intensity
    return torch.poisson((x * c).cpu(), generator=g).to(x.device) / c


def impulse_noise(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = _p(x, "impulse_noise", s)  # fraction of values replaced, half by 0, half by 1 (scikit-image's s&p)
    hit = _uniform(g, tuple(x.shape), 0, 1, x.device) < c
    salt = (_uniform(g, tuple(x.shape), 0, 1, x.device) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def defocus_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    radius, alias = _p(x, "defocus_blur", s)
    radius *= _scale(x)
    r = max(1, math.ceil(radius))
    grid = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).double()
    disk /= disk.sum()
    # cv2.GaussianBlur(disk, (3, 3), alias): the disk has a zero border, so a plain 3x3 convolution
    kernel = F.conv2d(F.pad(disk.view(1, 1, *disk.shape), (1, 1, 1, 1)), _gaussian_kernel(alias, 3).double().view(1, 1, 3, 3))[0, 0]
    return _depthwise(x, (kernel / kernel.sum()).float())  # cv2.filter2D's border: reflect-101, torch's "reflect"


def glass_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    sigma, delta, iterations = _p(x, "glass_blur", s)
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
    radius, sigma = _p(x, "motion_blur", s)
    angles = torch.rand(x.shape[0], generator=g) * 90 - 45  # np.random.uniform(-45, 45), per image
    return _motion(x, radius * _scale(x), sigma * _scale(x), angles)


def zoom_blur(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    zooms = np.arange(1, _p(x, "zoom_blur", s), 0.01)
    out = x.clone()
    for z in zooms:
        out += _zoom_center(x, float(z))
    return out / (len(zooms) + 1)


def snow(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, keep = _p(x, "snow", s)
    b, _, h, w = x.shape
    flakes = _normal(g, (b, 1, h, w), x.device) * scale + loc
    flakes = _zoom_center(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0, 1)
    angles = torch.rand(b, generator=g) * 90 - 135  # np.random.uniform(-135, -45)
    flakes = _motion(flakes, radius * _scale(x), sigma * _scale(x), angles)
    x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


def frost(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    keep, amount = _p(x, "frost", s)
    b, c, h, w = x.shape
    texture = _plasma(g, b * c, max(h, w), 1.5)[:, :h, :w].view(b, c, h, w).to(x.device)
    crystals = texture**3 * 0.8 + 0.2 * (texture > 0.6).float()  # bright sparse ridges, as the frost photographs
    return keep * x + amount * crystals


def fog(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    amount, decay = _p(x, "fog", s)
    b, _, h, w = x.shape
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    haze = _plasma(g, b, max(h, w), decay)[:, :h, :w].unsqueeze(1).to(x.device)
    return (x + amount * haze) * top / (top + amount)


def brightness(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = _p(x, "brightness", s)
    value = x.amax(dim=1, keepdim=True)  # HSV's V; hue and saturation kept: the channels scale with it
    new = (value + c).clamp(0, 1)
    return torch.where(value > 0, x * new / value.clamp_min(1e-12), new.expand_as(x))


def contrast(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    c = _p(x, "contrast", s)
    means = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the original's mean over (H, W)
    return (x - means) * c + means


def elastic_transform(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    alpha, sigma, affine = _p(x, "elastic_transform", s)
    b, _, h, w = x.shape
    size = TABLE_SIZES[table_for(w)] * _scale(x)  # the original's parameters are fractions of IMSIZE
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


def _per_image(x: Tensor, step: Callable[[Any], Any]) -> Tensor:
    """Apply a PIL step to each image of x as 8-bit ('L' for one channel, 'RGB' for three)."""
    from PIL import Image

    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i, im in enumerate(arr):
        out[i] = np.asarray(step(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im))).reshape(im.shape)
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).float() / 255


def pixelate(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    from PIL import Image

    c = _p(x, "pixelate", s)
    h, w = x.shape[-2:]
    # the published calls: a BOX downsampling to int(side c), then a BOX resize back
    return _per_image(
        x, lambda im: im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
    )


def jpeg_compression(x: Tensor, s: int, g: torch.Generator) -> Tensor:
    from PIL import Image

    quality = _p(x, "jpeg_compression", s)

    def step(im: Any) -> Any:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf)

    return _per_image(x, step)


FUNCTIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}  # fmt: skip


def corrupt(name: str, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Corruption `name` at `severity` (1-5) of images x (float [B, C, H, W] in [0, 1]); the result in [0, 1].

    The output is truncated to 8 bits as the published sets store it (np.uint8 of the float image: floor,
    with 1e-3 of a grey level of slack so that float32 noise on an exact level does not drop it by one).
    """
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    with torch.no_grad():
        out = FUNCTIONS[name](x.float(), severity, generator).clamp(0, 1)
    return torch.floor(out * 255 + 1e-3) / 255


def generator_for(seed: int, name: str, severity: int, batch: int) -> torch.Generator:
    """The draws of one (corruption, severity, batch): the same whatever else the job computes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + CORRUPTIONS.index(name) * 10_007 + severity * 101 + batch)
