"""Names of the models and data sets, without importing torch.

The spec validates against these so that planning thousands of trials never loads torch;
`trainer.models.MODELS` and `trainer.data.DATASETS` hold the builders under exactly these keys
(a test checks they agree).
"""
MODEL_NAMES = ("resnet20", "resnet18", "resnet50")
DATASET_NAMES = ("digits", "cifar10", "tinyimagenet", "imagenet")
