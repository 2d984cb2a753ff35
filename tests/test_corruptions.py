"""The generated corruptions against the published definitions of Hendrycks & Dietterich.

The published code is github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (commit
ca360085) and make_tinyimagenet_c.py (commit 7a64e6a1); it needs Wand/ImageMagick, OpenCV and
scikit-image, and the maintained `imagecorruptions` does not import with current setuptools. So the
deterministic corruptions are compared here with transcriptions of the published lines in numpy,
scipy, PIL and matplotlib (each names the line it transcribes), on 32 px (CIFAR-10-C's table) and
64 px (Tiny-ImageNet-C's) colour images; the random ones by their statistics. The published sets
store np.uint8 of the float image (truncation), so each output must be the published float image
truncated, up to float32 noise (2e-3 of a grey level); PIL's pixelate and JPEG must be bit-equal.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import convolve

from trainer.analysis.corruptions import PARAMETERS, _motion, corrupt, generator_for, table_for
from trainer.data import read_digits

# The published tables, copied from the two scripts (tuples of the lists they index with severity - 1).
MAKE_CIFAR_C = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [.05, .1, .15, .2, .3],
    "contrast": [.75, .5, .4, .3, 0.15],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}  # fmt: skip
MAKE_TINYIMAGENET_C = {
    "gaussian_noise": [0.04, 0.08, .12, .15, .18],
    "shot_noise": [250, 100, 50, 30, 15],
    "impulse_noise": [.01, .02, .05, .08, .14],
    "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
    "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
    "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
    "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
    "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
    "fog": [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
    "brightness": [.1, .2, .3, .4, .5],
    "contrast": [.4, .3, .2, .1, 0.05],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)],
    "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
    "jpeg_compression": [65, 58, 50, 40, 25],
}  # fmt: skip
SIZES = (32, 64)


def test_parameters_are_the_published_tables() -> None:
    for table, published in (("CIFAR-10-C", MAKE_CIFAR_C), ("Tiny-ImageNet-C", MAKE_TINYIMAGENET_C)):
        assert PARAMETERS[table] == {name: tuple(values) for name, values in published.items()}, table
    assert [table_for(s) for s in (8, 32, 63, 64, 224)] == ["CIFAR-10-C"] * 3 + ["Tiny-ImageNet-C"] * 2


def _images(side: int, n: int = 6) -> tuple[torch.Tensor, np.ndarray]:
    """Colour images on the 8-bit grid (digits upsampled and tinted): float [n, 3, s, s] and uint8 [n, s, s, 3]."""
    (_, _), (x, _) = read_digits(Path("."))
    x = F.interpolate(x[:n].float() / 255, size=(side, side), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = x * torch.tensor([0.9, 0.6, 0.3]).view(1, 3, 1, 1) + torch.tensor([0.05, 0.2, 0.1]).view(1, 3, 1, 1)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return u8.float() / 255, u8.permute(0, 2, 3, 1).numpy()


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _close(ours: np.ndarray, published: np.ndarray) -> None:
    """ours (uint8) is the published float image (0-255, before np.uint8) truncated, up to float32 noise."""
    low, high = (ours.astype(np.float64) - published).min(), (ours.astype(np.float64) - published).max()
    assert low >= -1 - 2e-3 and high <= 2e-3, (low, high)


def _param(side: int, name: str, s: int) -> object:
    return (MAKE_CIFAR_C if side < 64 else MAKE_TINYIMAGENET_C)[name][s - 1]


@pytest.mark.slow  # the first of the file to read the digits and warm torch up: over a second on a loaded machine
@pytest.mark.parametrize("side", SIZES)
def test_contrast_and_brightness_are_the_published_formulas(side: int) -> None:
    x, imgs = _images(side)
    for s in range(1, 6):
        c = _param(side, "contrast", s)
        published = []
        for im in imgs:  # make_cifar_c.contrast
            f = np.array(im) / 255.0
            means = np.mean(f, axis=(0, 1), keepdims=True)
            published.append(np.clip((f - means) * c + means, 0, 1) * 255)
        _close(_u8(corrupt("contrast", x, s, torch.Generator())), np.stack(published))
        c = _param(side, "brightness", s)
        published = []
        for im in imgs:  # make_cifar_c.brightness: V + c in HSV (matplotlib's HSV in place of scikit-image's)
            hsv = rgb_to_hsv(np.array(im) / 255.0)
            hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
            published.append(np.clip(hsv_to_rgb(hsv), 0, 1) * 255)
        _close(_u8(corrupt("brightness", x, s, torch.Generator())), np.stack(published))


@pytest.mark.parametrize("side", SIZES)
def test_pixelate_and_jpeg_are_the_published_calls(side: int) -> None:
    x, imgs = _images(side)
    for s in range(1, 6):
        c = _param(side, "pixelate", s)
        assert isinstance(c, float)
        box = Image.Resampling.BOX  # make_cifar_c.pixelate: two BOX resizes
        published = np.stack([np.asarray(Image.fromarray(im).resize((int(side * c),) * 2, box).resize((side, side), box)) for im in imgs])
        assert np.array_equal(_u8(corrupt("pixelate", x, s, torch.Generator())), published)
        quality = _param(side, "jpeg_compression", s)
        out = []
        for im in imgs:  # make_cifar_c.jpeg_compression
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "JPEG", quality=quality)
            out.append(np.asarray(Image.open(buf)))
        assert np.array_equal(_u8(corrupt("jpeg_compression", x, s, torch.Generator())), np.stack(out))


def _published_disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.disk for radius <= 8: the aliased 17x17 disk, then cv2.GaussianBlur (3, 3) (a zero
    border, so a plain convolution with cv2's 3-tap Gaussian)."""
    grid = np.arange(-8, 8 + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()
    return convolve(disk, np.outer(taps, taps), mode="constant")


@pytest.mark.parametrize("side", SIZES)
def test_defocus_blur_is_the_published_filter(side: int) -> None:
    x, imgs = _images(side)
    for s in range(1, 6):
        radius, alias = _param(side, "defocus_blur", s)  # type: ignore[misc]
        kernel = _published_disk(radius, alias)
        # cv2.filter2D with its default border (reflect-101: scipy's "mirror"), channel by channel
        published = np.stack(
            [np.clip(np.stack([convolve(im[:, :, d] / 255.0, kernel, mode="mirror") for d in range(3)], -1), 0, 1) * 255 for im in imgs]
        )
        _close(_u8(corrupt("defocus_blur", x, s, torch.Generator())), published)


def _published_motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' _motion_blur (its numpy form of ImageMagick's, which make_cifar_c calls through Wand)."""
    width = radius * 2 + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(*point)
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        shifted = np.roll(x, dx, axis=1)  # imagecorruptions' shift(): roll, then repeat the edge
        if dx < 0:
            shifted[:, dx:] = shifted[:, dx - 1 : dx]
        elif dx > 0:
            shifted[:, :dx] = shifted[:, dx : dx + 1]
        shifted = np.roll(shifted, dy, axis=0)
        if dy < 0:
            shifted[dy:, :] = shifted[dy - 1 : dy, :]
        elif dy > 0:
            shifted[:dy, :] = shifted[dy : dy + 1, :]
        blurred = blurred + kernel[i] * shifted
    return np.clip(blurred, 0, 255)


@pytest.mark.parametrize("side", SIZES)
def test_motion_blur_is_imagemagicks(side: int) -> None:
    x, imgs = _images(side, 3)
    for s in (1, 5):
        radius, sigma = _param(side, "motion_blur", s)  # type: ignore[misc]
        for angle in (-40.0, 0.0, 30.0):
            ours = torch.floor(_motion(x, radius, sigma, torch.full((len(x),), angle)) * 255 + 1e-3).to(torch.uint8)
            published = np.stack([_published_motion_blur(im.astype(np.float32), radius, sigma, angle) for im in imgs])
            _close(ours.permute(0, 2, 3, 1).numpy(), published)


@pytest.mark.parametrize("side", SIZES)
def test_noises_have_the_published_statistics(side: int) -> None:
    x = torch.full((32, 3, side, side), 128 / 255)  # mid grey: no clipping at any severity
    for s in (1, 5):
        sigma = _param(side, "gaussian_noise", s)
        out = corrupt("gaussian_noise", x, s, generator_for(0, "gaussian_noise", s, 0))
        assert float((out - x).std()) == pytest.approx(sigma, rel=0.03)  # np.random.normal(scale=c)
        photons = _param(side, "shot_noise", s)
        assert isinstance(photons, int)
        out = corrupt("shot_noise", x, s, generator_for(0, "shot_noise", s, 0))
        assert float((out - x).var()) == pytest.approx((128 / 255) / photons, rel=0.1)  # Poisson(x c) / c
        amount = _param(side, "impulse_noise", s)
        out = corrupt("impulse_noise", x, s, generator_for(0, "impulse_noise", s, 0))
        hit = out != x  # scikit-image's s&p: `amount` of the values, half salt, half pepper
        assert float(hit.float().mean()) == pytest.approx(amount, rel=0.15)
        assert float((out[hit] == 1).float().mean()) == pytest.approx(0.5, abs=0.1)
