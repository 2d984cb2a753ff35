"""The networks: tracked blocks (docs/science.md), their names and sizes, and activation capture.

Stems, torchvision equivalence and the catalog: tests/test_models_zoo.py; whole trials of the
newer networks on fake data trees: tests/test_models_trials.py.
"""

from __future__ import annotations

import pytest
import torch

from trainer.models import MODELS, TrackedNet, build_model

EXPECTED_UNITS = {
    "resnet20": [16] * 3 + [32] * 3 + [64] * 3,
    "resnet18": [64, 64, 128, 128, 256, 256, 512, 512],
    "resnet34": [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3,
    "resnet50": [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3,
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 4096, 4096],
}
BLOCKS_PER_STAGE = {
    "resnet20": (3, 3, 3),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "vgg16": (2, 2, 3, 3, 3, 2),
}
# Cheap inputs: (channels, size). resnet34/50 (ImageNet stem by default) and vgg16 downsample 32x;
# 32x32 still leaves 1x1 at the end.
INPUTS = {"resnet20": (3, 32), "resnet18": (3, 16), "resnet34": (3, 32), "resnet50": (3, 32), "vgg16": (3, 32)}


# vgg16_torchvision (138 M parameters, 1000 outputs) has its own tests in tests/test_vgg_rplus.py.
@pytest.fixture(scope="module", params=[m for m in MODELS if m != "vgg16_torchvision"])
def net(request: pytest.FixtureRequest) -> tuple[str, TrackedNet]:
    torch.manual_seed(0)
    return request.param, build_model(request.param, num_classes=7, in_channels=3).eval()


def expected_names(name: str) -> list[str]:
    return [f"stage{i}.block{j}" for i, n in enumerate(BLOCKS_PER_STAGE[name], 1) for j in range(1, n + 1)]


def test_tracked_blocks(net: tuple[str, TrackedNet]) -> None:
    name, model = net
    assert len(model.block_names) == {"resnet20": 9, "resnet18": 8, "resnet34": 16, "resnet50": 16, "vgg16": 15}[name]
    assert model.block_names == expected_names(name)
    assert model.units_per_layer() == EXPECTED_UNITS[name]
    assert model.head.out_features == 7


def test_capture_equals_hooked_block_outputs(net: tuple[str, TrackedNet]) -> None:
    """capture=True returns, per block, the spatial mean of its output, or a fully connected output as is (read here with forward hooks)."""
    name, model = net
    c, size = INPUTS[name]
    x = torch.randn(2, c, size, size, generator=torch.Generator().manual_seed(1))
    hooked: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, out: hooked.append(out.detach().clone())) for b in model.blocks]
    try:
        with torch.no_grad():
            logits, feats = model(x, capture=True)
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == (2, 7)
    assert feats is not None and len(feats) == len(hooked) == len(EXPECTED_UNITS[name])
    for f, out, units in zip(feats, hooked, EXPECTED_UNITS[name]):
        assert f.shape == (2, units) and f.dtype == torch.float32
        assert out.dim() in (2, 4) and out.shape[1] == units
        torch.testing.assert_close(f, out.mean(dim=(2, 3)) if out.dim() == 4 else out, rtol=1e-6, atol=1e-7)
        assert (out >= 0).all()  # after the ReLU (in ResNets, the one that follows the skip addition)
    with torch.no_grad():
        plain_logits, none = model(x, capture=False)
        default_logits, none2 = model(x)
    assert none is None and none2 is None
    torch.testing.assert_close(plain_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(default_logits, logits, rtol=0, atol=0)


def test_resnet20_is_the_cifar_resnet() -> None:
    model = build_model("resnet20", 10, 3)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6  # He et al. 2016, Table 6: 0.27M
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_resnet18_stem_keeps_resolution() -> None:
    """Tiny ImageNet variant: 3x3 stride-1 stem and no max-pool, so stage 1 runs at the input size."""
    model = build_model("resnet18", 200, 3).eval()
    conv = model.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    sizes: list[int] = []
    h = model.blocks[0].register_forward_hook(lambda m, i, out: sizes.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 24, 24))
    h.remove()
    assert sizes == [24]


def test_resnet50_is_torchvision() -> None:
    import torchvision

    model = build_model("resnet50", 1000, 3)
    tv = torchvision.models.resnet50(weights=None)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tv.parameters())


def test_digits_resnet20() -> None:
    """Digits: one channel, 8x8; the stage-3 blocks run at 2x2."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1)
    x = torch.randn(5, 1, 8, 8)
    logits, feats = model(x, capture=True)
    assert logits.shape == (5, 10)
    assert [f.shape for f in feats] == [torch.Size([5, u]) for u in EXPECTED_UNITS["resnet20"]]
    # The capture is part of the graph: the regularizer can backpropagate through it.
    feats[4].sum().backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_same_seed_same_init() -> None:
    a = [p.clone() for p in (torch.manual_seed(3), build_model("resnet20", 10, 1))[1].parameters()]
    b = [p.clone() for p in (torch.manual_seed(3), build_model("resnet20", 10, 1))[1].parameters()]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
