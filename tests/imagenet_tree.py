"""Fake ImageNet trees in the official on-disk layouts, with real (small) image files.

    tree = make_imagenet_tree(tmp_path, classes=("n01440764", ...), per_class=4, val_layout="flat", ground_truth="devkit")
    tree.bad       -> relative paths of the files no decoder can read (truncated JPEG, zero bytes)
    tree.val_wnid  -> {val file stem: wnid}

Images are 40-120 px smooth random colour fields saved as RGB JPEG; with bad=True class 0 also
gets a grayscale JPEG, a CMYK JPEG, a PNG named .JPEG (all readable), a truncated JPEG and a
zero-byte file, and val gets one truncated JPEG. The flat val is named ILSVRC2012_val_%08d.JPEG,
labelled by a devkit (meta.mat written with scipy.io.savemat in the real struct layout: synsets
with ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height,
num_train_images, leaves first, then parent synsets) and its ground-truth txt, or by Kaggle's
LOC_val_solution.csv. Val images have the same stems in both layouts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASSES = ("n01440764", "n01443537", "n02085620")


@dataclass
class Tree:
    root: Path  # the data root (holds imagenet/)
    classes: list[str]
    train: list[str] = field(default_factory=list)  # relative to root/imagenet
    val: list[str] = field(default_factory=list)
    val_wnid: dict[str, str] = field(default_factory=dict)  # stem -> wnid
    bad: set[str] = field(default_factory=set)


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: a few random colours blended smoothly (crops and flips differ visibly)."""
    from PIL import Image

    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, fmt, quality=90)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_devkit(folder: Path, classes: list[str], val_ids_in_order: list[int], id_of: dict[str, int]) -> None:
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    rows = [(id_of[w], w, f"words of {w}", f"gloss of {w}", 0, np.zeros((1, 0)), 0, 1300) for w in classes]
    n = len(classes)
    rows += [(n + 1, "n00001740", "entity", "the root", 2, np.array([[n + 2, 1]], dtype=np.uint16), 19, 0)]
    rows += [(n + 2, "n00002137", "abstraction", "a parent", 1, np.array([[2]], dtype=np.uint16), 18, 0)]
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    data = folder / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    savemat(str(data / "meta.mat"), {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in val_ids_in_order))


def make_imagenet_tree(
    root: Path,
    classes: tuple[str, ...] = CLASSES,
    per_class: int = 4,
    val_per_class: int = 2,
    val_layout: str = "folders",
    ground_truth: str | None = "devkit",
    bad: bool = True,
    seed: int = 0,
) -> Tree:
    rng = np.random.default_rng(seed)
    folder = root / "imagenet"
    tree = Tree(root, sorted(classes))

    def size() -> tuple[int, int]:
        return int(rng.integers(40, 121)), int(rng.integers(40, 121))

    for c in classes:
        for i in range(per_class):
            rel = f"train/{c}/{c}_{i}.JPEG"
            _write(folder / rel, encode(smooth_image(rng, *size())))
            tree.train.append(rel)
    if bad:
        c = classes[0]
        specials = {
            f"train/{c}/{c}_gray.JPEG": encode(smooth_image(rng, *size()), mode="L"),
            f"train/{c}/{c}_cmyk.JPEG": encode(smooth_image(rng, *size()), mode="CMYK"),
            f"train/{c}/{c}_png.JPEG": encode(smooth_image(rng, *size()), fmt="PNG"),
            f"train/{c}/{c}_truncated.JPEG": encode(smooth_image(rng, 100, 100))[:400],
            f"train/{c}/{c}_empty.JPEG": b"",
        }
        for rel, data in specials.items():
            _write(folder / rel, data)
            tree.train.append(rel)
        tree.bad |= {f"train/{c}/{c}_truncated.JPEG", f"train/{c}/{c}_empty.JPEG"}

    # Val: numbered across classes in a shuffled order, as the official val set is.
    val_wnids = [c for c in classes for _ in range(val_per_class)]
    rng.shuffle(val_wnids)
    truncated_at = 1 if bad else None
    id_of = {w: len(classes) - k for k, w in enumerate(sorted(classes))}  # devkit IDs are not the class order
    for n, wnid in enumerate(val_wnids, start=1):
        stem = f"ILSVRC2012_val_{n:08d}"
        data = encode(smooth_image(rng, *size()))
        if n == truncated_at:
            data = data[: len(data) // 3]
        rel = f"val/{stem}.JPEG" if val_layout == "flat" else f"val/{wnid}/{stem}.JPEG"
        _write(folder / rel, data)
        tree.val.append(rel)
        tree.val_wnid[stem] = wnid
        if n == truncated_at:
            tree.bad.add(rel)
    if val_layout == "flat" and ground_truth == "devkit":
        write_devkit(folder, sorted(classes), [id_of[w] for w in val_wnids], id_of)
    elif val_layout == "flat" and ground_truth == "csv":
        lines = ["ImageId,PredictionString"] + [
            f"ILSVRC2012_val_{n:08d},{w} 1 2 30 40 {w} 5 6 20 20" for n, w in enumerate(val_wnids, start=1)
        ]
        (folder / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    (folder / "train" / classes[0] / "README.txt").write_text("not an image: ignored")
    return tree
