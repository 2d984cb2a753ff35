"""Where each image of an epoch goes and how it is cut: the same numbers for every loader.

An epoch's order is `torch.randperm(n, generator=epoch_generator(seed, epoch))` (trainer.datatypes).
Every position p of the epoch owns DRAWS uniforms of one numpy PCG64 stream keyed by (seed, epoch):
positions p*DRAWS ... p*DRAWS + DRAWS - 1. PCG64 can jump ahead (`advance`), so any batch's numbers
are computed directly, in any process, in any order: the result depends neither on the number of
workers, nor on the loader, nor on skipped batches (mid-epoch resume).

`Geometry` is one sample's recipe, shared by the portable loader (torch ops) and the DALI
pipeline: cut the window (top, left, height, width) out of the decoded image, resize it to
(out_h, out_w), cut 224x224 at (post_top, post_left), mirror if `flip`.

- train (augment=True): torchvision's RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))
  with its 10 tries and centre fallback, then a horizontal flip with p = 0.5. The uniforms replace
  torchvision's draws one for one (area, log-ratio, then the window's position), so the window
  has exactly torchvision's distribution.
- eval (augment=False and the val set): Resize(256) + CenterCrop(224), torchvision's sizes and
  rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer.datatypes import epoch_generator

SIZE = 224  # network input
RESIZE = 256  # evaluation: shorter side before the centre crop
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10
DRAWS = TRIES * 4 + 1  # per try: area, log-ratio, row, column; then the flip
_TAG = 0x1A6E_5E1EC7  # keeps these streams apart from any other use of (seed, epoch)


@dataclass(frozen=True)
class Geometry:
    top: int
    left: int
    height: int
    width: int
    out_h: int
    out_w: int
    post_top: int
    post_left: int
    flip: bool


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of the n samples (int64), from trainer.datatypes.epoch_generator."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch)).numpy()


def draws(seed: int, epoch: int, start: int, count: int) -> np.ndarray:
    """Uniforms [count, DRAWS] in [0, 1) of positions start ... start + count - 1 of the epoch."""
    bits = np.random.PCG64(np.random.SeedSequence([seed % 2**63, epoch % 2**63, _TAG]))
    bits.advance(start * DRAWS)  # one 64-bit step per float64
    return np.random.Generator(bits).random((count, DRAWS))


def random_resized_crop(height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params of torchvision with the uniforms `u` (DRAWS long): (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for k in range(TRIES):
        a, r, y, x = (float(v) for v in u[4 * k : 4 * k + 4])
        target_area = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * a)
        aspect = math.exp(log_lo + (log_hi - log_lo) * r)
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            # torch.randint(0, height - h + 1): an integer uniform on 0 .. height - h
            return int(y * (height - h + 1)), int(x * (width - w + 1)), h, w
    in_ratio = width / height  # fallback: the centre crop of torchvision
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_geometry(height: int, width: int, u: np.ndarray, flip: bool = True) -> Geometry:
    top, left, h, w = random_resized_crop(height, width, u)
    return Geometry(top, left, h, w, SIZE, SIZE, 0, 0, flip and bool(u[DRAWS - 1] < 0.5))


def eval_geometry(height: int, width: int) -> Geometry:
    """Resize(256) then CenterCrop(224), with torchvision's output size and rounding."""
    if width <= height:
        out_w, out_h = RESIZE, int(RESIZE * height / width)
    else:
        out_h, out_w = RESIZE, int(RESIZE * width / height)
    post_top = round((out_h - SIZE) / 2.0)
    post_left = round((out_w - SIZE) / 2.0)
    return Geometry(0, 0, height, width, out_h, out_w, post_top, post_left, False)


def geometry(height: int, width: int, u: np.ndarray | None) -> Geometry:
    """Train geometry with the sample's uniforms, or the evaluation geometry when `u` is None."""
    return eval_geometry(height, width) if u is None else train_geometry(height, width, u)


def apply(image: torch.Tensor, g: Geometry) -> torch.Tensor:
    """Cut, resize (bilinear, antialiased, on uint8) and flip one decoded uint8 [3, H, W] image.

    decode_jpeg returns the image as an HWC buffer viewed as CHW; a slice of it is still
    channels-last in memory, which is the layout torch's fast uint8 antialiased resize works in.
    """
    from torchvision.transforms.v2 import functional as F2

    x = image[:, g.top : g.top + g.height, g.left : g.left + g.width]
    if (g.height, g.width) != (g.out_h, g.out_w):
        x = F2.resize(x, [g.out_h, g.out_w], antialias=True)
    x = x[:, g.post_top : g.post_top + SIZE, g.post_left : g.post_left + SIZE]
    if g.flip:
        x = x.flip(-1)
    return x
