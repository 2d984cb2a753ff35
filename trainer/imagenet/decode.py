"""Bytes -> RGB uint8 tensor [3, H, W], and image sizes from the header alone.

Used by both loaders, the manifest's `--check` and the tests. The fast path is libjpeg-turbo via
`torchvision.io.decode_jpeg`; content that is not a JPEG (a PNG named .JPEG) goes through
`torchvision.io.decode_image`, and anything torchvision refuses through PIL. Every path gives 3
channels (grayscale is replicated, CMYK converted), and every failure raises `BadImage` with a
short reason, so a caller can skip the file and go on.

torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still work and
are what this module uses (the DeprecationWarning is silenced here). PIL is the fallback should
they go away.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch


class BadImage(Exception):
    """The file could not be read or decoded; the message is the reason, one line."""


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[-1] if lines else ""
    if ".cpp:" in text:  # torchvision: "decode_jpeg, /path/decode_jpeg.cpp:171, Image is incomplete or truncated"
        text = text.rsplit(", ", 1)[-1]
    return f"{type(err).__name__}: {text}"[:200]


def read_bytes(path: str) -> bytes:
    """The whole file; BadImage if it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadImage(_reason(err)) from None
    if not data:
        raise BadImage("empty file (0 bytes)")
    return data


def _as_tensor(data: bytes | np.ndarray) -> torch.Tensor:
    # frombuffer shares memory; a writable copy avoids torch's non-writable-buffer warning.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_rgb(data: bytes | np.ndarray) -> torch.Tensor:
    """Decode an encoded image to uint8 [3, H, W] (RGB); BadImage if no decoder can.

    EXIF orientation is not applied (as torchvision's ImageFolder + PIL never did), so the size is
    the one in the header, which the crop windows are drawn for.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    raw = _as_tensor(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: codecs move to TorchCodec
        is_jpeg = bytes(data[:2]) == b"\xff\xd8"
        try:
            if is_jpeg:
                return decode_jpeg(raw, mode=ImageReadMode.RGB)
            return decode_image(raw, mode=ImageReadMode.RGB)
        except RuntimeError as err:  # not JPEG/PNG/..., or damaged: PIL has the last word
            first = err
    return _decode_pil(data, first)


def _decode_pil(data: bytes | np.ndarray, first: BaseException) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadImage(f"{_reason(first)}; PIL: {_reason(err)}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def image_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(height, width) from the header alone (PIL reads only the first few KB); BadImage if none."""
    from PIL import Image

    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            width, height = im.size
    except Exception as err:  # noqa: BLE001  # as above: any PIL failure means "unreadable"
        raise BadImage(_reason(err)) from None
    return int(height), int(width)
