"""The catalog of models and data sets: names and facts, without importing torch.

Planning thousands of trials (spec validation, packing, the GPU-hour estimate) reads these facts
and never loads torch. `trainer.models.MODELS` and `trainer.data.DATASETS` hold the builders under
exactly these names (a test checks they agree), and the builders take their widths from here, so
each fact lives in one place.

The ResNet stem follows the data set's image size (`stem_for`): images of at least
LARGE_STEM_MIN_SIZE px (ImageNet, 224) get torchvision's 7x7 stride-2 convolution and 3x3
max-pool; smaller ones (Tiny ImageNet 64, CIFAR 32, digits 8) a 3x3 stride-1 convolution and no
max-pool, as Leavitt & Morcos adapted ResNets to 64 px, so stage 1 runs at the input's resolution.
One model name is one architecture; the stem is not part of it, and the trial id already holds
the data set.
"""

from __future__ import annotations

from dataclasses import dataclass

LARGE_STEM_MIN_SIZE = 128  # images this size or larger get the ImageNet stem (ResNets)


@dataclass(frozen=True)
class ModelInfo:
    """A network's tracked structure: stages of tracked blocks, each block's output width.

    A block is a residual block (ResNets) or one ReLU output of VGG (a conv layer with its ReLU,
    or a hidden classifier layer with its ReLU); trainer.models builds them.
    """

    name: str
    stage_widths: tuple[int, ...]  # output channels (units) of every block of stage i (1-based i)
    blocks_per_stage: tuple[int, ...]
    fusable: bool  # has a fused K-trials form (trainer.fused)
    about: str
    min_image_size: int = 1  # smallest input side the network takes (VGG: five 2x2 max-pools)
    default_image_size: int = 32  # the input build_model assumes when not told (the model's historical data set)
    resnet_stem: bool = False  # takes the stem by image size (stem_for)

    def stem_for(self, image_size: int) -> str:
        """The ResNet stem for this input size: "imagenet" (7x7 stride 2 + max-pool) or "small" (3x3
        stride 1, no max-pool); "none" for a network without a choice."""
        if not self.resnet_stem:
            return "none"
        return "imagenet" if image_size >= LARGE_STEM_MIN_SIZE else "small"

    def layer_names(self) -> list[str]:
        """The tracked layers, `stage<i>.block<j>` (1-based), in forward order."""
        return [f"stage{i}.block{j}" for i, n in enumerate(self.blocks_per_stage, start=1) for j in range(1, n + 1)]

    def units(self) -> int:
        """Tracked units in all layers."""
        return sum(w * n for w, n in zip(self.stage_widths, self.blocks_per_stage))


@dataclass(frozen=True)
class DatasetInfo:
    """A data set's size and shape as read from its standard on-disk layout."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # the network's input side in pixels (after cropping)
    n_train: int
    n_test: int
    in_memory: bool  # held on the training device as uint8 (else streamed from image files)


def _resnet(name: str, widths: tuple[int, ...], depths: tuple[int, ...], default_size: int, about: str) -> ModelInfo:
    """A torchvision ResNet: not fusable, stem by image size; `default_size`: its historical data set's."""
    return ModelInfo(name, widths, depths, False, about, default_image_size=default_size, resnet_stem=True)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("resnet20", (16, 32, 64), (3, 3, 3), True, "He et al. 2016 CIFAR ResNet, option-A shortcuts"),
        _resnet("resnet18", (64, 128, 256, 512), (2, 2, 2, 2), 64, "torchvision ResNet18 (3x3 stem at 64 px, 7x7 at 224)"),
        _resnet("resnet50", (256, 512, 1024, 2048), (3, 4, 6, 3), 224, "torchvision ResNet50 (7x7 stem at 224 px, 3x3 at 64)"),
        _resnet("resnet34", (64, 128, 256, 512), (3, 4, 6, 3), 224, "torchvision ResNet34 (7x7 stem at 224 px, 3x3 at 64)"),
        # 13 conv ReLUs in five groups between max-pools (config D), then the two hidden classifier
        # layers as stage 6; no BatchNorm; dropout 0.5 before the hidden fc2 and before the output layer.
        ModelInfo("vgg16", (64, 128, 256, 512, 512, 4096), (2, 2, 3, 3, 3, 2), False, "torchvision VGG16, config D, no BN",
                  min_image_size=32),
        # torchvision's vgg16() unmodified (Ranadive et al.'s CIFAR network): 7x7 adaptive pool,
        # 25,088-wide fc1, 1000 outputs whatever the data set; the same tracked blocks as vgg16.
        ModelInfo("vgg16_torchvision", (64, 128, 256, 512, 512, 4096), (2, 2, 3, 3, 3, 2), False,
                  "torchvision's vgg16() unmodified: 25,088-wide fc1, 1000 outputs (Ranadive et al.)", min_image_size=32),
    )
}  # fmt: skip
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("digits", 10, 1, 8, 1438, 359, True),  # scikit-learn's 1797 digits, fixed stratified split
        DatasetInfo("cifar10", 10, 3, 32, 50_000, 10_000, True),
        DatasetInfo("tinyimagenet", 200, 3, 64, 100_000, 10_000, True),
        DatasetInfo("imagenet", 1000, 3, 224, 1_281_167, 50_000, False),  # ILSVRC2012 train / val
    )
}
# Bytes of one checkpoint (fp32 weights, momentum, BatchNorm buffers) by model and data set (its
# classes and image size), rounded up; tests/test_redteam.py checks them against the real networks.
CHECKPOINT_BYTES: dict[str, dict[str, int]] = {
    "resnet20": {"digits": 2_200_000, "cifar10": 2_200_000, "tinyimagenet": 2_300_000, "imagenet": 2_700_000},
    "resnet18": {"digits": 89_500_000, "cifar10": 89_500_000, "tinyimagenet": 90_300_000, "imagenet": 93_600_000},
    "resnet34": {"digits": 170_400_000, "cifar10": 170_400_000, "tinyimagenet": 171_200_000, "imagenet": 174_500_000},
    "resnet50": {"digits": 188_400_000, "cifar10": 188_400_000, "tinyimagenet": 191_500_000, "imagenet": 204_700_000},
    "vgg16": {"cifar10": 269_200_000, "tinyimagenet": 325_700_000, "imagenet": 1_106_900_000},
    "vgg16_torchvision": {"cifar10": 1_106_900_000, "tinyimagenet": 1_106_900_000, "imagenet": 1_106_900_000},
}
MODEL_NAMES = tuple(MODELS)
DATASET_NAMES = tuple(DATASETS)
