"""The published corrupted test sets, read from their official layouts under the data root.

    <data root>/CIFAR-10-C/<corruption>.npy          uint8 [50000, 32, 32, 3]: the CIFAR-10 test set at
                                                      severity 1 (rows 0-9999), 2 (10000-19999), ... 5
    <data root>/CIFAR-10-C/labels.npy                 int [50000]: the test labels, five times
    <data root>/Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG   64x64 images per class

`official_set(dataset, root)` says which layout a data set has, if its folder is there;
`read_official(...)` gives one (corruption, severity)'s images as uint8 [N, C, H, W], labels, and
each image's index in the clean test set where it is known (CIFAR-10-C keeps the test set's order;
Tiny-ImageNet-C images named as in val_annotations.txt), else -1. A file that is missing or not
of the layout is one UserError line naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.errors import UserError

FOLDERS = {"cifar10": "CIFAR-10-C", "tinyimagenet": "Tiny-ImageNet-C"}
CIFAR_PER_SEVERITY = 10_000  # the official files: the 10,000 test images at each severity


def official_set(dataset: str, root: Path) -> Path | None:
    """The folder of the data set's published corrupted copy under `root`, if there is one."""
    name = FOLDERS.get(dataset)
    if name is None or not (root / name).is_dir():
        return None
    return root / name


def _cifar(folder: Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path, labels_path = folder / f"{corruption}.npy", folder / "labels.npy"
    try:
        images = np.load(path, mmap_mode="r")
        labels = np.load(labels_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable CIFAR-10-C file ({str(err)[:80]}); expected <corruption>.npy and labels.npy") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) % 5 or len(labels) != len(images):
        raise UserError(f"{path}: shape {images.shape} with {len(labels)} labels; CIFAR-10-C holds [5 N, 32, 32, 3] uint8, as many labels")
    n = len(images) // 5
    part = slice((severity - 1) * n, severity * n)
    return np.array(images[part]).transpose(0, 3, 1, 2), np.array(labels[part], dtype=np.int64), np.arange(n)


def _tiny(folder: Path, root: Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    base = folder / corruption / str(severity)
    if not base.is_dir():
        raise UserError(f"{base}: missing; Tiny-ImageNet-C holds <corruption>/<severity 1-5>/<wnid>/*.JPEG")
    tiny = root / "tiny-imagenet-200"
    wnids_file = tiny / "wnids.txt"
    wnids = sorted(wnids_file.read_text().split()) if wnids_file.exists() else sorted(p.name for p in base.iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    clean: dict[str, int] = {}
    annotations = tiny / "val" / "val_annotations.txt"
    if annotations.exists():
        clean = {line.split("\t")[0]: i for i, line in enumerate(annotations.read_text().splitlines()) if line.strip()}
    images, labels, where = [], [], []
    for wnid_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if wnid_dir.name not in index:
            raise UserError(f"{wnid_dir}: {wnid_dir.name!r} is not one of the data set's {len(index)} classes")
        for path in sorted(wnid_dir.glob("*.JPEG")):
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB").resize((64, 64))).transpose(2, 0, 1))
            except (OSError, SyntaxError, ValueError) as err:
                raise UserError(f"{path}: not a readable image ({type(err).__name__})") from None
            labels.append(index[wnid_dir.name])
            where.append(clean.get(path.name, -1))
    if not images:
        raise UserError(f"{base}: no .JPEG images under its class folders")
    return np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(where, dtype=np.int64)


def read_official(dataset: str, root: Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (corruption, severity) of the published set: uint8 images [N, C, H, W], labels [N], clean test index [N] (-1: unknown)."""
    folder = official_set(dataset, root)
    if folder is None:
        raise UserError(f"{root}: no {FOLDERS.get(dataset, 'published corrupted copy')} folder for dataset '{dataset}'")
    return _cifar(folder, corruption, severity) if dataset == "cifar10" else _tiny(folder, root, corruption, severity)
