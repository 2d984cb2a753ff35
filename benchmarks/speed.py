"""Training speed side by side in one run: a plain DataLoader loop, the fast single trial, K fused trials.

    python -m benchmarks.speed                 # a GPU at full size: CIFAR-10-shaped 50k/10k, K = 16
    python -m benchmarks.speed --small         # CPU / CI size (ratios only): 1024 images, K = 4, few steps
    options: --k 16 --steps 30 --rounds 3 --alpha -10 --batch-size 128 --n-train 50000 --loader-workers 8
             --compile --device auto --threads N --grid grids/cifar10.yaml

The three ways to train the same ResNet20 with the same regularizer (loss = CE - alpha * SI):
  loader  the plain PyTorch recipe: a Dataset doing per-image crop(pad 4) + flip + normalise on
          the CPU, a DataLoader (workers, pinned memory) feeding float32, contiguous tensors;
  single  trainer.run's trial: uint8 data resident on the device, batched augmentation there,
          channels_last and bf16 autocast on a GPU (optionally torch.compile);
  fused   trainer.group's K trials as one grouped network, each with its own seed and data order.
It prints images/s per model and in aggregate, the regularizer's overhead (single at alpha vs
at 0), the evaluation's share of an epoch, and the projected hours of a grid on this device
from the measured throughputs (the H100-hours the targets speak of when run on an H100).

Rounds alternate the runs after one warm-up round (allocator, kernels, compilation); the table
shows medians. Targets (an H100 at full size): single >= 100k images/s and >= 5x loader; fused
aggregate >= 3x single at K >= 16. On a CPU the ratios are what the run shows, nothing more.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.step import SYNTHETIC, step_batches, sync, synthetic_cifar
from orchestrator.grid import load_grid
from orchestrator.pack import pack
from trainer.attempt import pick_device
from trainer.data import Batch, TensorData, eval_batch_size
from trainer.fused import FusedResNet20, fused_evaluate, fused_train_epoch
from trainer.loop import evaluate, train_epoch
from trainer.models import TrackedNet, build_model
from trainer.provenance import device_name
from trainer.registry import DATASETS
from trainer.selectivity import batch_selectivity

SINGLE_TARGET, LOADER_TARGET, FUSED_TARGET = 100_000.0, 5.0, 3.0


# ---- the plain DataLoader recipe ------------------------------------------------------------------
class PlainCifar(torch.utils.data.Dataset):
    """Per-image augmentation on the CPU, as the usual CIFAR training scripts do it."""

    def __init__(self, data: TensorData) -> None:
        self.x, self.y = data.train_x.cpu(), data.train_y.cpu()
        self.mean = torch.tensor(data.info.mean).view(-1, 1, 1)
        self.std = torch.tensor(data.info.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[i].float() / 255, (4, 4, 4, 4))
        top, left = (int(v) for v in torch.randint(0, 9, (2,)))
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img - self.mean) / self.std, self.y[i]


def plain_loop(model: TrackedNet, opt: torch.optim.Optimizer, batches: Iterator[Batch], alpha: float, device: torch.device) -> None:
    """The textbook loop: float32, no autocast, the batch moved to the device each step."""
    model.train()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, feats = model(x, capture=alpha != 0)
        loss = F.cross_entropy(logits, y)
        if alpha != 0:
            assert feats is not None
            loss = loss - alpha * batch_selectivity(feats, y, 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)


# ---- measuring --------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(a: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(a.device)
    data = synthetic_cifar(a.n_train, max(a.n_train // 5, a.batch_size), device)
    sgd = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def model(seed: int) -> TrackedNet:
        torch.manual_seed(seed)
        return build_model("resnet20", 10, 3).to(device)

    plain = model(0)  # float32, contiguous: the plain recipe
    singles = {alpha: model(0) for alpha in (0.0, a.alpha)}
    fused = FusedResNet20.from_models([model(s) for s in range(a.k)])
    fast = [*singles.values(), fused]
    if device.type == "cuda":
        fast = [m.to(memory_format=torch.channels_last) for m in fast]
    if a.compile:
        for m in fast:
            m.compile()
    opts = {id(m): sgd(m.parameters()) for m in (plain, *fast)}
    loader = torch.utils.data.DataLoader(
        PlainCifar(data), batch_size=a.batch_size, shuffle=True, drop_last=True, num_workers=a.loader_workers,
        pin_memory=device.type == "cuda", persistent_workers=a.loader_workers > 0,
    )  # fmt: skip
    loader_batches = iter(itertools.chain.from_iterable(itertools.repeat(loader)))
    eval_batch = eval_batch_size(data, a.batch_size, device)
    single_a, fused_net = fast[1], fast[2]
    assert isinstance(fused_net, FusedResNet20)
    runs: dict[str, Callable[[int], Any]] = {
        "loader": lambda r: plain_loop(plain, opts[id(plain)], itertools.islice(loader_batches, a.steps), a.alpha, device),
        "single0": lambda r: train_epoch(fast[0], opts[id(fast[0])], step_batches(data, a.batch_size, a.steps, r), 0.0, 10, device),
        "single": lambda r: train_epoch(single_a, opts[id(single_a)], step_batches(data, a.batch_size, a.steps, r), a.alpha, 10, device),
        "fused": lambda r: fused_train_epoch(
            fused_net,
            opts[id(fused_net)],
            [step_batches(data, a.batch_size, a.steps, r, seed=s) for s in range(a.k)],
            [a.alpha] * a.k,
            10,
            device,
        ),
        "eval": lambda r: evaluate(single_a, data.test_batches(eval_batch), 10, device),
        "eval_fused": lambda r: fused_evaluate(fused_net, data, 10, device, eval_batch),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(a.rounds + 1):
        order = names if r % 2 == 0 else names[::-1]  # alternate: slow drifts of a shared machine cancel
        for name in order:
            sec = _timed(functools.partial(runs[name], r), device)
            if r > 0:  # round 0 warms up
                times[name].append(sec)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"device": device, "name": device_name(device), "n_train": data.n_train, "n_test": data.n_test, "med": med}


# ---- reporting --------------------------------------------------------------------------------------
def report(a: argparse.Namespace, m: dict[str, Any]) -> str:
    med, steps, b, k = m["med"], a.steps, a.batch_size, a.k
    img_s = {name: (k if name == "fused" else 1) * b * steps / med[name] for name in ("loader", "single0", "single", "fused")}
    lines = [
        (
            f"benchmarks.speed: resnet20, CIFAR-10-shaped data ({m['n_train']} train / {m['n_test']} test), batch {b}, "
            f"alpha {a.alpha:g}, K = {k}, {m['device'].type} ({m['name']}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, compile {'on' if a.compile else 'off'}"
        ),
        f"median of {a.rounds} alternating rounds of {steps} steps (after 1 warm-up round); loader workers {a.loader_workers}",
        "",
        f"{'run':<24} {'models':>6} {'ms/step':>9} {'img/s per model':>16} {'img/s aggregate':>16} {'vs loader':>10} {'vs single':>10}",
    ]
    rows = [("loader (plain DataLoader)", "loader", 1), ("single, alpha 0", "single0", 1), (f"single, alpha {a.alpha:g}", "single", 1),
            (f"fused K={k}, alpha {a.alpha:g}", "fused", k)]  # fmt: skip
    for label, name, models in rows:
        agg = img_s[name]
        lines.append(
            f"{label:<24} {models:>6} {med[name] / steps * 1e3:>9.2f} {agg / models:>16.0f} {agg:>16.0f} "
            f"{agg / img_s['loader']:>9.2f}x {agg / img_s['single']:>9.2f}x"
        )
    epoch_single = m["n_train"] / img_s["single"]
    epoch_fused = m["n_train"] * k / img_s["fused"]
    share = med["eval"] / (epoch_single + med["eval"])
    share_fused = med["eval_fused"] / (epoch_fused + med["eval_fused"])
    on_h100 = "H100" in m["name"]
    verdict = lambda ok: ("ok" if ok else "BELOW TARGET") if on_h100 else "(target is for an H100)"
    lines += [
        "",
        f"regularizer overhead (single, alpha {a.alpha:g} vs 0): {med['single'] / med['single0']:.2f}x step time",
        (
            f"evaluation share of an epoch: single {share:.1%}, fused {share_fused:.1%} "
            f"({m['n_test']} test images, {med['eval']:.3f} s single / {med['eval_fused']:.3f} s for K fused)"
        ),
        (
            f"targets: single >= {SINGLE_TARGET:,.0f} img/s: {img_s['single']:,.0f} {verdict(img_s['single'] >= SINGLE_TARGET)}; "
            f"single >= {LOADER_TARGET:.0f}x loader: {img_s['single'] / img_s['loader']:.2f}x "
            f"{verdict(img_s['single'] >= LOADER_TARGET * img_s['loader'])}; "
            f"fused >= {FUSED_TARGET:.0f}x single at K >= 16: {img_s['fused'] / img_s['single']:.2f}x "
            f"{verdict(k >= 16 and img_s['fused'] >= FUSED_TARGET * img_s['single'])}"
        ),
        "",
        projection(a, m, img_s, k),
    ]
    return "\n".join(lines)


def projection(a: argparse.Namespace, m: dict[str, Any], img_s: dict[str, float], k: int) -> str:
    """Hours of the grid on this device: its trials' training and evaluation images / measured speeds."""
    specs = load_grid(a.grid).specs
    groups = pack(specs, k)
    eval_img_s = m["n_test"] / m["med"]["eval"]
    eval_fused_img_s = k * m["n_test"] / m["med"]["eval_fused"]

    def hours(train_speed: float, eval_speed: float) -> float:
        total = 0.0
        for s in specs:
            n_train, n_test = DATASETS[s.dataset].n_train, DATASETS[s.dataset].n_test
            total += s.epochs * n_train / train_speed + (s.epochs + 1) * n_test / eval_speed
        return total / 3600

    where = "H100-hours" if "H100" in m["name"] else f"hours on this {m['device'].type}"
    return (
        f"projected {where} for {a.grid} ({len(specs)} trials, {len(groups)} fused groups of <= {k}): "
        f"loader {hours(img_s['loader'], eval_img_s):.2f}, single {hours(img_s['single'], eval_img_s):.2f}, "
        f"fused {hours(img_s['fused'], eval_fused_img_s):.2f}" + ("" if m["n_train"] >= 50_000 else "  (from a small run: ratios only)")
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU / CI size: --n-train 1024 --k 4 --steps 4 --rounds 2 --loader-workers 0")
    p.add_argument("--k", type=int, default=None, help="fused trials (default 16; --small: 4)")
    p.add_argument("--steps", type=int, default=None, help="steps per run per round (default 30; --small: 4)")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3; --small: 2)")
    p.add_argument("--n-train", type=int, default=None, help=f"{SYNTHETIC} training images (default 50000; --small: 1024)")
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers of the plain loop (default 8; --small: 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--alpha", type=float, default=-10.0)
    p.add_argument("--compile", action="store_true", help="torch.compile the fast single and fused networks")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--grid", type=Path, default=Path("grids/cifar10.yaml"), help="the grid whose hours are projected")
    a = p.parse_args(argv)
    small = {"k": 4, "steps": 4, "rounds": 2, "n_train": 1024, "loader_workers": 0}
    full = {"k": 16, "steps": 30, "rounds": 3, "n_train": 50_000, "loader_workers": 8}
    for key, value in (small if a.small else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.k < 1 or a.steps < 1 or a.rounds < 1 or a.alpha == 0 or a.n_train < a.batch_size:
        p.error("need --k, --steps, --rounds >= 1, --alpha != 0 and --n-train >= --batch-size")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    print(report(a, measure(a)))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
