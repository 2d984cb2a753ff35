"""The networks of the papers, each as stem -> named tracked blocks -> head.

`TrackedNet.forward(x, capture=True)` also returns every tracked block's units: the spatial mean
of each channel of a convolutional block's output ([B, C, H, W] -> [B, C]), or the values of a
fully connected block's output ([B, U], a linear unit's activation is its value). Blocks are named
`stage<i>.block<j>`; the head takes the last block's units. With `capture=False` (plain training
at alpha = 0) nothing extra is computed or kept.

    resnet20  He et al. 2016 CIFAR ResNet, 3 stages x 3 BasicBlocks, 16/32/64 channels,
              parameter-free (option A) shortcuts as in the paper; input channels follow the data
    resnet18, resnet34, resnet50
              torchvision's ResNets; a block is a residual block (after the ReLU that follows the
              skip addition), stage i = torchvision's layer i. The stem follows the input size
              (trainer.registry.ModelInfo.stem_for): from 128 px (ImageNet) torchvision's 7x7
              stride-2 conv + 3x3 max-pool; below (Tiny ImageNet 64, CIFAR 32) a 3x3 stride-1 conv
              and no max-pool, as Leavitt & Morcos ran ResNets on 64 px images
    vgg16     torchvision's VGG16 (config D, no BatchNorm): the 13 conv layers' ReLU outputs are
              stage<g>.block<j>, g = the conv group between max-pools (2, 2, 3, 3, 3 convs); the two
              hidden classifier layers' ReLU outputs are stage6.block1 and stage6.block2; the head
              is the output layer (dropout 0.5 before fc2 and before the head, as torchvision's).
              fc1 reads the last max-pool's output flattened, 512 x (s/32)^2 for s px inputs: at
              224 px that is torchvision's network exactly (its 7x7 adaptive pool is then the
              identity); at 32 px (CIFAR) the 1x1 map is not copied 49 times into a 25088-wide
              fc1, which would train fc1 with 49 times the step size and hold 103M weights that
              see one vector.
    vgg16_torchvision
              torchvision's `vgg16()` itself, unmodified, as Ranadive et al. trained it on CIFAR-10:
              its 7x7 adaptive average pool (which copies a 32 px input's 1x1 map 49 times), a
              25,088-wide fc1 and 1000 outputs whatever the data set's classes (138.4 M
              parameters); the same tracked blocks as vgg16. Built by torchvision, so its seeded
              init is torchvision's.

Build a trial's network with `build_for(model, dataset)` (classes, channels and image size from the
catalog); `build_model(name, classes, channels, image_size)` takes them explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from trainer.registry import DATASETS
from trainer.registry import MODELS as CATALOG


class TrackedNet(nn.Module):
    """A network whose tracked blocks' outputs can be read without hooks."""

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
                # fp32 class means under bf16 / fp16; a float64 network keeps float64 (its head takes them)
                feats.append(units(x, torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else None))
        pooled = feats[-1] if feats is not None else units(x)  # the last block's units are the head's input
        return self.head(pooled), feats

    def units_per_layer(self) -> list[int]:
        return [_out_units(b) for b in self.blocks]


