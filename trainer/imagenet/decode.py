"""Bytes -> RGB uint8 tensor [3, H, W], and image sizes from the header alone.

Used by both loaders, the manifest's `--check` and the tests. The fast path is libjpeg-turbo via
`torchvision.io.decode_jpeg`; content that is not a JPEG (a PNG named .JPEG) goes through
`torchvision.io.decode_image`, and anything torchvision refuses through PIL. Every path gives 3
channels (grayscale is replicated, CMYK converted), and every failure raises `BadImage` with a
short reason, so a caller can skip the file and go on.

Two bounds come before any decoder: only regular files are read (a FIFO named .JPEG would block
the read forever), and an image whose header promises more than `MAX_PIXELS` pixels is a bad
image (a 700-byte JPEG can claim 65500 x 65500 and make a decoder ask for 12.9 GB).

torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still work and
are what this module uses (the DeprecationWarning is silenced here). PIL is the fallback should
they go away.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings

import numpy as np
import torch


class BadImage(Exception):
    """The file could not be read or decoded; the message is the reason, one line."""


# Pixels an image's header may promise: 100 megapixels (300 MB as RGB). ImageNet's images are
# photos of camera size at most (tens of megapixels; on average about 0.2), so none comes near;
# PIL's own decompression-bomb error is higher still (2 * Image.MAX_IMAGE_PIXELS = 179 M).
MAX_PIXELS = 100_000_000


def regular_size(path: str) -> int:
    """The size of a regular file, found without opening it; BadImage for anything else."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise BadImage(_reason(err)) from None
    if not stat.S_ISREG(st.st_mode):
        raise BadImage("not a regular file")
    return st.st_size


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[-1] if lines else ""
    if ".cpp:" in text:  # torchvision: "decode_jpeg, /path/decode_jpeg.cpp:171, Image is incomplete or truncated"
        text = text.rsplit(", ", 1)[-1]
    return f"{type(err).__name__}: {text}"[:200]


def read_bytes(path: str) -> bytes:
    """The whole file; BadImage if it cannot be read, is empty or is not a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer, and fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadImage("not a regular file")
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
    _check_pixels(data)
    raw = _as_tensor(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: codecs move to TorchCodec
        is_jpeg = bytes(data[:2]) == b"\xff\xd8"
        try:
            if is_jpeg:
                return decode_jpeg(raw, mode=ImageReadMode.RGB)
            return _to_uint8(decode_image(raw, mode=ImageReadMode.RGB))
        except RuntimeError as err:  # not JPEG/PNG/..., or damaged: PIL has the last word
            first = err
    return _decode_pil(data, first)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A 16-bit PNG decodes to uint16 (0-65535); stored into a uint8 batch it wrapped modulo 256 (a
    smooth ramp became a saw-tooth). Scaled as torchvision scales dtypes: the high byte."""
    if image.dtype == torch.uint8:
        return image
    from torchvision.transforms.v2.functional import to_dtype

    return to_dtype(image, torch.uint8, scale=True)


def _decode_pil(data: bytes | np.ndarray, first: BaseException) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadImage(f"{_reason(first)}; PIL: {_reason(err)}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


class _NoHeader(BadImage):
    """PIL found no header it knows (the decoders may still read the file)."""


def _header_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(height, width) from the header alone (PIL reads only the first few KB); BadImage over MAX_PIXELS."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:  # over 179 M: PIL gives no size, its message has the count
        count = re.search(r"\((\d+) pixels\)", str(err))
        raise BadImage(
            f"header says {count.group(1) if count else 'over 178956970'} pixels, over the cap of {MAX_PIXELS} (not decoded)"
        ) from None
    except Exception as err:  # noqa: BLE001  # PIL raises many types for a file it cannot identify
        raise _NoHeader(_reason(err)) from None
    if width * height > MAX_PIXELS:
        raise BadImage(f"header says {width} x {height} = {width * height} pixels, over the cap of {MAX_PIXELS} (not decoded)")
    return int(height), int(width)


def _check_pixels(data: bytes | np.ndarray) -> None:
    """BadImage if the header promises more than MAX_PIXELS; a header PIL cannot read is left to the decoders."""
    with contextlib.suppress(_NoHeader):
        _header_size(data)


def image_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(height, width) from the header alone; BadImage if there is none or it promises over MAX_PIXELS."""
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    return _header_size(data)
