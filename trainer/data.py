"""The four data sets, read from their standard on-disk layouts; nothing is ever downloaded.

Sets that fit in memory (digits, CIFAR-10, Tiny ImageNet) live on the training device as uint8
and are shuffled, cropped, flipped and normalised there in whole batches. ImageNet streams from
its files through a cached manifest and a DALI or torchvision loader (trainer.imagenet). Both give
the loop the same two iterators:

    data.train_batches(epoch, seed, batch_size, augment, start_step=0) -> (x float [B,C,H,W], y int64 [B])
    data.test_batches(batch_size)                                       -> the whole test set, in order

Data order and augmentation come from a generator seeded by (seed, epoch), so an epoch replays
exactly after a resume and is the same on CPU and GPU; `start_step` skips the batches a
mid-epoch resume has consumed already. `data.skipped` counts unreadable images (ImageNet only).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
import torch.nn.functional as F

from trainer.datatypes import Batch, DataInfo, DataMissing, epoch_generator

if TYPE_CHECKING:
    from trainer.imagenet.dataset import ImageNetData
    from trainer.imagenet.skipped import Skipped


# ---- in-memory data sets ------------------------------------------------------------------
class TensorData:
    """A data set held as uint8 tensors on the training device."""

    def __init__(self, info: DataInfo, train: Batch, test: Batch, device: torch.device) -> None:
        self.info = info
        self.train_x, self.train_y = train[0].to(device), train[1].to(device)
        self.test_x, self.test_y = test[0].to(device), test[1].to(device)
        self.device = device
        self._mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(info.std, device=device).view(1, -1, 1, 1) * 255

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_test(self) -> int:
        return len(self.test_y)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self._mean) / self._std

    @property
    def skipped(self) -> Skipped:
        """Nothing is ever skipped in memory; here so the trainer reads every data set alike."""
        from trainer.imagenet.skipped import Skipped

        return Skipped(0, ())

    def train_batches(self, epoch: int, seed: int, batch_size: int, augment: bool, start_step: int = 0) -> Generator[Batch, None, None]:
        """The epoch's batches from `start_step` on: those of the whole epoch minus the first `start_step`."""
        gen = epoch_generator(seed, epoch)
        n = self.n_train
        order = torch.randperm(n, generator=gen)
        steps = n // batch_size  # drop the ragged last batch: class means need a full batch
        pad = self.info.crop_pad if augment else 0
        # All random numbers of the epoch are drawn up front on the CPU: same stream on any device.
        shifts = torch.randint(0, 2 * pad + 1, (steps * batch_size, 2), generator=gen) if pad else None
        flips = torch.rand(steps * batch_size, generator=gen) < 0.5 if (augment and self.info.flip) else None
        for i in range(start_step, steps):  # the draws above cover the whole epoch: the tail is unchanged
            sl = slice(i * batch_size, (i + 1) * batch_size)
            idx = order[sl].to(self.device)
            x = self.train_x[idx]
            if shifts is not None:
                x = random_crop(x, pad, shifts[sl].to(self.device))
            if flips is not None:
                x = torch.where(flips[sl].to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
            yield self.normalise(x), self.train_y[idx]

    def test_batches(self, batch_size: int, subset: torch.Tensor | None = None) -> Iterator[Batch]:
        """The test set in order, or the images `subset` (indices) of it."""
        x, y = (self.test_x, self.test_y) if subset is None else (self.test_x[subset.to(self.device)], self.test_y[subset.to(self.device)])
        for i in range(0, len(y), batch_size):
            yield self.normalise(x[i : i + batch_size]), y[i : i + batch_size]


def random_crop(x: torch.Tensor, pad: int, shifts: torch.Tensor) -> torch.Tensor:
    """Batched random crop with zero padding: sample b is cut at (shifts[b,0], shifts[b,1])."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=x.device).view(1, h) + shifts[:, :1]).view(b, 1, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + shifts[:, 1:]).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows, cols]


# ---- readers of the on-disk layouts ---------------------------------------------------------
# What must exist under the data root for each data set, and how to get it there.
REQUIRED: dict[str, tuple[tuple[str, ...], str]] = {
    "digits": ((), "ships inside scikit-learn"),
    "cifar10": (
        tuple(f"cifar-10-batches-py/{f}" for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]),
        "extract the CIFAR-10 python version (cifar-10-python.tar.gz) under the data root",
    ),
    "tinyimagenet": (
        ("tiny-imagenet-200/train", "tiny-imagenet-200/val/val_annotations.txt"),
        "unzip tiny-imagenet-200.zip under the data root (train/<wnid>/images/*.JPEG, val/images, val/val_annotations.txt)",
    ),
    "imagenet": (
        ("imagenet/train", "imagenet/val"),
        (
            "put ImageNet's train/<wnid>/*.JPEG and val/ (class folders, or the flat ILSVRC2012_val_*.JPEG with the devkit "
            "or LOC_val_solution.csv) under <data root>/imagenet"
        ),
    ),
}


def check_data(name: str, root: str | Path) -> None:
    """Raise DataMissing (one line: the path looked at, how to get the data) unless `name` is there.

    Cheap (a few stat calls): what every trial checks as it opens its data.
    """
    root = Path(root).expanduser()
    paths, how = REQUIRED[name]
    for rel in paths:
        if not (root / rel).exists():
            raise DataMissing(
                f"dataset '{name}': {root / rel} not found; {how} "
                "(data root: the trial field data_root, a profile's data_root, or SWEEP_DATA_ROOT)"
            )


def preflight_data(name: str, root: str | Path, cache_dir: str | Path | None = None) -> None:
    """A launcher's check of data set `name` before anything is written: one DataMissing line if unusable.

    Not only there but readable, so a damaged copy fails the launch at once, naming the file,
    rather than every trial and each of its attempts: every CIFAR-10 batch file loads (with the
    same restricted unpickler the trials use) and holds images and labels; Tiny ImageNet's class
    folders and validation images are listable and non-empty and every image decodes.
    ImageNet's train/val classes must agree (trainer.imagenet.preflight, which builds or loads its
    cached manifest, so the trials never list the tree).
    """
    check_data(name, root)
    root = Path(root).expanduser()
    if name == "cifar10":
        for path in _cifar_files(root):
            _read_cifar_batch(path)
    elif name == "tinyimagenet":
        _preflight_tinyimagenet(root / "tiny-imagenet-200")
    elif name == "imagenet":
        from trainer.imagenet.manifest import ensure_manifest

        classes = len(ensure_manifest(root, cache_dir).classes)
        if classes > DATASETS["imagenet"][0].num_classes:  # labels past the network's outputs: every trial would crash
            raise DataMissing(
                f"dataset 'imagenet': {root / 'imagenet' / 'train'} holds {classes} class folders; allowed: at most "
                f"{DATASETS['imagenet'][0].num_classes} (the network's outputs), the ILSVRC-2012 classes"
            )


def _unusable(name: str, path: Path, what: str) -> DataMissing:
    return DataMissing(f"dataset '{name}': {path} {what}; {REQUIRED[name][1]}")


def _preflight_tinyimagenet(folder: Path) -> None:
    """Class folders whose images are all non-empty files, validation images of known classes
    likewise, no more classes than the network's outputs, and every image decodes."""
    train = folder / "train"
    try:
        classes = sorted(p for p in train.iterdir() if p.is_dir())
    except OSError as err:
        raise _unusable("tinyimagenet", train, f"cannot be listed ({err.strerror or err})") from None
    if not classes:
        raise _unusable("tinyimagenet", train, "has no class folders")
    train_images: list[Path] = []
    for wnid in classes:
        images = wnid / "images"
        try:
            with os.scandir(images) as it:
                found = sorted((e.name, e.stat().st_size) for e in it if e.name.endswith(".JPEG"))
        except OSError as err:
            raise _unusable("tinyimagenet", images, f"cannot be listed ({err.strerror or err})") from None
        if not found:
            raise _unusable("tinyimagenet", images, "holds no .JPEG image")
        for name, size in found:
            if size == 0:
                raise _unusable("tinyimagenet", images / name, "is empty (0 bytes)")
        train_images += [images / name for name, _ in found]
    annotations = folder / "val" / "val_annotations.txt"
    wnids_file = folder / "wnids.txt"  # the classes, as read_tinyimagenet takes them
    try:
        lines = [line for line in annotations.read_text().splitlines() if line.strip()]
        known = set(wnids_file.read_text().split()) if wnids_file.exists() else {c.name for c in classes}
    except (OSError, UnicodeDecodeError) as err:
        raise _unusable("tinyimagenet", annotations.parent.parent, f"has an unreadable text file ({str(err)[:100]})") from None
    if not lines:
        raise _unusable("tinyimagenet", annotations, "is empty")
    outputs = DATASETS["tinyimagenet"][0].num_classes
    if len(known) > outputs:  # labels past the network's outputs: every trial would crash in its loss
        listed = wnids_file if wnids_file.exists() else train
        raise _unusable("tinyimagenet", listed, f"lists {len(known)} classes, more than the network's {outputs} outputs")
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in known:
            shown = fields[1][:40] if len(fields) > 1 else line[:40]
            raise _unusable("tinyimagenet", annotations, f"line {number}: {shown!r} is not '<image><TAB><wnid>' of a known class")
        image = folder / "val" / "images" / fields[0]
        try:
            empty = image.stat().st_size == 0
        except OSError as err:
            why = f"(line {number} of {annotations.name}) cannot be read ({err.strerror or err})"
            raise _unusable("tinyimagenet", image, why) from None
        if empty:
            raise _unusable("tinyimagenet", image, "is empty (0 bytes)")
    # Every image decodes, as each trial decodes them all (a partial download or an HTML page saved
    # as .JPEG once failed every trial after the folders were written): ~0.1 ms each, in threads
    # (PIL decodes without the GIL); the first bad one in listing order is named.
    val_images = [folder / "val" / "images" / line.split("\t")[0] for line in lines]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(_decode, [*train_images, *val_images], chunksize=256):
            pass


