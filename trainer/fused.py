"""K ResNet20 trials trained together as one fused network (grouped convolutions, HFTA style).

Trials that share model, dataset, epochs, batch size and optimizer settings but differ in alpha,
seed and onset can train in one process as one network: every conv holds the K models' channels
as a grouped convolution (groups=K), every BatchNorm runs over K*C channels (per-model statistics
for free: the channels are disjoint), the option-A shortcut pads channels per model, and the head
is a batched matmul over K per-model linear layers. Channels are model-major: channel k*C + c of
a fused tensor is channel c of model k.

Because the parameters are disjoint, the gradient of loss = sum_k (CE_k - alpha_k * SI_batch_k)
with respect to model k's slice is exactly model k's gradient in its own run, and SGD's momentum
and weight decay are elementwise, so one optimizer over the fused parameters equals K optimizers.
The fused network registers its parameters in TrackedNet's order with TrackedNet's names, so a
model's weights, BatchNorm buffers and SGD momentum buffers move between the two layouts by
slicing (`state_for`, `load_state_for`, `optimizer_state_for`, `load_optimizer_state_for`).

Numbers: on CPU in float32 a fused trial matches its separate run to about 1e-5 after a few
epochs (a grouped conv and a dense conv sum in different orders; see tests/test_fused.py).

    model = FusedResNet20.from_models([build_model(...) for each trial, seeded as run.py does])
    opt = torch.optim.SGD(model.parameters(), lr, momentum=..., weight_decay=...)
    stats = fused_train_epoch(model, opt, [data.train_batches(e, seed_k, B, aug) for k], alphas, C, dev)
    evals = fused_evaluate(model, data, C, dev, eval_batch)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from trainer import faults
from trainer.data import Batch
from trainer.loop import autocast
from trainer.metrics import EvalStats, EvalSums, TrainStats, TrainSums, per_model_ce
from trainer.models import BasicBlockA, TrackedNet, resnet20
from trainer.registry import MODELS
from trainer.selectivity import SIForm, batched_selectivity

STAGES = MODELS["resnet20"].stage_widths
DEPTHS = MODELS["resnet20"].blocks_per_stage


# ---- the fused network ------------------------------------------------------------------------
class FusedLinear(nn.Module):
    """K linear layers: weight [K, out, in], bias [K, out]; [B, K*in] -> [K, B, out]."""

    def __init__(self, k: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(k, d_out))
        bound = d_in**-0.5
        for i in range(k):
            nn.init.kaiming_normal_(self.weight.data[i])
        nn.init.uniform_(self.bias, -bound, bound)
        self.k, self.d_in = k, d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xk = x.view(x.shape[0], self.k, self.d_in).transpose(0, 1)  # [K, B, in], a view
        return torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight.transpose(1, 2))


class FusedResNet20(TrackedNet):
    """K resnet20 (option-A) networks as one; parameters in TrackedNet's order and names.

    TrackedNet's forward runs the fused layers as they are (`forward_flat`): stem, blocks, and
    the spatial means of the block outputs, [B, K*U] model-major; `forward` splits them per model.
    """

    def __init__(self, k: int, num_classes: int, in_channels: int) -> None:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        stem = nn.Sequential(
            nn.Conv2d(k * in_channels, k * STAGES[0], 3, 1, 1, bias=False, groups=k),
            nn.BatchNorm2d(k * STAGES[0]),
            nn.ReLU(inplace=True),
        )
        blocks, c_in = [], STAGES[0]
        for i, (c_out, n) in enumerate(zip(STAGES, DEPTHS), start=1):
            for j in range(1, n + 1):
                blocks.append((f"stage{i}.block{j}", BasicBlockA(c_in, c_out, 2 if (i > 1 and j == 1) else 1, groups=k)))
                c_in = c_out
        super().__init__(stem, blocks, FusedLinear(k, STAGES[-1], num_classes))  # type: ignore[arg-type]
        self.k, self.num_classes, self.in_channels = k, num_classes, in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # fan_in of a grouped weight is one model's

    def units_per_layer(self) -> list[int]:
        return [int(b.c_out) for b in self.blocks if isinstance(b, BasicBlockA)]

    def forward_flat(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """x [B, K*C_in, H, W] -> logits [K, B, classes], feats per block [B, K*U] (model-major)."""
        return super().forward(x, capture)

    def forward(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """x [B, K*C_in, H, W] -> logits [K, B, classes], feats per block [K, B, U] (views) or None."""
        logits, flat = self.forward_flat(x, capture)
        if flat is None:
            return logits, None
        return logits, [f.view(f.shape[0], self.k, -1).transpose(0, 1) for f in flat]

    # ---- moving between the fused layout and K TrackedNets -----------------------------------
    def _slice(self, name: str, t: torch.Tensor, k: int) -> torch.Tensor:
        if t.dim() == 0:  # num_batches_tracked: the same count for every model
            return t
        if name.startswith("head."):
            return t[k]
        return t.view(self.k, -1, *t.shape[1:])[k]

    def state_for(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's state_dict in TrackedNet's key layout (copies, safe to save or load)."""
        return {name: self._slice(name, t, k).detach().clone() for name, t in self.state_dict().items()}

    @torch.no_grad()
    def load_state_for(self, k: int, state: dict[str, Any]) -> None:
        """Write a TrackedNet state_dict (resnet20 of the same shape) into model k's slice."""
        own = self.state_dict()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"state_dict does not fit FusedResNet20: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, t in own.items():
            src = torch.as_tensor(state[name])
            if t.dim() == 0:
                t.copy_(src)
                continue
            dst = self._slice(name, t, k)
            if dst.shape != src.shape:
                raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
            dst.copy_(src)

    @classmethod
    def from_models(cls, models: list[TrackedNet]) -> FusedResNet20:
        """Fuse separately built (and seeded) resnet20s; the fused network starts where they are."""
        first = models[0]
        num_classes, in_channels = first.head.out_features, first.stem[0].in_channels  # type: ignore[index]
        with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG
            fused = cls(len(models), num_classes, in_channels).to(first.head.weight.device)
        for k, m in enumerate(models):
            fused.load_state_for(k, m.state_dict())
        return fused

    def to_models(self) -> list[TrackedNet]:
        """K separate TrackedNets (resnet20) holding the fused weights; the global RNG is untouched."""
        out = []
        for k in range(self.k):
            with torch.random.fork_rng(devices=[]):
                m = resnet20(self.num_classes, self.in_channels)
            m.load_state_dict(self.state_for(k))
            out.append(m.to(self.head.weight.device))
        return out

    # ---- SGD momentum buffers -------------------------------------------------------------------
    def optimizer_state_for(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        """Model k's share of an SGD state_dict, laid out as TrackedNet.parameters() (same order)."""
        full = optimizer.state_dict()
        names = [n for n, _ in self.named_parameters()]
        state = {
            idx: {key: (self._slice(names[idx], v, k).clone() if torch.is_tensor(v) and v.dim() else v) for key, v in s.items()}
            for idx, s in full["state"].items()
        }
        return {"state": state, "param_groups": [dict(g) for g in full["param_groups"]]}

    @torch.no_grad()
    def load_optimizer_state_for(self, optimizer: torch.optim.Optimizer, k: int, state: dict[str, Any]) -> None:
        """Write a separate trial's SGD state (momentum buffers) into model k's slice."""
        params = list(self.parameters())
        names = [n for n, _ in self.named_parameters()]
        for idx, s in state["state"].items():
            p = params[int(idx)]
            for key, v in s.items():
                if not torch.is_tensor(v) or v.dim() == 0:
                    continue
                buf = optimizer.state[p].get(key)
                if buf is None:
                    buf = optimizer.state[p][key] = torch.zeros_like(p)
                self._slice(names[int(idx)], buf, k).copy_(v)


# ---- training and evaluation ------------------------------------------------------------------
def fused_train_epoch(
    model: FusedResNet20,
    optimizer: torch.optim.Optimizer,
    batches_per_model: list[Iterable[Batch]],
    alphas: list[float],
    num_classes: int,
    device: torch.device,
    form: SIForm | None = None,
    carry: list[TrainStats] | None = None,
) -> list[TrainStats]:
    """One epoch (or a stretch of one) of all K models; model k sees batches_per_model[k].

    Returns per-model TrainStats as trainer.loop.train_epoch would; `carry` (a mid-epoch resume):
    each model's stretch so far, whose sums it continues. A non-finite loss is NOT raised here:
    the caller checks each model's `loss` (math.isfinite) and fails that trial only.
    """
    if len(batches_per_model) != model.k or len(alphas) != model.k:
        raise ValueError(f"need K={model.k} batch iterators and alphas, got {len(batches_per_model)} and {len(alphas)}")
    model.train()
    k = model.k
    regularize = [a != 0.0 for a in alphas]
    any_reg = any(regularize)
    alpha_t = torch.tensor(alphas, device=device, dtype=torch.float32)
    sums = TrainSums(k, device, carry)
    iterators: list[Iterator[Batch]] = [iter(b) for b in batches_per_model]
    start = time.perf_counter()
    for parts in zip(*iterators):
        x = torch.cat([p[0] for p in parts], dim=1)  # [B, K*C_in, H, W]
        y = torch.stack([p[1] for p in parts])  # [K, B]
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        si = None
        with autocast(device):
            logits, feats = model(x, capture=any_reg)
            ce = per_model_ce(logits.float(), y, "mean")
            if any_reg:
                assert feats is not None
                si = batched_selectivity(feats, y, num_classes, form=form, layer_names=model.block_names, strict=False)
                loss = ce - alpha_t * si  # alpha_k = 0: exactly CE_k's gradient for model k
            else:
                loss = ce
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        faults.point("train-step")
        sums.add(loss, ce, si, logits, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums.result(regularize, time.perf_counter() - start)


@torch.no_grad()
def fused_evaluate(model: FusedResNet20, data: Any, num_classes: int, device: torch.device, batch: int) -> list[EvalStats]:
    """Evaluate all K models on the same test batches; per-model EvalStats as trainer.loop.evaluate.

    The class sums of all K models are one [C, K*U] float64 scatter-add per layer with the shared
    labels, so each model's column arithmetic is the separate evaluation's; `seconds` is the
    whole fused pass (shared by the K models).
    """
    model.eval()
    k = model.k
    start = time.perf_counter()
    sums = EvalSums(k, num_classes, device)
    for x, y in data.test_batches(batch):
        xk = x.repeat(1, k, 1, 1)
        if device.type == "cuda":
            xk = xk.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits, feats = model.forward_flat(xk, capture=True)
        assert feats is not None
        sums.add(logits.float(), y, feats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums.result(time.perf_counter() - start)
