"""The portable loader: torch DataLoader workers read, decode, cut and resize whole batches to uint8.

Each task is one batch step of a `Plan`; the worker reads the files, decodes them
(trainer.imagenet.decode), applies each sample's geometry (trainer.imagenet.augment.apply) and
stacks uint8 [b, 3, 224, 224]. The main process gets the batches in step order (DataLoader keeps
order), pins them and moves them to the device, where they are normalised. Workers come from the
forkserver context (trainer.imagenet.workers): they never hold the trial's lock.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from trainer import faults
from trainer.imagenet.augment import SIZE, apply
from trainer.imagenet.decode import BadImage, decode_rgb, read_bytes
from trainer.imagenet.plan import Item, Plan
from trainer.imagenet.workers import init_worker, worker_context


@dataclass
class Decoded:
    """One batch: uint8 images [b, 3, 224, 224], int64 labels [b], what was skipped and decoded."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[int, str, str]]  # (row, relative path, reason)
    decoded: int

    def pin_memory(self) -> Decoded:
        """Called by the DataLoader's pinning thread (pin_memory=True), off the training thread."""
        self.images = self.images.pin_memory()
        return self


def decode_item(plan: Plan, item: Item) -> torch.Tensor:
    """Read, decode and cut one sample: uint8 [3, 224, 224]; BadImage if unreadable."""
    src = plan.source
    image = decode_rgb(read_bytes(os.path.join(src.folder, src.path(item.index))))
    g = plan.geometry(item, int(image.shape[1]), int(image.shape[2]))
    return apply(image, g)


def decode_items(plan: Plan, items: list[Item]) -> Decoded:
    """A batch decoded in this process (a worker's task; also the DALI loader's fallback)."""
    src = plan.source
    out = torch.empty((len(items), 3, SIZE, SIZE), dtype=torch.uint8)
    labels, skipped, n = [], [], 0
    for item in items:
        if src.bad[item.index]:
            continue  # known bad (manifest --check or found earlier): not even read
        try:
            out[n] = decode_item(plan, item)
        except BadImage as err:
            skipped.append((item.index, src.path(item.index), str(err)))
            continue
        labels.append(int(src.labels[item.index]))
        n += 1
    return Decoded(out[:n], torch.tensor(labels, dtype=torch.int64), skipped, n + len(skipped))


class BatchTasks(Dataset):
    """Dataset whose item `step` is the whole decoded batch `step` of `plan`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.steps

    def __getitem__(self, step: int) -> Decoded:
        faults.point("decode-batch")  # fault tests: a worker process dying mid-epoch
        return decode_items(self.plan, self.plan.items(step))


def _identity(d: Decoded) -> Decoded:
    return d


def portable_batches(plan: Plan, start_step: int, num_workers: int, pin: bool, prefetch: int = 4) -> Generator[Decoded, None, None]:
    """Batches start_step ... plan.steps - 1 of `plan`, in order, decoded by `num_workers` processes.

    Leaving the iterator early (an exception in the consumer, `close()`) shuts the workers down
    at once: the DataLoader iterator is deleted in the `finally`.
    """
    tasks = BatchTasks(plan)
    steps = range(start_step, plan.steps)
    if num_workers == 0:
        for step in steps:
            d = tasks[step]
            yield d.pin_memory() if pin else d
        return
    loader = DataLoader(
        tasks,
        batch_size=None,  # a task is a batch already
        sampler=steps,  # a range is a valid sampler (len + iter)
        num_workers=num_workers,
        collate_fn=_identity,  # type: ignore[arg-type]  # batch_size=None: it gets one item, not a list
        pin_memory=pin,  # Decoded.pin_memory, in the DataLoader's own thread
        prefetch_factor=prefetch,
        multiprocessing_context=worker_context(),
        worker_init_fn=partial(init_worker, main_pid=os.getpid()),
        persistent_workers=False,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # now, not when the garbage collector gets to it
        del it
