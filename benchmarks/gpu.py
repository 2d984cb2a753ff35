"""The GPU check: one command, one markdown table of what a GPU does with this project's code.

    python -m benchmarks.gpu [--budget-s 420] [--out docs/gpu-check.md]     # on a machine with a GPU
    python -m benchmarks.gpu --small                                          # the same code paths, CPU-sized

Rows, each measured with the project's own training code (trainer.loop / trainer.fused) after a
warm-up, timed to a device synchronisation:
  1. ResNet-50, bf16 + channels_last: training images/s from synthetic tensors already on the GPU,
     and through the real ImageNet loader (trainer.imagenet, loader "auto": DALI when installed)
     on generated ImageNet-sized JPEGs; their ratio is the loader's stall;
  2. ResNet-50 evaluation images/s from the validation set decoded once (the cached copy);
  3. ResNet-20 on CIFAR-sized tensors: one trial, fused K = 1, 4, 8, 16, 32 (trainer.fused), with
     torch.compile off and on; and beside fused, the alternative it must beat: K separate ResNet-20s
     stepped one after another, each captured as a CUDA graph (torch.cuda.make_graphed_callables),
     since grouped convolutions can be slower than separate ones in some shapes.
Everything is measured side by side in one run. `--budget-s` bounds the whole run: rows that would
start after it are skipped and marked so, never silently dropped. On a CPU (or with --small) the
CUDA-graph rows run eagerly and say so.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from trainer.attempt import pick_device
from trainer.data import Batch, data_info
from trainer.fused import FusedResNet20, fused_train_epoch
from trainer.loop import evaluate, optimizer_for, train_epoch
from trainer.models import TrackedNet, build_model
from trainer.provenance import device_name
from trainer.spec import TrialSpec

Row = tuple[str, str, str]  # what, images/s, note


class Clock:
    """The run's time budget: rows that would start after it are skipped."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s

    def left(self) -> bool:
        return time.perf_counter() < self.deadline


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_images(step: Callable[[], int], device: torch.device, warmup: int, steps: int) -> float:
    """Images/s of `step` (returns images it trained) over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    sync(device)
    return images / (time.perf_counter() - start)


def synthetic(shape: tuple[int, ...], classes: int, device: torch.device, n: int = 4) -> Iterator[Batch]:
    """Cycle through `n` random batches already on the device (no input cost at all)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(shape, generator=g).to(device), torch.randint(0, classes, shape[:1], generator=g).to(device)) for _ in range(n)]
    return itertools.cycle(batches)


