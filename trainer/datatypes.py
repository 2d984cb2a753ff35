"""The types every data source shares: a batch, a data set's description, its missing-data error, the
generator behind one epoch's order and augmentation.

Both trainer.data (the in-memory sets, the registry) and trainer.imagenet (the streamed set) use
them; keeping them here lets trainer.imagenet import nothing from trainer.data (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


class DataMissing(UserError):
    """The data set is not where the spec says; the message names the path and what to put there."""


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int  # random-crop padding of the standard augmentation (0: none)
    flip: bool  # horizontal flips (not for digits: a mirrored 2 is no 2)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator behind one epoch's order and augmentation."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)
