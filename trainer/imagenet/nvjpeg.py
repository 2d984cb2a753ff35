"""The GPU loader without DALI: torchvision.io.decode_jpeg on the device (nvJPEG), cut and flip there.

The CPU side is the DALI loader's (trainer.imagenet.feeder): it reads the files (a small thread
pool), learns each image's size (manifest or header) and turns the sample's uniforms into its
geometry. So the plan, the windows and the flips are computed on the CPU, testable without a GPU,
and are the very numbers the other loaders use. The device side takes a whole batch:

  decode_jpeg([encoded...], device=device)   one batched nvJPEG call on CUDA (libjpeg-turbo on CPU)
  augment.apply(image, geometry)             the portable loader's cut + antialiased bilinear
                                             resize + flip, run where the image is (on CUDA the
                                             uint8 resize goes through float and rounds back)

Same order, labels, windows and flips as the portable loader; on a CPU device the pixels are
bitwise the portable loader's (tests/test_imagenet_nvjpeg.py); on CUDA they differ by nvJPEG's
IDCT/upsampling and the float resize (bounded in the same test, run where a GPU is).

Images nvJPEG cannot take: content that is not a JPEG (a PNG named .JPEG) and a JPEG the batched
call refuses are decoded on the CPU by trainer.imagenet.decode (torchvision, then PIL) and moved
to the device; what no decoder reads is skipped and reported, as in the other loaders.

A background thread prepares the next `prefetch` batches (read + geometry) while the device
decodes the current one: the training thread only launches device work.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from trainer.imagenet.augment import SIZE, Geometry, apply
from trainer.imagenet.decode import BadImage, _as_tensor, decode_rgb
from trainer.imagenet.feeder import Encoded, Feeder
from trainer.imagenet.plan import Plan
from trainer.imagenet.portable import Decoded

JPEG_MAGIC = b"\xff\xd8"


def geometry_of(enc: Encoded, i: int) -> Geometry:
    """Sample i's geometry as the feeder planned it (the arrays DALI is fed, read back)."""
    (top, left), (h, w) = enc.crop_anchor[i].tolist(), enc.crop_shape[i].tolist()
    (out_h, out_w), (post_top, post_left) = enc.out_size[i].tolist(), enc.post_anchor[i].tolist()
    return Geometry(top, left, h, w, int(out_h), int(out_w), post_top, post_left, bool(enc.flip[i]))


def _decode_cpu(blob: np.ndarray, device: torch.device) -> torch.Tensor | BadImage:
    try:
        return decode_rgb(blob).to(device)
    except BadImage as err:
        return err


def decode_on(blobs: list[np.ndarray], device: torch.device) -> list[torch.Tensor | BadImage]:
    """Decode encoded images to uint8 [3, H, W] on `device`: the JPEGs in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | BadImage | None] = [None] * len(blobs)
    jpegs = [i for i, b in enumerate(blobs) if bytes(b[:2]) == JPEG_MAGIC]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: codecs move to TorchCodec
        try:
            decoded = decode_jpeg([_as_tensor(blobs[i]) for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:  # one damaged file fails the batched call: decode one by one
            for i in jpegs:
                with contextlib.suppress(RuntimeError):  # left to the CPU decoders below
                    out[i] = decode_jpeg(_as_tensor(blobs[i]), mode=ImageReadMode.RGB, device=device)
    return [image if image is not None else _decode_cpu(blobs[i], device) for i, image in enumerate(out)]


def decode_encoded(plan: Plan, enc: Encoded, device: torch.device) -> Decoded:
    """One batch planned by the feeder, decoded and cut on `device`: uint8 [b, 3, 224, 224] there."""
    images = decode_on(enc.data, device)
    out = torch.empty((len(images), 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    labels: list[int] = []
    skipped = list(enc.skipped)
    for i, image in enumerate(images):
        if isinstance(image, BadImage):
            index = enc.items[i].index
            skipped.append((index, plan.source.path(index), str(image)))
            continue
        out[len(labels)] = apply(image, geometry_of(enc, i))
        labels.append(enc.labels[i])
    n = len(labels)
    return Decoded(out[:n], torch.tensor(labels, dtype=torch.int64), skipped, len(enc) + len(enc.skipped))


def nvjpeg_batches(
    plan: Plan, start_step: int, device: torch.device, reader_threads: int = 4, prefetch: int = 2
) -> Generator[Decoded, None, None]:
    """Batches start_step ... plan.steps - 1 of `plan`, decoded on `device`, in order.

    Leaving the iterator early shuts the reader threads down (the `finally`).
    """
    feeder = Feeder(plan, reader_threads)
    ahead = ThreadPoolExecutor(1, thread_name_prefix="nvjpeg-feeder")
    pending: deque[Future[Encoded]] = deque()
    try:
        step = start_step
        while step < plan.steps and len(pending) < max(1, prefetch):
            pending.append(ahead.submit(feeder.batch, step))
            step += 1
        while pending:
            enc = pending.popleft().result()
            if step < plan.steps:
                pending.append(ahead.submit(feeder.batch, step))
                step += 1
            yield decode_encoded(plan, enc, device)
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        feeder.close()


def reader_threads(num_workers: int) -> int:
    """Threads that read files: num_workers, or 4 when it is 0 (reads wait on storage, not the CPU)."""
    return num_workers or min(4, os.cpu_count() or 1)
