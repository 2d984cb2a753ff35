"""The second paper's analyses: mid-epoch evaluations, kept checkpoints, channel ablation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.analysis.ablate import main as ablate_main
from orchestrator.collect import collect
from orchestrator.sweep import main as sweep_main
from trainer.analysis.ablation import AblationPlan, ablated, ablation_rows, choose_channels, draw_seed, heldout_accuracy, stage_blocks
from trainer.cli import cli
from trainer.data import load_dataset
from trainer.models import build_model
from trainer.spec import TrialSpec
from trainer.trial import run_trial

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "./data", CPU)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits trial with mid-epoch evaluations and every checkpoint kept."""
    spec = TrialSpec(sweep="t", epochs=2, batch_size=128, eval_every_steps=4, eval_until_epoch=1)
    folder = tmp_path_factory.mktemp("trial") / spec.trial_id  # a trial folder is named by its trial id
    assert run_trial(spec, folder) == "done"
    return folder


@pytest.mark.slow
def test_mid_epoch_rows_and_kept_checkpoints(trained: Path) -> None:
    epochs = pd.read_parquet(trained / "epochs.parquet")
    steps_per_epoch = 1437 // 128  # 11
    mid = epochs[~epochs.epoch_end]
    assert list(mid.step) == [4, 8] and set(mid.epoch) == {1}  # during training epoch 1 only
    ends = epochs[epochs.epoch_end]
    assert list(ends.epoch) == [0, 1, 2] and list(ends.step) == [0, steps_per_epoch, 2 * steps_per_epoch]
    assert epochs.step.is_monotonic_increasing
    units = pd.read_parquet(trained / "units.parquet")
    assert len(units) == 5 * (3 * 16 + 3 * 32 + 3 * 64)  # 5 evaluations x units
    kept = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert kept == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    last = torch.load(trained / "checkpoints" / "epoch_002.pt", weights_only=True)
    rolling = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(last["model"][k], rolling["model"][k]) for k in rolling["model"])


@pytest.mark.slow
def test_resume_with_mid_epoch_rows_keeps_one_row_each(tmp_path: Path, trained: Path) -> None:
    """Killed in the middle of epoch 2 (after its mid-epoch rows): no row is duplicated."""
    spec = TrialSpec(sweep="t", epochs=2, batch_size=128, eval_every_steps=4, eval_until_epoch=2)
    tmp_path = tmp_path / spec.trial_id  # trainer.run wants the folder named by the trial id
    tmp_path.mkdir()
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    cmd = [sys.executable, "-m", "trainer.run", "--spec", str(tmp_path / "spec.json")]
    env = {**os.environ, "SWEEP_FAULT": "train-step:17", "OMP_NUM_THREADS": "1"}  # step 6 of epoch 2
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == -signal.SIGKILL
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    rows = pd.read_parquet(tmp_path / "epochs.parquet")
    assert list(zip(rows.epoch, rows.step)) == [(0, 0), (1, 4), (1, 8), (1, 11), (2, 15), (2, 19), (2, 22)]


def test_stage_blocks_of_resnet20() -> None:
    model = build_model("resnet20", 10, 1)
    assert stage_blocks(model) == {1: [0, 1, 2], 2: [3, 4, 5], 3: [6, 7, 8]}


def test_topk_picks_the_highest_csi_channels() -> None:
    csi = np.array([0.1, 0.9, 0.3, 0.8, 0.0, 0.5])
    rng = np.random.default_rng(0)
    assert list(choose_channels(csi, 3, "topk", rng)) == [1, 3, 5]
    assert list(choose_channels(csi, 0, "topk", rng)) == []
    assert sorted(choose_channels(csi, 6, "topk", rng)) == list(range(6))


def test_random_draws_are_seeded_and_reproducible() -> None:
    csi = np.zeros(64)
    a = choose_channels(csi, 10, "random", draw_seed(0, 5, 2, 10, 1))
    b = choose_channels(csi, 10, "random", draw_seed(0, 5, 2, 10, 1))
    c = choose_channels(csi, 10, "random", draw_seed(0, 5, 2, 10, 2))
    assert list(a) == list(b) and list(a) != list(c)
    assert len(set(a)) == 10


def test_ablating_nothing_or_everything(trained: Path, digits) -> None:
    model = build_model("resnet20", 10, 1)
    model.load_state_dict(torch.load(trained / "checkpoints" / "epoch_002.pt", weights_only=True)["model"])
    base, _, _ = heldout_accuracy(model, digits, 256, CPU)
    with ablated(model, {6: [], 7: [], 8: []}):
        assert heldout_accuracy(model, digits, 256, CPU)[0] == base  # k = 0: the unablated network
    everything = {b: list(range(64)) for b in (6, 7, 8)}
    model.eval()
    with ablated(model, everything), torch.no_grad():
        logits, _ = model(digits.normalise(digits.test_x[:50]))
    # Every channel of the last stage zeroed: the head sees zeros, so every output is its bias.
    assert torch.allclose(logits, model.head.bias.expand_as(logits))
    with torch.no_grad():
        assert not torch.allclose(model(digits.normalise(digits.test_x[:50]))[0], logits)  # hooks removed


