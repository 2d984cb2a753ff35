"""ImageNet input, old vs new, per CPU core, on generated ImageNet-like JPEGs.

    python -m benchmarks.imagenet_loader [--images 96] [--passes 3] [--workdir DIR]

Writes a tree of ~500x375 JPEGs (quality 90, ~100-110 KB, multi-scale noise that compresses like
photographs) and times, in this one process with one intra-op thread:

  (i)   today's path: PIL decode + RandomResizedCrop + flip + ToTensor + Normalize (ImageFolder's work)
  (ii)  the portable loader's worker task: read, decode_jpeg, cut, uint8 antialiased resize, flip, stack
  (iii) the CPU side of the GPU loaders (DALI, nvjpeg): read, header size, geometry, the arrays
  (iv)  DALI with CPU operators, one thread (if nvidia.dali imports)
  (v)   the nvjpeg loader on a CPU device (decode_jpeg on the CPU, batched; a check, not its use)
  and evaluation passes over val: decoding every pass vs the uint8 cache decoded once.

"Per core" is images per CPU second of this process (all its threads, time.process_time), which
stays meaningful on a busy machine; wall-clock images/s are shown too. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

WIDTH, HEIGHT = 500, 375


def natural_jpeg(rng: np.random.Generator) -> bytes:
    """~500x375 RGB at quality 90, ~100-110 KB: noise at 5 scales with a photograph-like spectrum."""
    from PIL import Image

    img = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for cells, amp in ((4, 90), (16, 50), (64, 30), (200, 18), (500, 15)):
        small = rng.normal(0, 1, (max(2, HEIGHT * cells // WIDTH), cells, 3)).astype(np.float32)
        layer = Image.fromarray(np.uint8(np.clip(small * 40 + 128, 0, 255))).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        img += (np.asarray(layer, np.float32) - 128) * amp / 40
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(img + 128, 0, 255))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_tree(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "imagenet"
    for split, n in (("train", images), ("val", max(8, images // 2))):
        for k in range(n):
            wnid = ("n01440764", "n01443537")[k % 2]
            path = folder / split / wnid / f"{wnid}_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(natural_jpeg(rng))


def measure(run: Callable[[], int], passes: int) -> tuple[float, float]:
    """(images per CPU second, images per wall second) over `passes` runs after one warm-up."""
    run()
    cpu, wall, n = time.process_time(), time.perf_counter(), 0
    for _ in range(passes):
        n += run()
    return n / max(1e-9, time.process_time() - cpu), n / max(1e-9, time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.imagenet_loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96, help="training images generated (val: half)")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the images per method")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workdir", default=None, help="keep the generated tree here (default: a temporary folder)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    from PIL import Image
    from torchvision import transforms

    from trainer.data import data_info
    from trainer.imagenet.dataset import ImageNetData
    from trainer.imagenet.feeder import Feeder
    from trainer.imagenet.manifest import ensure_manifest
    from trainer.imagenet.plan import Plan, Source
    from trainer.imagenet.portable import decode_items

    root = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="imagenet-bench-"))
    if not (root / "imagenet").exists():
        t = time.perf_counter()
        make_tree(root, a.images)
        print(f"generated {a.images} + {max(8, a.images // 2)} JPEGs in {time.perf_counter() - t:.0f} s under {root}")
    cache = root / "cache"
    m = ensure_manifest(root, cache)
    src = Source(str(m.folder), m.train.paths, m.train.labels, m.train.sizes_hw, m.train.bad)
    files = [os.path.join(src.folder, p) for p in m.train.table.column("path").to_pylist()]
    sizes = m.train.table.column("size").to_numpy()
    print(f"{len(files)} train JPEGs, mean {sizes.mean() / 1e3:.0f} KB, {WIDTH}x{HEIGHT}; val {len(m.val)}")
    B = a.batch
    rows: list[tuple[str, float, float]] = []

    info = data_info("imagenet")
    old_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )

    def old() -> int:  # what an ImageFolder worker did per image, then default_collate's stack
        for i in range(0, len(files), B):
            batch = []
            for f in files[i : i + B]:
                with open(f, "rb") as fh:
                    batch.append(old_tf(Image.open(fh).convert("RGB")))
            torch.stack(batch)
        return len(files)

    rows.append(("(i) today: PIL + RandomResizedCrop + ToTensor + Normalize (float32 out)", *measure(old, a.passes)))
    epoch = [0]

    def plan() -> Plan:
        epoch[0] += 1
        return Plan(src, B, seed=0, epoch=epoch[0], shuffle=True, augment=True)

    def portable() -> int:
        pl = plan()
        return sum(len(decode_items(pl, pl.items(s)).labels) for s in range(pl.steps))

    rows.append(("(ii) portable: decode_jpeg + crop + uint8 resize + flip (uint8 out)", *measure(portable, a.passes)))

    def feeder() -> int:
        pl = plan()
        f = Feeder(pl, threads=1)
        return sum(len(f.batch(s)) for s in range(pl.steps))

    rows.append(("(iii) GPU paths (DALI, nvjpeg), CPU side: read + header + geometry + arrays", *measure(feeder, a.passes)))

    from trainer.imagenet.nvjpeg import nvjpeg_batches

    def nvjpeg_cpu() -> int:
        return sum(len(d.labels) for d in nvjpeg_batches(plan(), 0, torch.device("cpu"), reader_threads=1, prefetch=1))

    rows.append(("(v) nvjpeg path on a CPU device: batched decode_jpeg + the same cut (uint8 out)", *measure(nvjpeg_cpu, a.passes)))

    try:
        from trainer.imagenet.dali import dali_batches

        def dali() -> int:
            return sum(len(d.labels) for d in dali_batches(plan(), 0, torch.device("cpu"), num_threads=1, reader_threads=1))

        rows.append(("(iv) DALI, CPU operators, 1 thread (uint8 out)", *measure(dali, a.passes)))
    except ImportError:
        rows.append(("(iv) DALI: not installed", float("nan"), float("nan")))

    data = ImageNetData(info, root, torch.device("cpu"), 0, loader="torchvision", cache_dir=cache)
    n_val = len(m.val)

    def val_decode() -> int:
        data._cache = None  # what every evaluation pass cost before: decode all of val again
        return sum(len(y) for _, y in data.test_batches(B))

    def val_cached() -> int:
        return sum(len(y) for _, y in data.test_batches(B))

    rows.append((f"val pass, decoding every pass ({n_val} images, normalised out)", *measure(val_decode, a.passes)))
    data._val()
    rows.append(("val pass, from the uint8 cache (decoded once)", *measure(val_cached, a.passes)))

    base = rows[0][1]
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, 1 intra-op thread\n")
    print("| method | images/s per core (CPU s) | images/s wall | vs (i) |")
    print("|---|---:|---:|---:|")
    for name, per_cpu, per_wall in rows:
        print(f"| {name} | {per_cpu:,.0f} | {per_wall:,.0f} | {per_cpu / base:.1f}x |")
    if not a.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
