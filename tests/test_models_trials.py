"""Whole trials of the newer networks on CPU, on fake data trees in the official layouts.

vgg16 on CIFAR-10 (Ranadive et al.'s recipe: input_norm half, no augmentation), resnet18 and
resnet34 on ImageNet (the 7x7 stem), resnet50 on Tiny ImageNet (the 3x3 stem): each trains with
the regularizer on, evaluates CSI for every tracked layer with the right unit counts, and ends
with its ablation and representation jobs in the same attempt. VGG's dropout draws from torch's
global RNG, which the epoch protocol seeds per epoch: a VGG trial killed mid-training resumes to
bitwise the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainer import results as R
from trainer.analysis.similarity_job import DIMENSIONALITY, StoredActivations, activation_path
from trainer.data import load_dataset
from trainer.registry import MODELS
from trainer.spec import TrialSpec
from trainer.trial import run_trial

from helpers import make_cifar, make_tinyimagenet
from imagenet_tree import make_imagenet_tree

CPU = torch.device("cpu")


def widths(model: str) -> list[int]:
    info = MODELS[model]
    return [w for w, n in zip(info.stage_widths, info.blocks_per_stage) for _ in range(n)]


def run(tmp: Path, **fields: object) -> tuple[TrialSpec, Path]:
    spec = TrialSpec(sweep="zoo", epochs=fields.pop("epochs", 1), lr=0.01, alpha=-1.0, **fields)  # type: ignore[arg-type]
    folder = tmp / spec.trial_id
    folder.mkdir(parents=True)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    assert run_trial(spec, folder) == "done", json.loads((folder / R.STATUS).read_text()).get("error")
    return spec, folder


def check_trial(folder: Path, model: str, epochs: list[int], kept: list[int], n_images: int) -> None:
    """Rows of every layer with its units, train_selectivity (the regularizer ran), and the representation job's files."""
    layers = pd.read_parquet(folder / R.LAYERS)
    names = MODELS[model].layer_names()
    for epoch in epochs:
        rows = layers[layers.epoch == epoch]
        assert rows.layer.tolist() == names and rows.n_units.tolist() == widths(model)
    assert len(pd.read_parquet(folder / R.UNITS)) == len(epochs) * sum(widths(model))
    train = pd.read_parquet(folder / R.EPOCHS)
    assert train.train_selectivity.iloc[1:].notna().all()
    dims = pd.read_parquet(folder / DIMENSIONALITY)
    assert dims.epoch.tolist() == [e for e in kept for _ in names] and dims.layer.tolist() == names * len(kept)
    assert (dims.n_images == n_images).all() and dims.n_units.tolist() == widths(model) * len(kept)
    assert np.all((dims.pcs_95 >= 1) & (dims.pcs_95 <= np.minimum(dims.n_units, n_images)))
    with StoredActivations(activation_path(folder, kept[-1])) as acts:
        assert acts.layers == names
        assert [acts.layer(n).shape for n in names] == [(n_images, u) for u in widths(model)]


# ---- VGG16 on CIFAR-10 --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar(root, n_train=4, n_test=6)  # 20 training images, 6 test images
    return root


# Ranadive et al.'s CIFAR recipe (but the lr and batch: 20 fake images)
VGG = {"model": "vgg16", "dataset": "cifar10", "batch_size": 4, "augment": False, "input_norm": "half", "weight_decay": 0.0}


@pytest.mark.slow
def test_vgg16_trial_on_cifar10(tmp_path: Path, cifar: Path) -> None:
    _, folder = run(tmp_path, **VGG, epochs=2, data_root=str(cifar), keep_checkpoints=(0, 2), represent=True, ablation_fractions=(0.0, 1.0))
    check_trial(folder, "vgg16", [0, 1, 2], [0, 2], n_images=6)
    ablations = pd.read_parquet(folder / "ablations.parquet")
    assert set(ablations.stage) == {1, 2, 3, 4, 5, 6}  # stage 6: the hidden classifier layers' units
    state = torch.load(folder / "checkpoints" / "epoch_002.pt", weights_only=True)["model"]
    assert state["blocks.13.2.weight"].shape == (4096, 512) and state["head.weight"].shape == (10, 4096)


