"""Channel ablation curves (Ranadive et al. 2023): how much do the most selective channels matter?

For a trial's kept checkpoint at epoch e and one stage of the network, zero k channels at the
output of every block of that stage, chosen either as the k with the highest test-set CSI at
epoch e (read from the trial's units.parquet) or at random (several seeded draws), and measure
test accuracy. Repeated for a sweep of k, every stage and every kept epoch:

    python -m trainer.analysis.ablation_job --trial results/<sweep>/trials/<id> [--fractions 0 0.25 0.5 0.75 1] [--counts 8 16]
                             [--count-steps 15 40] [--draws 3]

writes `<trial>/ablations.parquet`: the trial's fields, then epoch, stage, k, fraction (k / the
stage's width), selection (topk | random | random_batch), draw, accuracy, loss, top5 (100+ classes). k comes
from fractions of each stage's width, absolute counts, or Ranadive et al.'s schedule (AblationPlan).
No pass whose result is known runs: k = 0 is the checkpoint's own evaluation (from epochs.parquet),
and zeroing a whole stage is one network for top-k and every random draw (one pass). Outputs are
zeroed with forward hooks added only for the measurement, so the training path carries no
ablation code.

Random masks: `random` zeroes one fixed draw of k channels per block for the whole pass (one
network per draw); `random_batch` draws a new mask for every test batch, as Ranadive et al.'s
`ablations.py` does, so a draw averages over many masks (at half a stage the two gave accuracies
up to 0.3 apart on the digits ResNet20). `AblationPlan.random_masks` picks either or both.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainer.analysis.ablation_plan import AblationPlan
from trainer.data import Data
from trainer.loop import autocast
from trainer.models import TrackedNet

SELECTIONS = ("topk", "random", "random_batch")
RANDOM_MASKS = ("fixed", "per_batch", "both")  # the trial field ablation_random_masks (as trainer.spec)


def stage_blocks(model: TrackedNet) -> dict[int, list[int]]:
    """Stage number -> indices of its blocks (names are `stage<i>.block<j>`)."""
    out: dict[int, list[int]] = {}
    for index, name in enumerate(model.block_names):
        match = re.fullmatch(r"stage(\d+)\.block\d+", name)
        if match is None:
            raise ValueError(f"block name {name!r} is not stage<i>.block<j>")
        out.setdefault(int(match.group(1)), []).append(index)
    return out


def choose_channels(csi: np.ndarray, k: int, selection: str, rng: np.random.Generator) -> np.ndarray:
    """The k channels of one block to zero: the k highest-CSI ones, or k drawn at random."""
    if not 0 <= k <= len(csi):
        raise ValueError(f"k must be in [0, {len(csi)}], got {k}")
    if selection == "topk":
        return np.argsort(-csi, kind="stable")[:k]  # ties: lower channel index first
    if selection == "random":
        return np.sort(rng.choice(len(csi), size=k, replace=False))
    raise ValueError(f"selection must be topk or random, got {selection!r}")


@contextlib.contextmanager
def ablated(model: TrackedNet, channels: Mapping[int, Sequence[int] | np.ndarray]) -> Iterator[None]:
    """Inside the `with`, the output of block i is zeroed at `channels[i]` (what the next block sees)."""

    def those(chans: Sequence[int] | np.ndarray) -> ChannelPick:
        idx = torch.as_tensor(np.asarray(chans), dtype=torch.long)
        return lambda out: idx.to(out.device)

    with _zeroing(model, {i: those(c) for i, c in channels.items() if len(c)}):
        yield


@contextlib.contextmanager
def ablated_per_batch(model: TrackedNet, widths: Mapping[int, int], k: int, rng: np.random.Generator) -> Iterator[None]:
    """Inside the `with`, every forward pass zeroes k channels of each block i in `widths` (block ->
    channels), drawn anew from `rng` for each pass and block (Ranadive et al.'s random ablation)."""

    def draw(width: int) -> ChannelPick:
        return lambda out: torch.as_tensor(np.sort(rng.choice(width, size=k, replace=False)), dtype=torch.long, device=out.device)

    with _zeroing(model, {i: draw(w) for i, w in widths.items()}):
        yield


ChannelPick = Callable[[torch.Tensor], torch.Tensor]  # a block's output -> the channel indices to zero in it


@contextlib.contextmanager
def _zeroing(model: TrackedNet, picks: Mapping[int, ChannelPick]) -> Iterator[None]:
    """Forward hooks that zero, in block i's output, the channels `picks[i]` names; removed on exit."""

    def hook(pick: ChannelPick) -> Callable[[torch.nn.Module, object, torch.Tensor], torch.Tensor]:
        def zero(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, pick(output)] = 0
            return output

        return zero

    handles = [model.blocks[i].register_forward_hook(hook(pick)) for i, pick in picks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def heldout_accuracy(
    model: TrackedNet, data: Data, batch_size: int, device: torch.device, subset: torch.Tensor | None = None
) -> tuple[float, float, float | None]:
    """(top-1 accuracy, mean cross-entropy, top-5 accuracy or None under 100 classes) on the test set
    (or its images `subset`), eval mode."""
    model.eval()
    correct, top5, loss, n = 0.0, 0.0, 0.0, 0
    classes = 0
    for x, y in data.test_batches(batch_size, subset):
        with autocast(device):
            logits, _ = model(x)
        logits = logits.float()
        classes = logits.shape[1]
        correct += (logits.argmax(1) == y).sum().item()
        if classes >= 100:
            top5 += (logits.topk(5, dim=1).indices == y.unsqueeze(1)).any(1).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        n += y.shape[0]
    return correct / n, loss / n, (top5 / n if classes >= 100 else None)


def draw_seed(seed: int, epoch: int, stage: int, k: int, draw: int) -> np.random.Generator:
    """Random draws are seeded by (trial seed, epoch, stage, k, draw): reproducible, independent."""
    return np.random.default_rng([seed, epoch, stage, k, draw])


COLUMNS = ("epoch", "stage", "k", "fraction", "selection", "draw", "accuracy", "loss", "top5")


def ablation_rows(
    model: TrackedNet,
    data: Data,
    unit_csi: dict[str, np.ndarray],
    epoch: int,
    seed: int,
    plan: AblationPlan,
    base: tuple[float, float, float | None],
    batch_size: int,
    device: torch.device,
) -> dict[str, list]:
    """Every (stage, k, selection, draw) accuracy of one checkpoint; `unit_csi`: layer -> CSI per unit.

    `base`: the checkpoint's own evaluation (accuracy, loss, top-5), the row of k = 0; on a subset
    of the test set (plan.images) the unablated network is evaluated on that subset instead.
    """
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    picked = plan.subset(data.n_test)
    subset = None if picked is None else torch.from_numpy(picked)
    if subset is not None:
        base = heldout_accuracy(model, data, batch_size, device, subset)
    for stage, blocks in stage_blocks(model).items():
        width = len(unit_csi[model.block_names[blocks[0]]])
        for k in plan.ks(width):
            whole: tuple[float, float, float | None] | None = None  # a whole stage zeroed: one pass for all selections
            for selection in plan.selections():
                for draw in range(plan.draws if selection != "topk" else 1):
                    if k == 0:
                        result = base  # nothing zeroed: the unablated network
                    elif k == width and whole is not None:
                        result = whole
                    elif selection == "random_batch":
                        widths = {b: len(unit_csi[model.block_names[b]]) for b in blocks}
                        with ablated_per_batch(model, widths, k, draw_seed(seed, epoch, stage, k, draw)):
                            result = heldout_accuracy(model, data, batch_size, device, subset)
                    else:
                        rng = draw_seed(seed, epoch, stage, k, draw)
                        chosen = {b: choose_channels(unit_csi[model.block_names[b]], k, selection, rng) for b in blocks}
                        with ablated(model, chosen):
                            result = heldout_accuracy(model, data, batch_size, device, subset)
                        whole = result if k == width else None
                    for col, v in zip(rows, (epoch, stage, k, k / width, selection, draw, *result)):
                        rows[col].append(v)
    return rows
