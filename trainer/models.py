"""The three networks of the papers, each as stem -> named residual blocks -> head.

`TrackedNet.forward(x, capture=True)` also returns the spatial mean of every residual block's
output (after the ReLU that follows the skip addition), named `stage<i>.block<j>`.
With `capture=False` (plain training at alpha = 0) nothing extra is computed or kept.

    resnet20  He et al. 2016 CIFAR ResNet, 3 stages x 3 BasicBlocks, 16/32/64 channels,
              parameter-free (option A) shortcuts as in the paper; input channels follow the data
    resnet18  torchvision ResNet18 with a 3x3 stride-1 stem and no max-pool (Tiny ImageNet 64x64)
    resnet50  torchvision ResNet50 as is (ImageNet 224)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from trainer.registry import MODELS as CATALOG


class TrackedNet(nn.Module):
    """A network whose residual-block outputs can be read without hooks."""

    def __init__(self, stem: nn.Module, blocks: list[tuple[str, nn.Module]], head: nn.Linear) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(b for _, b in blocks)
        self.block_names = [n for n, _ in blocks]
        self.head = head

    def forward(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        x = self.stem(x)
        feats: list[torch.Tensor] | None = [] if capture else None
        for block in self.blocks:
            x = block(x)
            if feats is not None:
                feats.append(x.mean(dim=(2, 3), dtype=torch.float32))  # fp32 class means under bf16
        pooled = feats[-1] if feats is not None else x.mean(dim=(2, 3))  # the last block's mean is the head's input
        return self.head(pooled), feats

    def units_per_layer(self) -> list[int]:
        return [_out_channels(b) for b in self.blocks]


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


# ---- ResNet20 (CIFAR) ---------------------------------------------------------------------
class BasicBlockA(nn.Module):
    """He et al. CIFAR BasicBlock with option-A shortcut: subsample and zero-pad channels.

    `groups` = K puts K independent blocks side by side (grouped convolutions, model-major
    channels; trainer.fused) and pads each model's channels on its own.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        k = groups
        self.conv1 = nn.Conv2d(k * c_in, k * c_out, 3, stride, 1, bias=False, groups=k)
        self.bn1 = nn.BatchNorm2d(k * c_out)
        self.conv2 = nn.Conv2d(k * c_out, k * c_out, 3, 1, 1, bias=False, groups=k)
        self.bn2 = nn.BatchNorm2d(k * c_out)
        self.k, self.c_in, self.c_out, self.stride, self.pad = k, c_in, c_out, stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, :: self.stride, :: self.stride]
            b, _, h, w = short.shape
            short = short.reshape(b, self.k, self.c_in, h, w)  # pad each model's own channels
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            short = short.reshape(b, self.k * self.c_out, h, w)
        return F.relu(out + short)


def resnet20(num_classes: int, in_channels: int) -> TrackedNet:
    widths, depths = CATALOG["resnet20"].stage_widths, CATALOG["resnet20"].blocks_per_stage
    stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    blocks: list[tuple[str, nn.Module]] = []
    c_in = widths[0]
    for i, (c_out, n) in enumerate(zip(widths, depths), start=1):
        for j in range(1, n + 1):
            stride = 2 if (i > 1 and j == 1) else 1
            blocks.append((f"stage{i}.block{j}", BasicBlockA(c_in, c_out, stride)))
            c_in = c_out
    net = TrackedNet(stem, blocks, nn.Linear(widths[-1], num_classes))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return net


# ---- torchvision ResNets ------------------------------------------------------------------
def _from_torchvision(tv: torchvision.models.ResNet, stem: nn.Module) -> TrackedNet:
    blocks = [
        (f"stage{i}.block{j}", block)
        for i, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4), start=1)
        for j, block in enumerate(layer, start=1)
    ]
    return TrackedNet(stem, blocks, tv.fc)


def resnet18(num_classes: int, in_channels: int) -> TrackedNet:
    tv = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    # Tiny ImageNet variant (Leavitt & Morcos): 3x3 stride-1 stem, no max-pool, for 64x64 inputs.
    conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return _from_torchvision(tv, nn.Sequential(conv, tv.bn1, tv.relu))


def resnet50(num_classes: int, in_channels: int) -> TrackedNet:
    tv = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        tv.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return _from_torchvision(tv, nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool))


MODELS: dict[str, Callable[[int, int], TrackedNet]] = {
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_model(name: str, num_classes: int, in_channels: int) -> TrackedNet:
    return MODELS[name](num_classes, in_channels)


def layer_names(name: str) -> list[str]:
    """The tracked layers of model `name`, without building it."""
    return CATALOG[name].layer_names()