def test_ablation_rows_cover_the_sweep(trained: Path, digits) -> None:
    model = build_model("resnet20", 10, 1)
    model.load_state_dict(torch.load(trained / "checkpoints" / "epoch_002.pt", weights_only=True)["model"])
    units = pd.read_parquet(trained / "units.parquet")
    units = units[(units.epoch == 2) & units.epoch_end]
    csi = {layer: g.sort_values("unit").csi.to_numpy() for layer, g in units.groupby("layer")}
    plan = AblationPlan((0.0, 0.5, 1.0), draws=2)
    rows = pd.DataFrame(ablation_rows(model, digits, csi, 2, 0, plan, heldout_accuracy(model, digits, 512, CPU), 512, CPU))
    assert len(rows) == 3 * 3 * (1 + 2)  # stages x fractions x (topk + 2 random draws)
    base = rows[rows.k == 0].accuracy
    assert base.nunique() == 1
    stage3 = rows[(rows.stage == 3) & (rows.fraction == 1.0)]
    assert set(stage3.k) == {64} and stage3.accuracy.nunique() == 1  # all channels: one constant answer


@pytest.mark.slow
def test_onset_grid_sweep_ablate_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: onset\nfixed: {epochs: 3, batch_size: 256, eval_every_steps: 2, eval_until_epoch: 2, "
        "keep_checkpoints: [0, 1, 3], ablation_fractions: [0, 0.5, 1], ablation_draws: 2}\n"
        "sweep: {alpha: [-30, 0], onset_epoch: [0, 1], seed: [0, 1]}\n"
    )
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0  # trials ablate themselves
    sweep = results / "onset"
    result = collect(sweep)  # one grid, one collect: the four analyses
    summary = result.summary
    conds = pd.read_parquet(summary / "conditions.parquet")
    assert sorted(zip(conds.alpha, conds.onset_epoch, conds.n)) == [(-30.0, 0, 2), (-30.0, 1, 2), (0.0, 0, 2)]
    assert {"test_acc_ci95_low", "test_acc_ci95_high"} <= set(conds.columns)
    steps = pd.read_parquet(summary / "condition_steps.parquet")
    assert steps.step.nunique() > 4  # finer than epochs
    auc = pd.read_parquet(summary / "ablation_auc.parquet")
    assert set(auc.epoch) == {0, 1, 3} and set(auc.selection) == {"topk", "random"} and set(auc.stage) == {1, 2, 3}
    assert auc.auc_mean.between(0, 1.0001).all()
    curves = pd.read_parquet(summary / "ablation_curves.parquet")
    assert set(curves.fraction) == {0.0, 0.5, 1.0} and (curves.n == 2).all()
    for png in ("ablation_curves.png", "ablation_auc.png", "early_dynamics.png", "csi_over_epochs.png"):
        assert (summary / "figures" / png).stat().st_size > 10_000
    # An ablate job killed after a trial's first kept epoch (it writes a whole epoch at a time): the
    # trial is said and left out, not counted at epoch 0 only (n 2 there, 1 at the later epochs, silently).
    capsys.readouterr()
    cut = sorted((sweep / "trials").iterdir())[0]
    rows = pq.read_table(cut / "ablations.parquet")
    pq.write_table(rows.filter(pc.equal(rows["epoch"], 0)), cut / "ablations.parquet")
    collect(sweep, figures=False)
    err = capsys.readouterr().err
    assert f"1 trial(s) with unfinished ablations, left out of the ablation tables: {cut.name} (epochs 1, 3)" in err
    assert f"to finish them: python -m orchestrator.ablate {sweep}" in err
    curves = pd.read_parquet(summary / "ablation_curves.parquet")
    assert sorted(curves.groupby("condition_id").n.agg(set).map(sorted).map(tuple)) == [
        (1,),
        (2,),
        (2,),
    ]  # one condition: 1 seed, every epoch
    assert cli(ablate_main, [str(sweep)]) == 0  # the job resumes it under the same plan
    collect(sweep, figures=False)
    assert "unfinished" not in capsys.readouterr().err and (pd.read_parquet(summary / "ablation_curves.parquet").n == 2).all()


