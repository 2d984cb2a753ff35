"""The CPU side of the GPU loader: encoded bytes plus our crop windows and flips, per batch.

When the GPU decodes (DALI, trainer.imagenet.dali), all the CPU does per image is read the file,
learn its size (from the manifest after --check, else from the header: PIL reads a few KB), and
turn the sample's uniforms into its geometry (trainer.imagenet.augment). Files are read by a small
thread pool: on a cluster file system reads wait on the network, not the CPU. This module does not
import DALI, so its cost can be measured (benchmarks.imagenet_loader) and tested without it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from trainer.imagenet.augment import SIZE
from trainer.imagenet.decode import BadImage, image_size, read_bytes
from trainer.imagenet.plan import Item, Plan


@dataclass
class Encoded:
    """One batch as DALI's external_source takes it (one array per sample), and its bookkeeping."""

    step: int
    data: list[np.ndarray] = field(default_factory=list)  # encoded files, uint8
    crop_anchor: list[np.ndarray] = field(default_factory=list)  # int32 (top, left)
    crop_shape: list[np.ndarray] = field(default_factory=list)  # int32 (height, width)
    out_size: list[np.ndarray] = field(default_factory=list)  # float32 (height, width) after resize
    post_anchor: list[np.ndarray] = field(default_factory=list)  # int32 (top, left) of the 224x224 cut
    post_shape: list[np.ndarray] = field(default_factory=list)  # int32 (224, 224)
    flip: list[np.ndarray] = field(default_factory=list)  # int32 0/1
    labels: list[int] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)  # the samples fed (for the CPU fallback)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (row, relative path, reason)

    def __len__(self) -> int:
        return len(self.data)


_POST_SHAPE = np.array([SIZE, SIZE], np.int32)


class Feeder:
    """Prepares batches of `plan` in the main process; `threads` read files in parallel."""

    def __init__(self, plan: Plan, threads: int = 4) -> None:
        self.plan = plan
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def _read(self, item: Item) -> bytes | BadImage:
        try:
            return read_bytes(os.path.join(self.plan.source.folder, self.plan.source.path(item.index)))
        except BadImage as err:
            return err

    def batch(self, step: int) -> Encoded:
        src = self.plan.source
        items = [it for it in self.plan.items(step) if not src.bad[it.index]]
        blobs = list(self.pool.map(self._read, items)) if self.pool is not None else [self._read(it) for it in items]
        enc = Encoded(step)
        for item, blob in zip(items, blobs):
            try:
                if isinstance(blob, BadImage):
                    raise blob
                h, w = (int(v) for v in src.sizes_hw[item.index])
                if h < 0:
                    h, w = image_size(blob)
            except BadImage as err:
                enc.skipped.append((item.index, src.path(item.index), str(err)))
                continue
            g = self.plan.geometry(item, h, w)
            enc.data.append(np.frombuffer(blob, dtype=np.uint8))
            enc.crop_anchor.append(np.array([g.top, g.left], np.int32))
            enc.crop_shape.append(np.array([g.height, g.width], np.int32))
            enc.out_size.append(np.array([g.out_h, g.out_w], np.float32))
            enc.post_anchor.append(np.array([g.post_top, g.post_left], np.int32))
            enc.post_shape.append(_POST_SHAPE)
            enc.flip.append(np.array(int(g.flip), np.int32))
            enc.labels.append(int(src.labels[item.index]))
            enc.items.append(item)
        return enc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
