"""The flagship job on CPU: ResNet-50 trials on a fake ImageNet tree, through the path the GPU takes.

The tree is in the official layouts (tests/imagenet_tree.py: varied sizes, grayscale, CMYK, a PNG
named .JPEG, truncated and empty files; the flat val/ with the devkit's ground truth). The sweep
runs Ranadive et al.'s regularizer form and ends each trial with its channel ablations, in the
same job. Bad images are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.folders import scan
from orchestrator.sweep import main as sweep_main
from trainer import results as R
from trainer.cli import cli

from imagenet_tree import make_imagenet_tree

# ResNet-50 trials on CPU (the module's sweep fixture) and a trial run bounded at 600 s itself: over the default bound.
pytestmark = pytest.mark.timeout(1200)

GRID = """name: inet
fixed:
  model: resnet50
  dataset: imagenet
  epochs: 1
  batch_size: 4
  lr: 0.01
  data_root: {root}
  cache_dir: {cache}
  si_pooling: stages
  si_skip_last_stage: true
  si_class_stat: sum
  keep_checkpoints: [0, 1]
  ablation_fractions: [0, 1]
  ablation_draws: 1
sweep:
  alpha: [-20, 0]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("inet")
    make_imagenet_tree(tmp / "data", per_class=3, val_per_class=2, val_layout="flat", ground_truth="devkit", bad=True)
    grid = tmp / "grid.yaml"
    grid.write_text(GRID.format(root=tmp / "data", cache=tmp / "cache"))
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp / "results"), "--fuse", "1"]) == 0
    return tmp / "results" / "inet"


@pytest.mark.slow
def test_resnet50_trials_run_end_to_end_and_skip_bad_images(sweep: Path) -> None:
    states = scan(sweep)
    assert len(states) == 2 and {s.state for s in states.values()} == {"done"}
    for st in states.values():
        status = json.loads((st.folder / R.STATUS).read_text())
        assert status["loader"] == "torchvision"  # "auto" on a CPU, as resolved: recorded with the attempt
        skipped = status["skipped_images"]
        assert skipped["count"] >= 2 and any("truncated" in name for name in skipped["first"])  # counted, named, not fatal
        epochs = pd.read_parquet(st.folder / R.EPOCHS)
        assert list(epochs.epoch) == [0, 1] and epochs.test_top5.notna().all()  # 1000 classes: top-5 beside top-1
        layers = pd.read_parquet(st.folder / R.LAYERS)
        assert layers.layer.nunique() == 16  # ResNet-50: 16 tracked blocks
        spec = json.loads((st.folder / R.SPEC).read_text())
        assert (spec["si_pooling"], spec["si_skip_last_stage"], spec["si_class_stat"]) == ("stages", True, "sum")
        ablations = pd.read_parquet(st.folder / "ablations.parquet")
        assert set(ablations.epoch) == {0, 1} and set(ablations.stage) == {1, 2, 3, 4}
        assert ablations.top5.notna().all()
        # k = 0 is the epoch's own evaluation: the same accuracy, no extra pass.
        base = ablations[ablations.k == 0].merge(epochs[epochs.epoch_end], on="epoch")
        assert (base.accuracy == base.test_acc).all()


@pytest.mark.slow
def test_regularized_trial_trained_another_objective(sweep: Path) -> None:
    rows = {json.loads((s.folder / R.SPEC).read_text())["alpha"]: pd.read_parquet(s.folder / R.EPOCHS) for s in scan(sweep).values()}
    assert rows[-20.0].train_selectivity.iloc[-1] > 0 and pd.isna(rows[0.0].train_selectivity.iloc[-1])
    assert rows[-20.0].train_loss.iloc[-1] != rows[0.0].train_loss.iloc[-1]


def test_flat_val_without_ground_truth_stops_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_imagenet_tree(tmp_path / "data", per_class=2, val_per_class=1, val_layout="flat", ground_truth=None, bad=False)
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(root=tmp_path / "data", cache=tmp_path / "cache"))
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels are missing" in err[0] and "devkit" in err[0]
    assert not (tmp_path / "results").exists()


def test_class_missing_from_train_is_named_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_imagenet_tree(tmp_path / "data", per_class=2, val_per_class=1, bad=False)
    shutil.rmtree(tmp_path / "data" / "imagenet" / "train" / tree.classes[-1])
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(root=tmp_path / "data", cache=tmp_path / "cache"))
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert tree.classes[-1] in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_crashed_loader_worker_fails_the_trial_visibly(tmp_path: Path) -> None:
    """A decoding worker killed mid-epoch (as the OOM killer would): the trial reads failed with the
    error, its lock is free (no worker keeps it), retries stop at the cap, the launcher exits 1."""
    import os
    import subprocess
    import sys

    from trainer.lock import is_locked

    make_imagenet_tree(tmp_path / "data", per_class=4, val_per_class=1, bad=False)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"name: crash\nfixed: {{model: resnet20, dataset: imagenet, epochs: 1, batch_size: 2, num_workers: 1, loader: torchvision,"
        f" data_root: {tmp_path / 'data'}, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    env = {**os.environ, "SWEEP_FAULT": "decode-batch:2", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--results", str(tmp_path / "r"), "--fuse", "1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    (state,) = scan(tmp_path / "r" / "crash").values()
    assert state.state == "failed" and state.attempts == 3 and "worker" in (state.error or "").lower()
    assert not is_locked(state.folder)


@pytest.mark.slow
@pytest.mark.parametrize("side,said", [("train", "epoch 1 trained on no image"), ("val", "the evaluation read no test image")])
def test_a_tree_with_no_readable_image_on_one_side_fails_its_trial_once_as_the_datas_fault(
    side: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Zero-byte files, as an extraction that ran out of disk leaves them. Before: with every train
    # image unreadable the trial was `done` after no optimizer step (its epoch-1 rows equal to epoch
    # 0's); with every val image unreadable, "ValueError: the test set is empty", retried 3 times.
    make_imagenet_tree(tmp_path / "data", per_class=2, val_per_class=1, bad=False)
    for image in (tmp_path / "data" / "imagenet" / side).rglob("*.JPEG"):
        image.write_bytes(b"")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"name: empty\nfixed: {{model: resnet20, dataset: imagenet, epochs: 1, batch_size: 2, "
        f"data_root: {tmp_path / 'data'}, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "restarting" not in err, err  # the same files would fail the same way
    (st,) = scan(tmp_path / "r" / "empty").values()
    status = json.loads((st.folder / R.STATUS).read_text())
    assert (status["state"], status["error_kind"], status["attempts"]) == ("failed", "user", 1), status
    assert status["error"].startswith(f"dataset 'imagenet': {said}") and "image(s) skipped as unreadable, e.g. " in status["error"], status
