"""Which samples each batch of a pass holds and how each is cut: the loaders' common work list.

A `Plan` is small and picklable (numpy/Arrow buffers, no open files), so the portable loader ships
it to its worker processes once per pass and the DALI feeder reads it in the main process; both
ask it `items(step)` and so decode the same files with the same windows in the same order.

Batches never get replacement images: a sample whose file is known to be bad (manifest --check,
or found bad earlier in this process) or fails to decode is dropped, and its batch is one image
shorter. The number of batches of an epoch and which samples each holds therefore depend only on
(seed, epoch, batch size, the manifest's listing), never on what was found bad.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from trainer.imagenet import augment as A


@dataclass
class Source:
    """One split of the manifest: the files (relative to `folder`) and what is known of them."""

    folder: str
    paths: pa.Array  # string
    labels: np.ndarray  # int64 [n]
    sizes_hw: np.ndarray  # int32 [n, 2]: (height, width) from --check, -1 unknown
    bad: np.ndarray  # bool [n]: skip without reading

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return str(self.paths[i].as_py())


@dataclass
class Item:
    index: int  # row of the source
    position: int  # position in the pass
    geometry_draws: np.ndarray | None  # the sample's uniforms (train) or None (evaluation transform)


@dataclass
class Plan:
    """A pass over `source`: shuffled by (seed, epoch) for training, in file order for evaluation."""

    source: Source
    batch_size: int
    seed: int = 0
    epoch: int = 0
    shuffle: bool = False
    augment: bool = False
    drop_last: bool = False

    def __post_init__(self) -> None:
        n = len(self.source)
        self.order = A.epoch_order(n, self.seed, self.epoch) if self.shuffle else None

    @property
    def steps(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def items(self, step: int) -> list[Item]:
        """The samples of batch `step` (known-bad ones included: the loader drops them)."""
        start = step * self.batch_size
        stop = min(start + self.batch_size, len(self.source))
        u = A.draws(self.seed, self.epoch, start, stop - start) if self.augment else None
        rows = self.order[start:stop] if self.order is not None else np.arange(start, stop)
        return [Item(int(r), start + k, None if u is None else u[k]) for k, r in enumerate(rows)]

    def geometry(self, item: Item, height: int, width: int) -> A.Geometry:
        return A.geometry(height, width, item.geometry_draws)