def units(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A block output's units [B, U]: each channel's spatial mean, or a fully connected output as is."""
    if x.dim() == 2:
        return x if dtype is None else x.to(dtype)
    return x.mean(dim=(2, 3), dtype=dtype)


def _out_units(block: nn.Module) -> int:
    last = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    return last.out_channels if isinstance(last, nn.Conv2d) else last.out_features


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


def resnet20(num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
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
def _resnet(arch: str, num_classes: int, in_channels: int, image_size: int | None) -> TrackedNet:
    info = CATALOG[arch]
    tv: torchvision.models.ResNet = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # The new stem conv is made after torchvision's whole network, so the rest of the init is
    # torchvision's for the seed (and the networks built before this rule stay bitwise the same).
    if info.stem_for(image_size or info.default_image_size) == "small":
        conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        stem = nn.Sequential(conv, tv.bn1, tv.relu)
    else:
        if in_channels != 3:
            tv.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(tv.conv1.weight, mode="fan_out", nonlinearity="relu")
        stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
    blocks = [
        (f"stage{i}.block{j}", block)
        for i, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4), start=1)
        for j, block in enumerate(layer, start=1)
    ]
    return TrackedNet(stem, blocks, tv.fc)


def resnet18(num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
    return _resnet("resnet18", num_classes, in_channels, image_size)


def resnet34(num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
    return _resnet("resnet34", num_classes, in_channels, image_size)


def resnet50(num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
    return _resnet("resnet50", num_classes, in_channels, image_size)


# ---- VGG16 --------------------------------------------------------------------------------
class DropoutLinear(nn.Linear):
    """Dropout, then a linear layer: torchvision VGG's output layer (its parameters are a Linear's)."""

    def __init__(self, d_in: int, d_out: int, p: float) -> None:
        super().__init__(d_in, d_out)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.p, self.training))


def vgg16(num_classes: int, in_channels: int, image_size: int | None = None, dropout: float = 0.5) -> TrackedNet:
    info = CATALOG["vgg16"]
    size = image_size or info.default_image_size
    if size < info.min_image_size:
        raise ValueError(f"vgg16 needs inputs of at least {info.min_image_size} px (five 2x2 max-pools), got {size}")
    features = list(torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False).children())
    if in_channels != 3:  # make_layers assumes RGB; the first conv takes the data's channels
        features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    side = size // 32  # after the five max-pools
    # torchvision's classifier, its modules made in torchvision's order (fc1, fc2, output), so the
    # seeded init is torchvision's
    fc1, fc2 = nn.Linear(512 * side * side, 4096), nn.Linear(4096, 4096)
    head = DropoutLinear(4096, num_classes, dropout)
    blocks: list[tuple[str, nn.Module]] = []
    stage, j = 1, 0
    layers: list[nn.Module] = []  # the current block: [max-pool,] conv, ReLU
    for m in features:
        if isinstance(m, nn.MaxPool2d):  # a max-pool opens the next stage's first block
            stage, j = stage + 1, 0
        layers.append(m)
        if isinstance(m, nn.ReLU):  # the ReLU after each conv closes a block: its output is tracked
            j += 1
            blocks.append((f"stage{stage}.block{j}", nn.Sequential(*layers)))
            layers = []
    blocks.append((f"stage{stage}.block1", nn.Sequential(*layers, nn.Flatten(1), fc1, nn.ReLU(inplace=True))))
    blocks.append((f"stage{stage}.block2", nn.Sequential(nn.Dropout(dropout), fc2, nn.ReLU(inplace=True))))
    net = TrackedNet(nn.Sequential(), blocks, head)
    for m in net.modules():  # torchvision VGG's init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:  # make_layers' convs have biases
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return net


def vgg16_torchvision(num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
    """torchvision's `vgg16()` with its 1000 outputs (`num_classes` is not used: labels are 0..C-1 of them)."""
    info = CATALOG["vgg16_torchvision"]
    size = image_size or info.default_image_size
    if size < info.min_image_size:
        raise ValueError(f"vgg16_torchvision needs inputs of at least {info.min_image_size} px (five 2x2 max-pools), got {size}")
    tv = torchvision.models.vgg16(weights=None)
    features = list(tv.features.children())
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        nn.init.kaiming_normal_(features[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(features[0].bias, 0)
    fc1, relu1, drop1, fc2, relu2, drop2, out = tv.classifier.children()
    blocks: list[tuple[str, nn.Module]] = []
    stage, j = 1, 0
    layers: list[nn.Module] = []
    for m in features:  # blocks as vgg16's: a max-pool opens a stage, a ReLU closes a block
        if isinstance(m, nn.MaxPool2d):
            stage, j = stage + 1, 0
        layers.append(m)
        if isinstance(m, nn.ReLU):
            j += 1
            blocks.append((f"stage{stage}.block{j}", nn.Sequential(*layers)))
            layers = []
    blocks.append((f"stage{stage}.block1", nn.Sequential(*layers, tv.avgpool, nn.Flatten(1), fc1, relu1)))
    blocks.append((f"stage{stage}.block2", nn.Sequential(drop1, fc2, relu2)))
    assert isinstance(out, nn.Linear) and isinstance(drop2, nn.Dropout)
    head = DropoutLinear(out.in_features, out.out_features, drop2.p)
    head.load_state_dict(out.state_dict())  # torchvision's initialised weights, not a new draw
    return TrackedNet(nn.Sequential(), blocks, head)


MODELS: dict[str, Callable[..., TrackedNet]] = {
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet34": resnet34,
    "vgg16": vgg16,
    "vgg16_torchvision": vgg16_torchvision,
}


def build_model(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> TrackedNet:
    """Model `name` for `image_size` px inputs (None: the model's default, ModelInfo.default_image_size)."""
    return MODELS[name](num_classes, in_channels, image_size)


def build_for(model: str, dataset: str) -> TrackedNet:
    """The network of a trial's `model` and `dataset` fields: classes, channels and image size from the catalog."""
    d = DATASETS[dataset]
    return build_model(model, d.num_classes, d.in_channels, d.image_size)


def layer_names(name: str) -> list[str]:
    """The tracked layers of model `name`, without building it."""
    return CATALOG[name].layer_names()
