"""Fused K-trial training (trainer.fused) against one trial at a time, side by side in one run.

    python -m trainer.bench_fused [--k 8] [--steps 10] [--batch-size 128] [--rounds 3]
                                  [--device auto] [--dataset synthetic-cifar|digits] [--threads N]

Prints images/s per model and aggregate (K models x images) for:
  - single: one trial's step (trainer.loop.train_epoch, alpha as given), the baseline;
  - fused:  the K-trial fused step (trainer.fused.fused_train_epoch), K different seeds;
  - loader: (CPU-side reference) a plain torch DataLoader over the same uint8 tensors feeding
            the single trial, with per-sample augmentation left out (the in-memory path's input cost).
Rounds alternate (single, fused, loader) after one warm-up round; the table shows medians.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from trainer.bench import SYNTHETIC, synthetic_cifar
from trainer.data import Data, data_info, load_dataset
from trainer.fused import FusedResNet20, fused_train_epoch
from trainer.loop import train_epoch
from trainer.models import build_model
from trainer.attempt import pick_device


def _batches(data: Data, seed: int, batch: int, steps: int, round_: int):
    epochs = (data.train_batches(round_ * 1000 + e, seed, batch, augment=True) for e in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench_fused", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--alpha", type=float, default=-10.0, help="alpha of every trial (0: plain training)")
    p.add_argument("--dataset", default=SYNTHETIC, choices=[SYNTHETIC, "digits", "cifar10"])
    p.add_argument("--n-train", type=int, default=2048, help="synthetic-cifar training images")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--no-loader", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if a.dataset == SYNTHETIC:
        data, info = synthetic_cifar(a.n_train, max(a.n_train // 5, 10), device), data_info("cifar10")
    else:
        data, info = load_dataset(a.dataset, "./data", device), data_info(a.dataset)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    models = []
    for s in range(a.k):
        torch.manual_seed(s)
        models.append(build_model("resnet20", info.num_classes, info.in_channels).to(device))
    single = models[0]
    if device.type == "cuda":
        single = single.to(memory_format=torch.channels_last)
    single_opt = sgd(single.parameters())
    fused = FusedResNet20.from_models(models).to(device)
    if device.type == "cuda":
        fused = fused.to(memory_format=torch.channels_last)
    fused_opt = sgd(fused.parameters())

    def run_single(r: int) -> float:
        _sync(device)
        t = time.perf_counter()
        train_epoch(single, single_opt, _batches(data, 0, a.batch_size, a.steps, r), a.alpha, info.num_classes, device)
        return time.perf_counter() - t

    def run_fused(r: int) -> float:
        _sync(device)
        t = time.perf_counter()
        its = [_batches(data, s, a.batch_size, a.steps, r) for s in range(a.k)]
        fused_train_epoch(fused, fused_opt, its, [a.alpha] * a.k, info.num_classes, device)
        return time.perf_counter() - t

    def run_loader(r: int) -> float:
        from torch.utils.data import DataLoader, TensorDataset

        ds = TensorDataset(data.train_x.cpu(), data.train_y.cpu())  # type: ignore[union-attr]
        loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(r))  # fmt: skip
        batches = ((data.normalise(x.to(device)), y.to(device)) for x, y in itertools.cycle(loader))  # type: ignore[union-attr]
        _sync(device)
        t = time.perf_counter()
        train_epoch(single, single_opt, itertools.islice(batches, a.steps), a.alpha, info.num_classes, device)
        return time.perf_counter() - t

    runs = {"single": run_single, "fused": run_fused}
    if not a.no_loader:
        runs["loader"] = run_loader
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(a.rounds + 1):
        for name, fn in runs.items():
            sec = fn(r)
            if r > 0:  # round 0 warms up
                times[name].append(sec)
    print(f"resnet20 on {a.dataset}, batch {a.batch_size}, alpha {a.alpha}, {a.steps} steps x {a.rounds} rounds, "
          f"device {device}, threads {torch.get_num_threads()}, K = {a.k}")  # fmt: skip
    print(f"{'run':<8} {'models':>6} {'s/step':>9} {'img/s per model':>16} {'img/s aggregate':>16} {'vs single':>10}")
    base = statistics.median(times["single"]) / a.steps
    for name, ts in times.items():
        per_step = statistics.median(ts) / a.steps
        k = a.k if name == "fused" else 1
        agg = k * a.batch_size / per_step
        print(f"{name:<8} {k:>6} {per_step:>9.4f} {a.batch_size / per_step:>16.1f} {agg:>16.1f} "
              f"{agg / (a.batch_size / base):>9.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
