"""The stem rule, torchvision equivalence, and the catalog's facts about every network.

The ResNet stem follows the image size (trainer.registry.ModelInfo.stem_for). Networks that
existed before the rule must build bitwise what they built then: the two builders below are
copied from trainer/models.py as it was before (resnet18: Tiny ImageNet stem; resnet50: as
torchvision), and every trial of those pairs must get the same weights for the same seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from trainer.models import MODELS, TrackedNet, build_for, build_model
from trainer.registry import DATASETS, LARGE_STEM_MIN_SIZE
from trainer.registry import MODELS as CATALOG
from trainer.spec import SpecError, TrialSpec


# ---- the builders before the stem rule (frozen copies) ------------------------------------------
def _old_tracked(tv: torchvision.models.ResNet, stem: nn.Module) -> TrackedNet:
    blocks = [
        (f"stage{i}.block{j}", block)
        for i, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4), start=1)
        for j, block in enumerate(layer, start=1)
    ]
    return TrackedNet(stem, blocks, tv.fc)


def old_resnet18(num_classes: int, in_channels: int) -> TrackedNet:
    tv = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return _old_tracked(tv, nn.Sequential(conv, tv.bn1, tv.relu))


def old_resnet50(num_classes: int, in_channels: int) -> TrackedNet:
    tv = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return _old_tracked(tv, nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("model,dataset,old", [("resnet18", "tinyimagenet", old_resnet18), ("resnet50", "imagenet", old_resnet50)])
def test_networks_from_before_the_rule_are_bitwise_the_same(seed: int, model: str, dataset: str, old) -> None:
    info = DATASETS[dataset]
    torch.manual_seed(seed)
    before = old(info.num_classes, info.in_channels)
    torch.manual_seed(seed)
    now = build_for(model, dataset)
    assert same_state(before, now)
    torch.manual_seed(seed)
    assert same_state(before, build_model(model, info.num_classes, info.in_channels))  # the default size: the same network


# ---- the stem rule ------------------------------------------------------------------------------
def stage1_side(model: TrackedNet, size: int) -> int:
    sides: list[int] = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    hook.remove()
    return sides[0]


@pytest.mark.parametrize(
    "model,dataset,stem,side",
    [
        ("resnet18", "tinyimagenet", "small", 64),
        ("resnet18", "imagenet", "imagenet", 56),
        ("resnet34", "imagenet", "imagenet", 56),
        ("resnet50", "imagenet", "imagenet", 56),
        ("resnet50", "tinyimagenet", "small", 64),
        ("resnet34", "cifar10", "small", 32),
    ],
)
def test_resnet_stem_follows_the_image_size(model: str, dataset: str, stem: str, side: int) -> None:
    size = DATASETS[dataset].image_size
    assert CATALOG[model].stem_for(size) == stem
    net = build_for(model, dataset)
    conv = net.stem[0]
    pools = [m for m in net.stem.modules() if isinstance(m, nn.MaxPool2d)]
    if stem == "imagenet":
        assert size >= LARGE_STEM_MIN_SIZE and conv.kernel_size == (7, 7) and conv.stride == (2, 2) and len(pools) == 1
    else:
        assert size < LARGE_STEM_MIN_SIZE and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and not pools
    assert stage1_side(net, size) == side


def test_resnet_imagenet_stem_is_torchvision() -> None:
    for arch in ("resnet18", "resnet34"):
        torch.manual_seed(1)
        tv = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
        torch.manual_seed(1)
        net = build_for(arch, "imagenet")
        assert [p.shape for p in tv.parameters()] == [p.shape for p in net.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(tv.parameters(), net.parameters()))


# ---- VGG16 --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vgg16_at_224_px_is_torchvision_vgg16() -> None:
    """At ImageNet size fc1 reads the 7x7 map torchvision's adaptive pool passes through unchanged:
    the same parameters for the same seed, and the same outputs."""
    torch.manual_seed(3)
    tv = torchvision.models.vgg16(weights=None, num_classes=10).eval()
    torch.manual_seed(3)
    net = build_model("vgg16", 10, 3, image_size=224).eval()
    assert all(torch.equal(a, b) for a, b in zip(tv.parameters(), net.parameters()))
    assert len(list(tv.parameters())) == len(list(net.parameters())) == 32
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], tv(x), rtol=0, atol=0)


def test_vgg16_units_and_names() -> None:
    net = build_for("vgg16", "cifar10")
    convs = [f"stage{g}.block{j}" for g, n in enumerate((2, 2, 3, 3, 3), start=1) for j in range(1, n + 1)]
    assert net.block_names == [*convs, "stage6.block1", "stage6.block2"]
    assert net.units_per_layer() == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 4096, 4096]
    fc1 = next(m for m in net.blocks[13].modules() if isinstance(m, nn.Linear))
    assert fc1.in_features == 512  # the 1x1 map after five max-pools of a 32 px image
    assert next(m for m in build_for("vgg16", "tinyimagenet").blocks[13].modules() if isinstance(m, nn.Linear)).in_features == 2048
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    # every tracked block ends with its ReLU; the block opening a stage starts with the max-pool
    assert all(isinstance(list(b.children())[-1], nn.ReLU) for b in net.blocks)
    assert [i for i, b in enumerate(net.blocks) if isinstance(next(iter(b.children())), nn.MaxPool2d)] == [2, 4, 7, 10, 13]


def test_vgg16_dropout_trains_and_evaluates() -> None:
    """Dropout before fc2 and before the output layer in training, none in evaluation."""
    torch.manual_seed(0)
    net = build_for("vgg16", "cifar10")
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        a, b = net(x)[0], net(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    net.train()
    torch.manual_seed(1)
    c = net(x)[0]
    torch.manual_seed(1)
    d = net(x)[0]
    torch.manual_seed(2)
    e = net(x)[0]
    assert torch.equal(c, d) and not torch.equal(c, e)  # dropout draws from torch's global RNG


def test_vgg16_needs_32_px() -> None:
    with pytest.raises(SpecError, match="needs images of at least 32 px; dataset 'digits' has 8 px"):
        TrialSpec(model="vgg16")
    with pytest.raises(ValueError, match="at least 32 px"):
        build_model("vgg16", 10, 1, image_size=8)


# ---- the catalog agrees with the networks -----------------------------------------------------
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16_torchvision" else n for n in MODELS])
def test_catalog_describes_the_built_network(name: str) -> None:
    dataset = {"resnet20": "cifar10", "resnet18": "tinyimagenet", "resnet34": "cifar10", "resnet50": "cifar10", "vgg16": "cifar10",
               "vgg16_torchvision": "cifar10"}[name]  # fmt: skip
    net = build_for(name, dataset)
    info = CATALOG[name]
    assert net.block_names == info.layer_names()
    widths = [w for w, n in zip(info.stage_widths, info.blocks_per_stage) for _ in range(n)]
    assert net.units_per_layer() == widths and sum(widths) == info.units()
