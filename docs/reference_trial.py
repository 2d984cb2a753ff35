"""One trial of the sweep's science in one page: ResNet20 on the embedded digits, trained with
Leavitt & Morcos's class-selectivity regularizer, evaluated by accuracy and every unit's CSI.

    python docs/reference_trial.py --alpha -1.0 --epochs 2 --seed 0     # from the repository root

Nothing here is used by the sweep; it is what the production path computes for one dense trial,
without locks, resume, segments, fused networks or result files (docs/science.md has the maths,
docs/development.md the code map). tests/test_reference_trial.py checks that `python -m
trainer.run` on the same trial gives the same numbers, so this page cannot drift from the code.

    mu_c(u)   mean activation of unit u (a block's output channel, averaged over space) over the
              samples of class c in the batch (training) or in the test set (evaluation)
    CSI(u)    (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7), mu_rest the mean of the other classes' mu_c
    SI_batch  the mean over the network's blocks of the mean CSI over the block's units
    loss      cross-entropy - alpha * SI_batch   (alpha < 0 pushes selectivity down, > 0 up)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from trainer.data import read_digits  # the 1797 embedded 8x8 digits, a fixed 80/20 split, uint8
from trainer.models import build_for  # ResNet20; model(x, capture=True) also returns each block's units

MEAN, STD = 0.3053, 0.3761  # the digits' pixel statistics (trainer.data.DATASETS)
PAD = 1  # random crops of the 8x8 images with 1 pixel of zero padding; no flips (a mirrored 2 is no 2)
EPS = 1e-7


def train_batches(x: torch.Tensor, y: torch.Tensor, seed: int, epoch: int, batch_size: int):
    """One epoch's shuffled, randomly cropped, normalised batches; the ragged last batch is dropped."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # the epoch replays exactly
    order = torch.randperm(len(y), generator=gen)
    steps = len(y) // batch_size
    shifts = torch.randint(0, 2 * PAD + 1, (steps * batch_size, 2), generator=gen)
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    h, w = x.shape[2:]
    for i in range(steps):
        idx = order[i * batch_size : (i + 1) * batch_size]
        cuts = shifts[i * batch_size : (i + 1) * batch_size]
        crops = torch.stack([padded[j, :, r : r + h, c : c + w] for j, (r, c) in zip(idx.tolist(), cuts.tolist())])
        yield normalise(crops), y[idx]


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - MEAN * 255) / (STD * 255)


def class_selectivity(units: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CSI of each unit of `units` [N, U] from its class means; classes absent from `labels` are left out."""
    sums = units.new_zeros(num_classes, units.shape[1]).index_add(0, labels, units)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts.nonzero().squeeze(1)
    means = sums[present] / counts[present].unsqueeze(1).to(units.dtype)  # [classes present, U]
    mu_max = means.max(dim=0).values
    mu_rest = (means.sum(dim=0) - mu_max) / (len(present) - 1)
    return (mu_max - mu_rest) / (mu_max + mu_rest + EPS)


def si_batch(blocks: list[torch.Tensor], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The regularizer: the mean over blocks of the mean CSI of their units, differentiable."""
    return torch.stack([class_selectivity(u, labels, num_classes).mean() for u in blocks]).mean()


def lr_at(lr: float, epoch: int, epochs: int) -> float:
    """Step decay: x0.1 at 50% and at 75% of the epochs (a milestone at epoch 0, or twice, counts once)."""
    return lr * 0.1 ** sum(epoch >= m for m in {epochs // 2, (3 * epochs) // 4} if m > 0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int = 256) -> dict:
    """Test loss and accuracy, and each block's CSI per unit from class means over the whole test set."""
    model.eval()
    outputs = [model(normalise(x[i : i + batch_size]), capture=True) for i in range(0, len(y), batch_size)]
    logits = torch.cat([out[0] for out in outputs])
    blocks = [torch.cat([out[1][b] for out in outputs]) for b in range(len(outputs[0][1]))]
    return {
        "test_loss": F.cross_entropy(logits, y).item(),
        "test_acc": (logits.argmax(1) == y).float().mean().item(),
        "csi": [class_selectivity(u, y, num_classes) for u in blocks],  # one [U] tensor per block
    }


def reference_trial(alpha: float, epochs: int, seed: int, batch_size: int = 128, lr: float = 0.1, onset_epoch: int = 0) -> list[dict]:
    """Train one trial; returns one row per evaluation: epoch 0 (the initialised network), then after each epoch."""
    (train_x, train_y), (test_x, test_y) = read_digits(None)
    num_classes = 10
    torch.manual_seed(seed)  # the initial weights
    model = build_for("resnet20", "digits")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    rows = [{"epoch": 0, **evaluate(model, test_x, test_y, num_classes)}]
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(lr, epoch, epochs)
        a = alpha if epoch >= onset_epoch else 0.0
        model.train()
        loss_sum, n, si_sum, steps = 0.0, 0, 0.0, 0
        for x, y in train_batches(train_x, train_y, seed, epoch, batch_size):
            logits, blocks = model(x, capture=True)
            ce = F.cross_entropy(logits, y)
            si = si_batch(blocks, y, num_classes)
            loss = ce - a * si
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum, n, si_sum, steps = loss_sum + loss.item() * len(y), n + len(y), si_sum + si.item(), steps + 1
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / n,
                "train_selectivity": si_sum / steps,
                **evaluate(model, test_x, test_y, num_classes),
            }
        )
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alpha", type=float, default=-1.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for row in reference_trial(args.alpha, args.epochs, args.seed):
        mean_csi = sum(c.mean().item() for c in row["csi"]) / len(row["csi"])
        print(f"epoch {row['epoch']}: test accuracy {row['test_acc']:.3f}, test loss {row['test_loss']:.3f}, mean CSI {mean_csi:.3f}")