@pytest.mark.slow
def test_ablate_commands_on_a_finished_trial(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After the fact: orchestrator.analysis.ablate over a sweep folder runs trainer.analysis.ablation_job per done trial."""
    sweep = tmp_path / "s"
    (sweep / "trials").mkdir(parents=True)
    folder = sweep / "trials" / trained.name
    shutil.copytree(trained, folder)
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1", "--draws", "1"]) == 0
    rows = pd.read_parquet(folder / "ablations.parquet")
    assert sorted(rows.epoch.unique()) == [0, 1, 2] and set(rows.fraction) == {0.0, 1.0}
    assert rows.trial_id.nunique() == 1  # rows carry the trial's fields
    # Again: nothing left to do, the file is unchanged.
    before = (folder / "ablations.parquet").read_bytes()
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1", "--draws", "1"]) == 0
    assert (folder / "ablations.parquet").read_bytes() == before
    assert cli(ablate_main, [str(tmp_path / "nope")]) == 2


def test_no_pass_whose_result_is_known(trained: Path, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    """k = 0 is the checkpoint's own evaluation, and a whole stage zeroed is one network for every draw."""
    import trainer.analysis.ablation as ab

    model = build_model("resnet20", 10, 1)
    model.load_state_dict(torch.load(trained / "checkpoints" / "epoch_002.pt", weights_only=True)["model"])
    units = pd.read_parquet(trained / "units.parquet")
    units = units[(units.epoch == 2) & units.epoch_end]
    csi = {layer: g.sort_values("unit").csi.to_numpy() for layer, g in units.groupby("layer")}
    calls = []
    real = ab.heldout_accuracy
    monkeypatch.setattr(ab, "heldout_accuracy", lambda *a: calls.append(1) or real(*a))
    plan = AblationPlan((0.0, 0.5, 1.0), draws=3)
    base = (0.5, 1.0, None)
    rows = pd.DataFrame(ab.ablation_rows(model, digits, csi, 2, 0, plan, base, 512, CPU))
    assert len(calls) == plan.passes([16, 32, 64]) == 3 * (1 + 3 + 1)  # per stage: k = C/2 (top-k + 3 draws), k = C once
    assert (rows[rows.k == 0].accuracy == 0.5).all() and rows.top5.isna().all()
    assert len(rows) == 3 * 3 * (1 + 3)  # every (stage, k, selection, draw) still has its row


def test_absolute_counts_and_the_ranadive_schedule() -> None:
    assert AblationPlan(counts=(0, 8, 16, 100)).ks(16) == [0, 8, 16]  # above the width: left out
    assert AblationPlan(fractions=(0.1, 0.125)).ks(16) == [2]  # distinct k only
    # Ranadive et al.: k in range(0, C/2, 15) and range(C/2, C + 1, 40)
    assert AblationPlan(count_steps=(15, 40)).ks(256) == [*range(0, 128, 15), *range(128, 257, 40)]
    assert AblationPlan(fractions=(0.0, 1.0), draws=2).passes([16]) == 1  # k = 0 none, k = 16 one


@pytest.mark.slow
def test_trial_ablates_counts_on_a_test_subset(tmp_path: Path) -> None:
    """Absolute counts and a seeded subset of the test set, from the trial's own fields, in its own job."""
    spec = TrialSpec(
        sweep="t", epochs=1, batch_size=256, keep_checkpoints=(1,), ablation_counts=(0, 8, 100), ablation_draws=1, ablation_images=100
    )
    folder = tmp_path / spec.trial_id
    assert run_trial(spec, folder) == "done"
    rows = pd.read_parquet(folder / "ablations.parquet")
    assert sorted(rows.k.unique()) == [0, 8]  # 100 is wider than every ResNet20 stage: left out
    assert set(rows.stage) == {1, 2, 3} and rows.top5.isna().all()
    assert rows[rows.k == 0].accuracy.nunique() == 1
    assert (rows.accuracy * 100).round(6).mod(1).eq(0).all()  # every accuracy, k = 0 too, is a count out of the 100 images


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"ablation_counts": []}, "ablation_counts"),
        ({"ablation_counts": [-1]}, "ablation_counts"),
        ({"ablation_count_steps": [15]}, "ablation_count_steps"),
        ({"ablation_count_steps": [0, 40]}, "ablation_count_steps"),
        ({"ablation_images": 5}, "ablation_images"),
        ({"ablation_images": 10**6}, "ablation_images"),
    ],
)
def test_ablation_fields_are_checked(fields: dict, needle: str) -> None:
    from trainer.spec import SpecError

    with pytest.raises(SpecError, match=needle):
        TrialSpec.from_dict(fields)


def test_the_ablation_figure_shows_only_the_selections_measured() -> None:
    """With fixed random masks (the default) its legend listed "random_batch" series that did not exist."""
    from orchestrator.collect.ablations import curve_styles

    styles, title = curve_styles({"topk", "random"})
    assert [sel for sel, _ in styles] == ["topk", "random"] and "dotted" not in title and "dashed: fixed masks" in title
    styles, title = curve_styles({"topk", "random", "random_batch"})
    assert [style for _, style in styles] == ["-", "--", ":"] and "dotted: a new mask per batch" in title
