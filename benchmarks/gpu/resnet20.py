"""ResNet-20 rows: fused K against K separate networks, like for like; the trainer's own fused path.

CIFAR-sized random tensors already on the device (no input cost), batch = the trials' default.
Each model gets its own batch (the fused net its K batches side by side in the channels), alpha
-1 (the regularizer on) unless the row says plain CE.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from benchmarks.gpu.report import Result
from benchmarks.gpu.steps import Runner, fused_step, measure, single_step
from trainer.data import Batch
from trainer.fused import FusedResNet20, fused_train_epoch
from trainer.loop import optimizer_for, train_epoch
from trainer.models import build_model
from trainer.spec import TrialSpec

CLASSES = 10
ALPHA = -1.0


@dataclass(frozen=True)
class Timing:
    batch: int
    warmup: int
    steps: int
    seconds: float  # a row stops timing after this long (full check); small: `steps` decide

    @property
    def counts(self) -> tuple[int, int, float]:
        return self.warmup, self.steps, self.seconds


def _batches(k: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    return torch.randn((k, batch, 3, 32, 32), generator=g).to(device), torch.randint(0, CLASSES, (k, batch), generator=g).to(device)


def _layout(m: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return m.to(device).to(memory_format=torch.channels_last) if device.type == "cuda" else m.to(device)


def _opt(m: torch.nn.Module) -> torch.optim.Optimizer:
    return optimizer_for(m.parameters(), TrialSpec())  # the trials' SGD (lr, momentum 0.9, weight decay)


def graphs_note(device: torch.device, graphs: bool) -> str:
    if not graphs:
        return "eager"
    return "CUDA graphs" if device.type == "cuda" else "eager: no CUDA graphs on CPU"


def separate(k: int, t: Timing, device: torch.device, graphs: bool, alpha: float = ALPHA) -> Result:
    """K ResNet-20s, each its own optimizer and step (its own graph), stepped one after another."""
    xs, ys = _batches(k, t.batch, device)
    steps, opts = [], []
    for i in range(k):
        torch.manual_seed(i)
        net = _layout(build_model("resnet20", CLASSES, 3), device)
        opt = _opt(net)
        x = xs[i].contiguous(memory_format=torch.channels_last) if device.type == "cuda" else xs[i]
        steps.append(single_step(net, opt, x, ys[i], alpha, CLASSES))
        opts.append(opt)
    run = Runner(steps, opts, device, graphs and device.type == "cuda")

    def step() -> int:
        run()
        return k * t.batch

    rate = measure(step, device, t.warmup, t.steps, t.seconds)
    return Result(rate, f"aggregate over {k} models; {graphs_note(device, graphs)}; {_loss(alpha)}")


def fused(k: int, t: Timing, device: torch.device, graphs: bool, alpha: float = ALPHA, versus: float | None = None) -> Result:
    """One FusedResNet20 of K models, one optimizer, one step (one graph)."""
    xs, ys = _batches(k, t.batch, device)
    torch.manual_seed(0)
    net = _layout(FusedResNet20(k, CLASSES, 3), device)
    opt = _opt(net)
    x = xs.transpose(0, 1).reshape(t.batch, k * 3, 32, 32)  # model k's batch in channels 3k .. 3k+2
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    run = Runner([fused_step(net, opt, x, ys, alpha, CLASSES)], [opt], device, graphs and device.type == "cuda")

    def step() -> int:
        run()
        return k * t.batch

    rate = measure(step, device, t.warmup, t.steps, t.seconds)
    ratio = rate / versus if versus else None
    vs = f"fused / separate = {ratio:.2f}" if ratio else "no separate row to compare with"
    return Result(rate, f"aggregate; {graphs_note(device, graphs)}; {_loss(alpha)}; {vs}", ratio)


def _loss(alpha: float) -> str:
    return "plain CE" if alpha == 0 else f"CE - alpha*SI, alpha {alpha:g}"


def _cycle(x: torch.Tensor, y: torch.Tensor) -> Iterator[Batch]:
    return itertools.repeat((x, y))


def trainer_fused(k: int, t: Timing, device: torch.device, compile_: bool) -> Result:
    """trainer.fused.fused_train_epoch as trials run it (its host sync per step included)."""
    xs, ys = _batches(k, t.batch, device)
    torch.manual_seed(0)
    net = _layout(FusedResNet20(k, CLASSES, 3), device)
    compiled = compile_ and device.type == "cuda"
    if compiled:
        net.compile()
    opt = _opt(net)
    its = [_cycle(xs[i], ys[i]) for i in range(k)]

    def step() -> int:
        stats = fused_train_epoch(net, opt, [itertools.islice(it, 1) for it in its], [ALPHA] * k, CLASSES, device)  # type: ignore[arg-type]
        return stats[0].images * k

    rate = measure(step, device, t.warmup, t.steps, t.seconds)
    how = "torch.compile" if compiled else ("eager: torch.compile is not tried on CPU" if compile_ else "eager")
    return Result(rate, f"aggregate; trainer.fused as trials train; {how}; alpha {ALPHA:g}")


def trainer_single(t: Timing, device: torch.device) -> Result:
    """trainer.loop.train_epoch, one dense ResNet-20 (the unfused trial)."""
    xs, ys = _batches(1, t.batch, device)
    torch.manual_seed(0)
    net = build_model("resnet20", CLASSES, 3).to(device)
    opt = _opt(net)
    it = _cycle(xs[0], ys[0])
    rate = measure(
        lambda: train_epoch(net, opt, itertools.islice(it, 1), ALPHA, CLASSES, device).images, device, t.warmup, t.steps, t.seconds
    )
    return Result(rate, f"trainer.loop as an unfused trial trains; alpha {ALPHA:g}")
