"""ImageNet input for the trainer: layouts, a cached manifest, two loaders, a val cache.

    python -m trainer.imagenet.manifest --data-root DIR [--check] [--workers N]   # list (and check) once

Modules, one job each:
    layout    the on-disk layouts (train/val class folders, flat val + devkit or Kaggle CSV)
    manifest  listing -> cached Parquet manifest, staleness, ensure_manifest / preflight, the command
    check     --check: decode every image in parallel processes, with a progress bar
    decode    bytes -> RGB uint8 (torchvision.io, then PIL), header sizes
    augment   epoch order, per-position draws, RandomResizedCrop / Resize+CenterCrop geometry
    plan      which samples each batch holds (shared by both loaders)
    portable  DataLoader workers that decode whole batches (CPU)
    feeder    the CPU side of the DALI loader (bytes + geometry)
    dali      the DALI pipeline (optional dependency; the only module that imports DALI)
    workers   the forkserver context of every process pool (keeps the trial lock out of workers)
    skipped   the process's log of unreadable images
    dataset   ImageNetData: what trainer.data.load_dataset returns for "imagenet"
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.imagenet.dataset import ImageNetData, pick_loader
    from trainer.imagenet.manifest import Manifest, ensure_manifest, manifest_dir, preflight
    from trainer.imagenet.skipped import SKIPPED, Skipped

# Imported on first use (PEP 562): `python -m trainer.imagenet.manifest` must not find its own
# module imported already by the package, and workers import only what they need.
_WHERE = {
    "ImageNetData": "dataset",
    "pick_loader": "dataset",
    "Manifest": "manifest",
    "ensure_manifest": "manifest",
    "manifest_dir": "manifest",
    "preflight": "manifest",
    "SKIPPED": "skipped",
    "Skipped": "skipped",
}
__all__ = ["SKIPPED", "ImageNetData", "Manifest", "Skipped", "ensure_manifest", "manifest_dir", "pick_loader", "preflight"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'trainer.imagenet' has no attribute {name!r}")
    return getattr(import_module(f"trainer.imagenet.{_WHERE[name]}"), name)