# ---- ResNet-50 ----------------------------------------------------------------------------------
def resnet50_rows(a: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    spec = TrialSpec(model="resnet50", dataset="imagenet", batch_size=a.batch, device=str(device))
    info = data_info("imagenet")
    torch.manual_seed(0)
    model = build_model("resnet50", info.num_classes, 3).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer_for(model.parameters(), spec)
    size = a.image
    batches = synthetic((a.batch, 3, size, size), info.num_classes, device)

    def step_synthetic() -> int:
        return train_epoch(model, opt, itertools.islice(batches, 1), 0.0, info.num_classes, device).images

    rows: list[Row] = []
    synth = timed_images(step_synthetic, device, a.warmup, a.steps)
    rows.append(("ResNet-50 train, synthetic tensors on the device", f"{synth:,.0f}", f"batch {a.batch}, {size} px"))
    if not clock.left():
        skipped = "skipped: over the time budget"
        return [
            *rows,
            ("ResNet-50 train, real loader on generated JPEGs", "-", skipped),
            ("ResNet-50 evaluation, validation set decoded once", "-", skipped),
        ]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        from benchmarks.imagenet_loader import make_tree
        from trainer.imagenet.dataset import ImageNetData

        make_tree(Path(tmp), a.images)
        data = ImageNetData(info, Path(tmp), device, num_workers=a.workers, loader="auto", cache_dir=Path(tmp) / "cache")
        epoch = itertools.count()

        def step_loader() -> int:
            # Whole epochs of the generated set, one after another: the loader's steady state.
            it = data.train_batches(next(epoch), 0, a.batch, augment=True)
            return train_epoch(model, opt, it, 0.0, info.num_classes, device).images

        loader = timed_images(step_loader, device, 1, max(1, a.steps // max(1, data.n_train // a.batch)))
        rows.append(
            (
                "ResNet-50 train, real loader on generated JPEGs",
                f"{loader:,.0f}",
                f"loader {data.loader}, {a.workers} workers; stall {1 - loader / synth:.0%}",
            )
        )

        def step_eval() -> int:
            evaluate(model, data.test_batches(a.batch), info.num_classes, device)
            return data.n_test

        step_eval()  # decodes the validation set once
        ev = timed_images(step_eval, device, 0, 3)
        rows.append(
            ("ResNet-50 evaluation, validation set decoded once", f"{ev:,.0f}", f"{data.n_test} images, CSI of every unit included")
        )
        data.close()
    return rows


# ---- ResNet-20: single, fused, separate under CUDA graphs ------------------------------------
def resnet20_rows(a: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    rows: list[Row] = []
    spec = TrialSpec(device=str(device))
    shape = (a.batch20, 3, 32, 32)
    for compile_ in (False, True):
        for k in a.k:
            label = f"ResNet-20 fused K={k}" + (", compiled" if compile_ else "")
            if not clock.left():
                rows.append((label, "-", "skipped: over the time budget"))
                continue
            torch.manual_seed(0)
            net = FusedResNet20(k, 10, 3).to(device)
            if device.type == "cuda":
                net = net.to(memory_format=torch.channels_last)
            if compile_:
                net.compile()
            opt = optimizer_for(net.parameters(), spec)
            batches = [synthetic(shape, 10, device) for _ in range(k)]

            def step(
                net: FusedResNet20 = net, opt: torch.optim.Optimizer = opt, batches: list[Iterator[Batch]] = batches, k: int = k
            ) -> int:
                stats = fused_train_epoch(net, opt, [itertools.islice(b, 1) for b in batches], [-1.0] * k, 10, device)
                return stats[0].images * k

            rows.append((label, f"{timed_images(step, device, a.warmup, a.steps):,.0f}", "aggregate over the K trials, alpha -1"))
        if not compile_:
            rows.extend(single_rows(a, device, clock, shape))
    rows.extend(graphed_rows(a, device, clock, shape))
    return rows


def single_rows(a: argparse.Namespace, device: torch.device, clock: Clock, shape: tuple[int, ...]) -> list[Row]:
    if not clock.left():
        return [("ResNet-20 single trial (dense)", "-", "skipped: over the time budget")]
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3).to(device)
    opt = optimizer_for(model.parameters(), TrialSpec())
    batches = synthetic(shape, 10, device)
    rate = timed_images(lambda: train_epoch(model, opt, itertools.islice(batches, 1), -1.0, 10, device).images, device, a.warmup, a.steps)
    return [("ResNet-20 single trial (dense)", f"{rate:,.0f}", "alpha -1")]


def graphed_rows(a: argparse.Namespace, device: torch.device, clock: Clock, shape: tuple[int, ...]) -> list[Row]:
    """K separate ResNet-20s, each step's forward and backward replayed from a CUDA graph (plain CE loss)."""
    rows: list[Row] = []
    graphs = device.type == "cuda"
    for k in a.k:
        label = f"ResNet-20 x{k} separate" + (", CUDA graphs" if graphs else ", eager (no CUDA graphs on CPU)")
        if not clock.left():
            rows.append((label, "-", "skipped: over the time budget"))
            continue
        models: list[torch.nn.Module] = []
        opts: list[torch.optim.Optimizer] = []
        sample = torch.randn(shape, device=device)
        for i in range(k):
            torch.manual_seed(i)
            m: torch.nn.Module = Logits(build_model("resnet20", 10, 3).to(device))
            if graphs:
                m = torch.cuda.make_graphed_callables(m, (sample,))  # type: ignore[assignment]
            models.append(m)
            opts.append(torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
        inputs = synthetic(shape, 10, device)

        def step(models: list[torch.nn.Module] = models, opts: list[torch.optim.Optimizer] = opts, inputs: Iterator[Batch] = inputs) -> int:
            x, y = next(inputs)
            for m, o in zip(models, opts):
                loss = torch.nn.functional.cross_entropy(m(x), y)
                o.zero_grad(set_to_none=False)
                loss.backward()
                o.step()
            return x.shape[0] * len(models)

        rows.append((label, f"{timed_images(step, device, a.warmup, a.steps):,.0f}", "aggregate; the alternative fused must beat"))
    return rows


class Logits(torch.nn.Module):
    """A TrackedNet returning only its logits: what a CUDA graph can capture (tensors out)."""

    def __init__(self, net: TrackedNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def table(device: torch.device, rows: list[Row], seconds: float) -> str:
    head = (
        f"GPU check: {device_name(device)} ({device}), torch {torch.__version__}, {platform.node()}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s\n\n| measurement | images/s | note |\n|---|---:|---|"
    )
    return head + "\n" + "\n".join(f"| {w} | {r} | {n} |" for w, r, n in rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="CPU-sized: tiny batches and images, the same code paths")
    p.add_argument("--budget-s", type=float, default=420.0, help="rows that would start later are skipped (default 7 min)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    a = p.parse_args(argv)
    small = a.small
    a.batch, a.image, a.images, a.workers = (4, 64, 8, 0) if small else (256, 224, 1536, 8)
    a.batch20, a.steps, a.warmup = (16, 2, 1) if small else (512, 30, 5)
    a.k = (1, 4) if small else (1, 4, 8, 16, 32)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    device = pick_device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clock, start = Clock(a.budget_s), time.perf_counter()
    rows = resnet50_rows(a, device, clock) + resnet20_rows(a, device, clock)
    text = table(device, rows, time.perf_counter() - start)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
