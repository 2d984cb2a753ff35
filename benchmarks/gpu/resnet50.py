"""ResNet-50 rows: training from tensors on the device, through each loader, evaluation, compiled.

Every row builds its own model (isolation) and trains with trainer.loop.train_epoch, bf16 autocast,
channels-last on CUDA, alpha 0 (the loader rows measure input, not the regularizer).

Loader rows read generated ImageNet-sized JPEGs (benchmarks.imagenet_loader.natural_jpeg, made in
parallel over the CPUs). The training list repeats the generated files (`repeat`), so one pass is
long: the loader starts its workers (or threads) once, the first `warmup` batches fill its queue,
and the steady state after them is timed. The stall is 1 - loader / synthetic.

`shrink` (the --small form only): batches are average-pooled to `image` px before the model, so a
CPU can afford the model; the loader still decodes and cuts 224 px crops.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from benchmarks.gpu.report import Result
from benchmarks.gpu.steps import measure
from trainer.data import Batch, data_info
from trainer.imagenet.plan import Source
from trainer.loop import evaluate, optimizer_for, train_epoch
from trainer.models import TrackedNet, build_model
from trainer.spec import TrialSpec

if TYPE_CHECKING:
    from trainer.imagenet.dataset import ImageNetData

CLASSES = 1000
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")


@dataclass(frozen=True)
class Sizes:
    batch: int
    image: int  # model input side (224; --small: smaller, see `shrink`)
    warmup: int
    steps: int
    seconds: float
    train_files: int
    val_files: int
    repeat: int  # the training list is the generated files this many times over
    workers: int  # portable loader's processes; nvjpeg/DALI reader threads


# ---- data ------------------------------------------------------------------------------------------
def _write(task: tuple[str, str, int, int]) -> None:
    from benchmarks.imagenet_loader import natural_jpeg

    folder, split, start, stop = task
    rng = np.random.default_rng([split == "val", start])
    for k in range(start, stop):
        wnid = WNIDS[k % len(WNIDS)]
        path = Path(folder) / split / wnid / f"{wnid}_{k}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(natural_jpeg(rng))


def make_jpegs(root: Path, train: int, val: int, processes: int) -> None:
    """`train` + `val` ~500x375 JPEGs under root/imagenet/{train,val}/<wnid>/, in `processes` processes.

    Forked (numpy and PIL only in the children): called before anything in this process uses CUDA.
    """
    import multiprocessing

    folder = str(root / "imagenet")
    tasks = []
    for split, n in (("train", train), ("val", val)):
        chunk = max(1, -(-n // max(1, processes * 2)))
        tasks += [(folder, split, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    if processes <= 1:
        for t in tasks:
            _write(t)
        return
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_write, tasks))


def repeated(src: Source, times: int) -> Source:
    """The training list `times` over (one long pass; the order is still a seeded permutation)."""
    return Source(
        src.folder,
        pa.concat_arrays([src.paths] * times),
        np.tile(src.labels, times),
        np.tile(src.sizes_hw, (times, 1)),
        np.tile(src.bad, times),
    )


# ---- model and steps ---------------------------------------------------------------------------------
def _model(device: torch.device) -> TrackedNet:
    torch.manual_seed(0)
    m = build_model("resnet50", CLASSES, 3)  # the ImageNet stem (7x7, stride 2, max-pool) whatever `image` is
    return m.to(device).to(memory_format=torch.channels_last) if device.type == "cuda" else m.to(device)


def _shrink(batches: Iterator[Batch], image: int) -> Generator[Batch, None, None]:
    for x, y in batches:
        yield (x if x.shape[-1] == image else F.adaptive_avg_pool2d(x, image)), y


def _train(model: TrackedNet, opt: torch.optim.Optimizer, batches: Iterator[Batch], device: torch.device) -> int:
    return train_epoch(model, opt, batches, 0.0, CLASSES, device).images


def synthetic(s: Sizes, device: torch.device, compile_: bool = False) -> Result:
    model = _model(device)
    compiled = compile_ and device.type == "cuda"
    if compiled:
        model.compile()
    opt = optimizer_for(model.parameters(), TrialSpec(batch_size=s.batch))
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn((s.batch, 3, s.image, s.image), generator=g).to(device), torch.randint(0, CLASSES, (s.batch,), generator=g).to(device))
        for _ in range(2)
    ]
    batches = itertools.cycle(data)
    rate = measure(lambda: _train(model, opt, itertools.islice(batches, 1), device), device, s.warmup, s.steps, s.seconds)
    how = "torch.compile; " if compiled else ("eager: torch.compile is not tried on CPU; " if compile_ else "")
    return Result(rate, f"{how}batch {s.batch}, {s.image} px, random tensors on the device (no input cost)")


def open_data(root: Path, device: torch.device, loader: str, s: Sizes) -> ImageNetData:
    from trainer.imagenet.dataset import ImageNetData

    return ImageNetData(data_info("imagenet"), root, device, num_workers=s.workers, loader=loader, cache_dir=root / "cache")


def through_loader(root: Path, s: Sizes, device: torch.device, loader: str, versus: float | None = None) -> Result:
    if loader == "dali":
        from trainer.imagenet.dali import available

        if not available():
            return Result(None, "DALI is not installed here (the nvjpeg row is the GPU decode without it)", status="not installed")
    data = open_data(root, device, loader, s)
    data.train_source = repeated(data.train_source, s.repeat)
    model = _model(device)
    opt = optimizer_for(model.parameters(), TrialSpec(batch_size=s.batch))
    stream = data.train_batches(0, 0, s.batch, augment=True)  # one long pass: the workers start once
    batches = _shrink(stream, s.image)
    try:
        rate = measure(lambda: _train(model, opt, itertools.islice(batches, 1), device), device, s.warmup, s.steps, s.seconds)
    finally:
        stream.close()  # the loader's workers / threads stop now
        data.close()
    ratio = rate / versus if versus else None
    stall = f"stall {1 - ratio:.0%}" if ratio else "stall unknown (no synthetic row)"
    who = (
        f"{s.workers} worker processes"
        if loader == "torchvision"
        else f"{data.dali_threads if loader == 'dali' else max(1, s.workers)} CPU threads"
    )
    return Result(
        rate, f"loader {data.loader}, {who}; {stall} (ratio: loader / synthetic); one pass, timed after {s.warmup} batches", ratio
    )


def evaluation(root: Path, s: Sizes, device: torch.device, loader: str) -> Result:
    """trainer.loop.evaluate (loss, accuracy, every unit's CSI) over the val set decoded once."""
    data = open_data(root, device, loader, s)
    model = _model(device)
    data._val()  # decodes val once (the cache), as the first evaluation of a trial does; not timed

    def one_pass() -> int:
        evaluate(model, _shrink(data.test_batches(s.batch), s.image), CLASSES, device)
        return data.n_test

    rate = measure(one_pass, device, 1, max(1, s.steps // 4), s.seconds)
    data.close()
    return Result(
        rate, f"{data.n_test} val images from the uint8 cache (decoded once, loader {data.loader}); loss, accuracy and CSI of every unit"
    )


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
