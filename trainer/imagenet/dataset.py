"""ImageNet for the trainer: the manifest, one of two loaders, and the validation set decoded once.

    data = ImageNetData(info, root, device, num_workers, loader="auto", cache_dir=None)
    data.train_batches(epoch, seed, batch_size, augment, start_step=0)  # -> (x float [B,3,224,224], y)
    data.test_batches(batch_size)                                       # val, from the cache
    data.skipped.as_dict()                                              # for status.json

Loaders (`loader`): "dali" decodes on the GPU (trainer.imagenet.dali), "nvjpeg" on the device with
torchvision's decode_jpeg (trainer.imagenet.nvjpeg, no DALI needed), "torchvision" in worker
processes on the CPU (trainer.imagenet.portable); "auto" is DALI when it imports and the device is
CUDA, else nvjpeg on CUDA, else torchvision. All deliver uint8 batches; they are normalised here, on
the device. The choice is a resource setting (never part of the trial id); the trial records the
loader it got in status.json (`loader`).

The first `test_batches` call decodes val (Resize 256 + CenterCrop 224) once into one uint8 tensor
[N, 3, 224, 224]: on the GPU when it fits with room to spare (see `_cache_on_device`), else in
pinned host memory (plain memory on a CPU). Every later evaluation reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import torch

from trainer.datatypes import Batch, DataInfo
from trainer.errors import UserError
from trainer.imagenet.augment import SIZE
from trainer.imagenet.manifest import Manifest, Split, ensure_manifest
from trainer.imagenet.plan import Plan, Source
from trainer.imagenet.portable import Decoded, portable_batches
from trainer.imagenet.skipped import SKIPPED, Skipped

log = logging.getLogger(__name__)
LOADERS = ("auto", "dali", "nvjpeg", "torchvision")
VAL_DECODE_BATCH = 256  # batch of the one val decoding pass (any size gives the same cache)
GiB = 1 << 30


def pick_loader(loader: str, device: torch.device) -> str:
    """ "dali", "nvjpeg" or "torchvision" for the `loader` setting on `device`; UserError if not possible."""
    from trainer.imagenet.dali import available

    if loader not in LOADERS:
        raise UserError(f"imagenet loader '{loader}' is unknown; use one of {', '.join(LOADERS)}")
    if loader == "auto":
        if device.type != "cuda":
            return "torchvision"
        return "dali" if available() else "nvjpeg"
    if loader == "dali" and not available():
        raise UserError(
            "imagenet loader 'dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 (the 'gpu' extra), or use loader 'torchvision'"
        )
    return loader


def _source(m: Manifest, split: Split) -> Source:
    return Source(str(m.folder), split.paths, split.labels, split.sizes_hw, split.bad)


class ImageNetData:
    """ImageNet streamed from its files through the manifest; same interface as TensorData."""

    def __init__(
        self,
        info: DataInfo,
        root: Path,
        device: torch.device,
        num_workers: int = 0,
        loader: str = "auto",
        cache_dir: str | Path | None = None,
        val_cache: str = "auto",
    ) -> None:
        self.info, self.device, self.num_workers = info, device, num_workers
        # DALI's CPU threads (Huffman decoding of what the JPEG engine does not take, CPU ops):
        # num_workers, or 4 when it is 0 (the spec's default, meant for the in-memory sets).
        self.dali_threads = num_workers or min(4, os.cpu_count() or 1)
        self.loader = pick_loader(loader, device)
        self.manifest = ensure_manifest(root, cache_dir)
        self.classes = self.manifest.classes
        self.train_source = _source(self.manifest, self.manifest.train)
        self.val_source = _source(self.manifest, self.manifest.val)
        for split in (self.manifest.train, self.manifest.val):
            for path, reason in split.bad_files():
                SKIPPED.record(path, f"manifest --check: {reason}")
        self.val_cache = val_cache
        self.decoded = 0  # images decoded by this object (all passes; tests count the val cache with it)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(info.std, device=device).view(1, -1, 1, 1) * 255

    # ---- the TensorData interface -----------------------------------------------------------
    @property
    def n_train(self) -> int:
        """Listed training images, known-bad ones included: the epoch's steps are n_train // batch."""
        return len(self.train_source)

    @property
    def n_test(self) -> int:
        """Validation images evaluated: after the cache is built, those that decoded."""
        return len(self._cache[1]) if self._cache is not None else int((~self.val_source.bad).sum())

    @property
    def train_aug(self) -> ImageNetData:
        """Compatibility: the former FolderData's `train_aug.classes`."""
        return self

    @property
    def skipped(self) -> Skipped:
        """Unreadable images skipped so far in this process (count, first paths, reasons)."""
        return SKIPPED.snapshot()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self._mean) / self._std

    def train_batches(self, epoch: int, seed: int, batch_size: int, augment: bool, start_step: int = 0) -> Generator[Batch, None, None]:
        """The epoch's batches from `start_step` on (earlier ones are not read: mid-epoch resume).

        The order is a permutation from (seed, epoch); crops and flips come from (seed, epoch,
        position). The ragged last batch is dropped; a batch loses the images that fail to decode.
        """
        plan = Plan(self.train_source, batch_size, seed, epoch, shuffle=True, augment=augment, drop_last=True)
        batches = self._decode(plan, start_step)
        try:
            for d in batches:
                if len(d.labels):  # an all-bad batch (never seen in ImageNet) is left out, not yielded empty
                    yield self.normalise(d.images.to(self.device, non_blocking=True)), d.labels.to(self.device, non_blocking=True)
        finally:
            batches.close()  # also when the consumer stops early or raises: workers go at once

    def test_batches(self, batch_size: int, subset: torch.Tensor | None = None) -> Iterator[Batch]:
        """The validation set in file order (or its images `subset`), normalised on the device; decoded on the first call only."""
        images, labels = self._val()
        if subset is not None:
            images, labels = images[subset.to(images.device)], labels[subset.to(labels.device)]
        for i in range(0, len(labels), batch_size):
            x = images[i : i + batch_size].to(self.device, non_blocking=True)
            yield self.normalise(x), labels[i : i + batch_size]

    # ---- internals ----------------------------------------------------------------------------
    def _decode(self, plan: Plan, start_step: int) -> Generator[Decoded, None, None]:
        pin = self.device.type == "cuda"
        if self.loader == "dali":
            from trainer.imagenet.dali import dali_batches

            batches: Generator[Decoded, None, None] = dali_batches(plan, start_step, self.device, num_threads=self.dali_threads)
        elif self.loader == "nvjpeg":
            from trainer.imagenet.nvjpeg import nvjpeg_batches, reader_threads

            batches = nvjpeg_batches(plan, start_step, self.device, reader_threads(self.num_workers))
        else:
            batches = portable_batches(plan, start_step, self.num_workers, pin)
        try:
            for d in batches:
                self.decoded += d.decoded
                for row, path, reason in d.skipped:
                    plan.source.bad[row] = True  # later passes in this process do not read it again
                    SKIPPED.record(path, reason)
                yield d
        finally:
            batches.close()  # shuts the workers / the pipeline down now, not at garbage collection

    def _cache_on_device(self, nbytes: int) -> bool:
        """On the GPU if, after it, half the card (at least 8 GiB) is still free for training."""
        if self.device.type != "cuda" or self.val_cache == "cpu":
            return False
        if self.val_cache == "device":
            return True
        free, total = torch.cuda.mem_get_info(self.device)
        return nbytes + max(total // 2, 8 * GiB) <= free

    def _val(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is not None:
            return self._cache
        n = len(self.val_source)
        nbytes = n * 3 * SIZE * SIZE
        on_device = self._cache_on_device(nbytes)
        where = self.device if on_device else torch.device("cpu")
        images = torch.empty((n, 3, SIZE, SIZE), dtype=torch.uint8, device=where, pin_memory=not on_device and self.device.type == "cuda")
        labels = torch.empty(n, dtype=torch.int64)
        filled = 0
        for d in self._decode(Plan(self.val_source, VAL_DECODE_BATCH), 0):
            k = len(d.labels)
            # Host -> GPU may overlap; GPU (DALI) -> host must not (the host buffer is read right after).
            images[filled : filled + k].copy_(d.images, non_blocking=where.type == "cuda")
            labels[filled : filled + k] = d.labels
            filled += k
        log.info("imagenet: val cached, %d images (%.1f GB) on %s", filled, filled * 3 * SIZE * SIZE / 1e9, where)
        self._cache = (images[:filled], labels[:filled].to(self.device))
        return self._cache

    def close(self) -> None:
        """Drop the val cache (loader workers live only while an iterator is open)."""
        self._cache = None