def test_input_norm_half(cifar: Path) -> None:
    """0.5 / 0.5 per channel: pixels 0..255 map to -1..1 (the data set's own statistics otherwise)."""
    half = load_dataset("cifar10", cifar, CPU, norm="half")
    x, _ = next(half.test_batches(6))
    raw = half.test_x.float() / 255
    torch.testing.assert_close(x, (raw - 0.5) / 0.5)
    own = load_dataset("cifar10", cifar, CPU)
    assert own.info.mean == (0.4914, 0.4822, 0.4465) and half.info.mean == half.info.std == (0.5, 0.5, 0.5)
    assert TrialSpec(input_norm="half").data_options()["norm"] == "half"


@pytest.mark.slow
def test_vgg16_resume_after_a_kill_is_bitwise(tmp_path: Path, cifar: Path) -> None:
    """Killed in epoch 2 (dropout masks drawn already in epoch 1 and this one), resumed: the weights,
    accuracy and CSI of an uninterrupted run."""
    fields = {**VGG, "epochs": 2, "data_root": str(cifar), "keep_checkpoints": ()}
    _, whole = run(tmp_path / "whole", **fields)
    spec = TrialSpec(sweep="zoo", lr=0.01, alpha=-1.0, **fields)  # type: ignore[arg-type]
    folder = tmp_path / "killed" / spec.trial_id
    folder.mkdir(parents=True)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    cmd = [sys.executable, "-m", "trainer.run", "--spec", str(folder / R.SPEC)]
    env = {**os.environ, "SWEEP_FAULT": "train-step:7"}  # step 2 of epoch 2 (5 steps per epoch)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == -signal.SIGKILL
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    a, b = (torch.load(f / R.CHECKPOINT, weights_only=True)["model"] for f in (whole, folder))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = pd.read_parquet(whole / R.EPOCHS), pd.read_parquet(folder / R.EPOCHS)
    for col in ("test_acc", "test_loss", "csi_mean", "train_loss", "train_selectivity"):
        assert ea[col].equals(eb[col]), col  # NaN (epoch 0's training columns) in the same places


# ---- ResNets on ImageNet and Tiny ImageNet ------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inet")
    make_imagenet_tree(root / "data", per_class=3, val_per_class=2, val_layout="folders", bad=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet34"])
def test_resnet_trial_on_imagenet(tmp_path: Path, imagenet: Path, model: str) -> None:
    _, folder = run(
        tmp_path, model=model, dataset="imagenet", batch_size=4, data_root=str(imagenet / "data"), cache_dir=str(imagenet / "cache"),
        si_pooling="stages", si_skip_last_stage=True, si_class_stat="sum", keep_checkpoints=(0, 1), represent=True,
    )  # fmt: skip
    check_trial(folder, model, [0, 1], [0, 1], n_images=6)  # the whole (fake) validation set: under 5,000 images
    state = torch.load(folder / R.CHECKPOINT, weights_only=True)["model"]
    assert state["stem.0.weight"].shape == (64, 3, 7, 7)  # the ImageNet stem at 224 px


@pytest.mark.slow
def test_resnet50_trial_on_tinyimagenet(tmp_path: Path) -> None:
    make_tinyimagenet(tmp_path / "data")  # 6 training images of 3 classes, 4 validation images
    _, folder = run(tmp_path / "trials", model="resnet50", dataset="tinyimagenet", batch_size=3, data_root=str(tmp_path / "data"),
                    keep_checkpoints=(1,), represent=True)  # fmt: skip
    check_trial(folder, "resnet50", [0, 1], [1], n_images=4)
    state = torch.load(folder / R.CHECKPOINT, weights_only=True)["model"]
    assert state["stem.0.weight"].shape == (64, 3, 3, 3)  # Leavitt & Morcos's 64 px stem