def _decode(path: Path) -> np.ndarray:
    """One Tiny ImageNet image as uint8 [3, 64, 64]; DataMissing naming the file if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((64, 64))).transpose(2, 0, 1)
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's ways of saying "not an image"
        said = str(err).replace(f" '{path}'", "").replace(str(path), "the file")[:80]  # PIL repeats the path, named already
        raise _unusable("tinyimagenet", path, f"is not a readable image ({type(err).__name__}: {said})") from None


def read_digits(root: Path) -> tuple[Batch, Batch]:
    """scikit-learn's 1797 8x8 digits, split 80/20 stratified with a fixed permutation.

    The split uses numpy's legacy RandomState, whose stream is frozen across numpy versions, so
    every machine gets the same split.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    labels = d.target.astype(np.int64)
    rng = np.random.RandomState(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: round(0.2 * len(idx))]] = True
    as_t = torch.from_numpy
    return (as_t(images[~test]), as_t(labels[~test])), (as_t(images[test]), as_t(labels[test]))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's python format is pickle; allow only numpy arrays and builtins, never code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            # Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1") (a batch file re-saved
            # by Python 3); it only turns text into bytes, as in torch's weights_only allow-list.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _cifar_files(root: Path) -> list[Path]:
    folder = root / "cifar-10-batches-py"
    return [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch"]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's images [N, 3, 32, 32] and labels [N]; a file that is not one is a
    DataMissing line naming it (zero bytes, truncated, not a pickle, or code in the pickle)."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
        if len(x) == 0 or y.shape != (len(x),) or not ((y >= 0) & (y < 10)).all():
            raise ValueError(f"{len(x)} images but labels of shape {y.shape} (expected one label 0-9 per image)")
    except pickle.UnpicklingError as err:  # what the restricted unpickler refuses, or not a pickle
        raise CifarUnreadable(_unreadable(path, err)) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise DataMissing(_unreadable(path, err)) from None
    return x, y


def _unreadable(path: Path, err: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    why = f"{type(err).__name__}: {str(err)[:100]}" if str(err) else type(err).__name__
    return f"dataset 'cifar10': {path} is not a CIFAR-10 batch file ({size} bytes; {why}); {REQUIRED['cifar10'][1]}"


class CifarUnreadable(DataMissing, pickle.UnpicklingError):
    """A batch file the restricted unpickler refuses: a user mistake, still an UnpicklingError."""


def read_cifar10(root: Path) -> tuple[Batch, Batch]:
    parts = [_read_cifar_batch(f) for f in _cifar_files(root)]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    t = torch.from_numpy
    return (t(train_x), t(train_y)), (t(parts[5][0]), t(parts[5][1]))


def _read_images(paths: list[Path]) -> np.ndarray:
    out = np.empty((len(paths), 3, 64, 64), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = _decode(p)
    return out


def read_tinyimagenet(root: Path) -> tuple[Batch, Batch]:
    folder = root / "tiny-imagenet-200"
    wnids_file = folder / "wnids.txt"
    wnids = wnids_file.read_text().split() if wnids_file.exists() else [p.name for p in (folder / "train").iterdir()]
    index = {w: i for i, w in enumerate(sorted(wnids))}
    train = [(p, index[w]) for w in sorted(index) for p in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    val = []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        if not line.strip():
            continue  # a blank line (a trailing newline too many): skipped, as the launcher's check skips it
        name, wnid = line.split("\t")[:2]
        val.append((folder / "val" / "images" / name, index[wnid]))
    if not train or not val:
        raise DataMissing(f"dataset 'tinyimagenet': no JPEG images under {folder / 'train'} or in val_annotations.txt")

    def load(items: list[tuple[Path, int]]) -> Batch:
        x = _read_images([p for p, _ in items])
        return torch.from_numpy(x), torch.tensor([c for _, c in items], dtype=torch.int64)

    return load(train), load(val)


# ImageNet lives in trainer.imagenet (imported when opened): Union with a forward reference.
Data = Union[TensorData, "ImageNetData"]

_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS: dict[str, tuple[DataInfo, Callable[[Path], tuple[Batch, Batch]] | None]] = {
    # (info, reader into memory); reader None: streamed from folders.
    "digits": (DataInfo(10, 1, (0.3053,), (0.3761,), crop_pad=1, flip=False), read_digits),
    "cifar10": (
        DataInfo(10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_pad=4, flip=True),
        read_cifar10,
    ),
    "tinyimagenet": (DataInfo(200, 3, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), crop_pad=8, flip=True), read_tinyimagenet),
    "imagenet": (DataInfo(1000, 3, *_IMAGENET_STATS, crop_pad=0, flip=True), None),
}


def data_info(name: str) -> DataInfo:
    return DATASETS[name][0]


INPUT_NORMS = ("dataset", "half")  # the trial field input_norm


def with_input_norm(info: DataInfo, norm: str) -> DataInfo:
    """`info` with the normalisation a trial asks for: "dataset" its channel statistics, "half"
    0.5 / 0.5 per channel (inputs in [-1, 1]; Ranadive et al.'s CIFAR-10 recipe)."""
    if norm == "dataset":
        return info
    if norm != "half":
        raise ValueError(f"input norm must be one of {INPUT_NORMS}, got {norm!r}")
    half = (0.5,) * info.in_channels
    return dataclasses.replace(info, mean=half, std=half)


def load_dataset(
    name: str,
    root: str | Path,
    device: torch.device,
    num_workers: int = 0,
    *,
    loader: str = "auto",
    cache_dir: str | Path | None = None,
    norm: str = "dataset",
) -> Data:
    """Open data set `name` under `root` on `device`; DataMissing (one line) if it is not there.

    `norm`: how inputs are normalised (with_input_norm). ImageNet only: `loader` "auto" | "dali" |
    "torchvision" (trainer.imagenet.dataset), `cache_dir` where its manifest is cached (default
    $SWEEP_CACHE_DIR, else ~/.cache/selectivity-sweep), `num_workers` decoding processes
    (torchvision) or DALI CPU threads.
    """
    info, reader = DATASETS[name]
    info = with_input_norm(info, norm)
    root = Path(root).expanduser()
    check_data(name, root)
    if reader is None:
        from trainer.imagenet.dataset import ImageNetData

        return ImageNetData(info, root, device, num_workers, loader=loader, cache_dir=cache_dir)
    train, test = reader(root)
    return TensorData(info, train, test, device)


def eval_batch_size(data: Data, train_batch: int, device: torch.device) -> int:
    """Evaluation batch: the numbers do not depend on it (eval mode), only the speed does.

    In-memory test sets: 1000 on a GPU; 256 on a CPU, where bigger batches overflow the cache
    (ResNet20/CIFAR: 2.9 s per 1000 images at 1000 vs 1.3 s at 128). Streamed: the train batch.
    """
    if not hasattr(data, "test_x"):
        return train_batch
    return 1000 if device.type == "cuda" else 256
