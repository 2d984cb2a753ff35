"""Training steps for the ResNet-20 comparison, like for like, and how they are replayed and timed.

Fused K and K separate ResNet-20s take the same step: bf16 autocast on CUDA (float32 on CPU, as
the trainer), channels-last on CUDA, loss CE - alpha * SI_batch (or plain CE), backward, SGD with
the trial's momentum and weight decay. `Runner` runs a step eagerly (zero_grad, step) or replays it
from a CUDA graph that holds forward, backward AND the optimizer step; both the fused and the
separate runs use the same placement, so the only difference left is grouped vs separate convs.

SI_batch here is trainer.selectivity.batched_selectivity's default form without its host sync
(the "fewer than two classes" check reads a number back; a CUDA graph cannot): a model whose batch
has one class gets 0, as batched_selectivity(strict=False) gives. tests/test_gpu_check.py checks
the two agree. The K separate models call it with K = 1, so both sides run the same operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainer.selectivity import EPS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> torch.autocast:
    # cache_enabled=False: required for autocast inside a CUDA graph capture; used eagerly too (like for like).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


def graph_safe_selectivity(feats: list[torch.Tensor], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """SI_batch [K] of per-layer features [K, B, U_l] and labels [K, B] (default form, eps 1e-7), no host sync."""
    k, b = labels.shape
    counts = labels.new_zeros(k, num_classes).scatter_add_(1, labels, torch.ones_like(labels))
    present = counts > 0
    n_present = present.sum(1)
    a = torch.cat(feats, dim=2)
    u = a.shape[2]
    sums = a.new_zeros(k, num_classes, u).scatter_add(1, labels.unsqueeze(2).expand(k, b, u), a)
    stats = sums / counts.clamp_min(1).unsqueeze(2).to(a.dtype)
    mu_max = stats.masked_fill(~present.unsqueeze(2), float("-inf")).amax(1)
    mu_rest = (stats.sum(1) - mu_max) / (n_present - 1).clamp_min(1).unsqueeze(1).to(a.dtype)
    csi = (mu_max - mu_rest) / (mu_max + mu_rest + EPS)
    csi = torch.where((n_present >= 2).unsqueeze(1), csi, torch.zeros_like(csi))
    return torch.stack([c.mean(1) for c in csi.split([f.shape[2] for f in feats], dim=1)]).mean(0)


def fused_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, alpha: float, classes: int
) -> Callable[[], None]:
    """One step of a FusedResNet20 on x [B, K*3, H, W], y [K, B]: sum over k of CE_k - alpha * SI_k."""
    device = x.device

    def step() -> None:
        with autocast(device):
            logits, feats = net(x, capture=alpha != 0)
            k, b, c = logits.shape
            loss = F.cross_entropy(logits.float().reshape(k * b, c), y.reshape(k * b), reduction="none").view(k, b).mean(1)
            if alpha != 0:
                loss = loss - alpha * graph_safe_selectivity(feats, y, classes)
        loss.sum().backward()
        opt.step()

    return step


def single_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, alpha: float, classes: int
) -> Callable[[], None]:
    """One step of one TrackedNet on x [B, 3, H, W], y [B]: CE - alpha * SI (SI as the fused step's, K = 1)."""
    device = x.device

    def step() -> None:
        with autocast(device):
            logits, feats = net(x, capture=alpha != 0)
            loss = F.cross_entropy(logits.float(), y)
            if alpha != 0:
                loss = loss - alpha * graph_safe_selectivity([f.unsqueeze(0) for f in feats], y.unsqueeze(0), classes)[0]
        loss.backward()
        opt.step()

    return step


class Runner:
    """Steps (one per model, or one for the fused net) run eagerly, or each captured whole as a CUDA graph.

    Graphs: warm-up on a side stream (cuDNN picks its kernels, SGD makes its momentum buffers),
    then capture with the gradients set to None, so every replay's backward writes them afresh.
    All graphs share one memory pool: they are replayed in capture order, never concurrently.
    """

    def __init__(self, steps: list[Callable[[], None]], opts: list[torch.optim.Optimizer], device: torch.device, graphs: bool) -> None:
        self.steps, self.opts, self.device = steps, opts, device
        self.graphs: list[torch.cuda.CUDAGraph] = []
        if graphs:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._eager()
            torch.cuda.current_stream(device).wait_stream(side)
            pool = None
            for step, opt in zip(steps, opts):
                opt.zero_grad(set_to_none=True)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    step()
                pool = g.pool()
                self.graphs.append(g)

    def _eager(self) -> None:
        for step, opt in zip(self.steps, self.opts):
            opt.zero_grad(set_to_none=True)
            step()

    def __call__(self) -> None:
        if self.graphs:
            for g in self.graphs:
                g.replay()
        else:
            self._eager()


def measure(step: Callable[[], int], device: torch.device, warmup: int, steps: int, seconds: float) -> float:
    """Images/s of `step` (returns the images it trained): after `warmup` calls, `steps` calls or
    as many as fit in `seconds` (at least one), timed to a device synchronisation."""
    for _ in range(warmup):
        step()
    sync(device)
    start, images, n = time.perf_counter(), 0, 0
    while n < steps and (n == 0 or time.perf_counter() - start < seconds):
        images += step()
        n += 1
    sync(device)
    return images / (time.perf_counter() - start)
