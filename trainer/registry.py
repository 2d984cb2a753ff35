"""The catalog of models and data sets: names and facts, without importing torch.

Planning thousands of trials (spec validation, packing, the GPU-hour estimate) reads these facts
and never loads torch. `trainer.models.MODELS` and `trainer.data.DATASETS` hold the builders under
exactly these names (a test checks they agree), and the builders take their widths from here, so
each fact lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """A network's tracked structure: stages of residual blocks, each block's output width."""

    name: str
    stage_widths: tuple[int, ...]  # output channels of every block of stage i (1-based i)
    blocks_per_stage: tuple[int, ...]
    fusable: bool  # has a fused K-trials form (trainer.fused)
    about: str

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


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("resnet20", (16, 32, 64), (3, 3, 3), True, "He et al. 2016 CIFAR ResNet, option-A shortcuts"),
        ModelInfo("resnet18", (64, 128, 256, 512), (2, 2, 2, 2), False, "torchvision ResNet18, 3x3 stride-1 stem, no max-pool (64 px)"),
        ModelInfo("resnet50", (256, 512, 1024, 2048), (3, 4, 6, 3), False, "torchvision ResNet50 (224 px)"),
    )
}
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("digits", 10, 1, 8, 1438, 359, True),  # scikit-learn's 1797 digits, fixed stratified split
        DatasetInfo("cifar10", 10, 3, 32, 50_000, 10_000, True),
        DatasetInfo("tinyimagenet", 200, 3, 64, 100_000, 10_000, True),
        DatasetInfo("imagenet", 1000, 3, 224, 1_281_167, 50_000, False),  # ILSVRC2012 train / val
    )
}
MODEL_NAMES = tuple(MODELS)
DATASET_NAMES = tuple(DATASETS)
