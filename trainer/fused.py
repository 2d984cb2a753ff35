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

The network is trainer.loop's `Slots` for K models (`join`, `replicate`, `forward_slots`,
`forward_flat`): it trains and evaluates in trainer.loop's one step loop and evaluation loop, the
same code a single dense network runs as K = 1; this module holds only the fused layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from trainer.data import Batch
from trainer.loop import evaluate_slots, train_slots
from trainer.metrics import EvalStats, TrainStats
from trainer.models import BasicBlockA, TrackedNet, resnet20
from trainer.registry import MODELS
from trainer.selectivity import SIForm

STAGES = MODELS["resnet20"].stage_widths
DEPTHS = MODELS["resnet20"].blocks_per_stage


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # A GPU's grouped convolutions are fastest channels-last; CPU keeps the layout (and its numbers).
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


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

    # ---- the Slots of trainer.loop's step and evaluation loops ----------------------------------
    def join(self, parts: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """The K models' batches as one input [B, K*C_in, H, W] and their labels [K, B]."""
        x = torch.cat([p[0] for p in parts], dim=1)
        return _channels_last(x), torch.stack([p[1] for p in parts])

    def replicate(self, x: torch.Tensor) -> torch.Tensor:
        """One test batch [B, C_in, H, W] as every model's input [B, K*C_in, H, W]."""
        return _channels_last(x.repeat(1, self.k, 1, 1))

    def forward_slots(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        return self(x, capture)  # through __call__: a compiled network runs compiled

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


# ---- training and evaluation: trainer.loop's one step loop and evaluation loop, K slots -----------
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
    """One epoch (or a stretch of one) of all K models, model k on batches_per_model[k]: trainer.loop.train_slots."""
    return train_slots(model, optimizer, batches_per_model, alphas, num_classes, device, form, carry)


def fused_evaluate(model: FusedResNet20, data: Any, num_classes: int, device: torch.device, batch: int) -> list[EvalStats]:
    """All K models on the same test batches, per-model EvalStats: trainer.loop.evaluate_slots."""
    return evaluate_slots(model, data.test_batches(batch), num_classes, device)
