"""Fused groups of trials (trainer.group): the files of separate runs, resume in any regrouping
(bitwise on CPU), per-member divergence, busy members, and user mistakes.

On CPU a member's numbers do not depend on which or how many (>= 2) trials it is fused with,
so the reference for every kill and regrouping below is an uninterrupted group, compared
bitwise (timing columns aside). Against a separate run the numbers agree to rounding drift
(tests/test_fused.py is the step-by-step gate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainer import results as R
from trainer.errors import UserError
from trainer.lock import TrialLock
from trainer.models import build_model
from trainer.spec import TrialSpec
from trainer.trial import run_group, run_trial

from helpers import FILES, assert_one_row_per_epoch, assert_same_results, temp_files

EPOCHS = 3
A = TrialSpec(sweep="grp", epochs=EPOCHS, alpha=0.0, seed=0, device="cpu")
B = TrialSpec(sweep="grp", epochs=EPOCHS, alpha=-10.0, seed=1, onset_epoch=1, device="cpu")
C = TrialSpec(sweep="grp", epochs=EPOCHS, alpha=5.0, seed=2, device="cpu")
BAD = TrialSpec(sweep="grp", epochs=EPOCHS, alpha=1e30, seed=3, device="cpu")  # diverges in epoch 1


def folders(root: Path, specs: list[TrialSpec]) -> list[Path]:
    return [root / s.trial_id for s in specs]


def group_cli(root: Path, specs: list[TrialSpec], fault: str | None = None) -> subprocess.CompletedProcess:
    args = []
    for f, s in zip(folders(root, specs), specs):
        f.mkdir(parents=True, exist_ok=True)
        (f / R.SPEC).write_text(json.dumps(s.to_dict()))
        args += ["--spec", str(f / R.SPEC)]
    env = {k: v for k, v in os.environ.items() if k != "SWEEP_FAULT"}
    env.update({"PYTHONWARNINGS": "ignore", **({"SWEEP_FAULT": fault} if fault else {})})
    return subprocess.run([sys.executable, "-m", "trainer.group", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fused_ab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: A and B trained as one uninterrupted group."""
    root = tmp_path_factory.mktemp("fused_ab")
    assert run_group([A, B], folders(root, [A, B])) == ["done", "done"]
    return root


@pytest.mark.slow
def test_group_writes_the_files_of_separate_runs(fused_ab: Path, tmp_path: Path) -> None:
    for spec in (A, B):
        assert run_trial(spec, tmp_path / spec.trial_id) == "done"
        fused, alone = fused_ab / spec.trial_id, tmp_path / spec.trial_id
        assert sorted(p.name for p in fused.iterdir()) == sorted(p.name for p in alone.iterdir())
        assert_one_row_per_epoch(fused, EPOCHS)
        for name in FILES:
            f, s = pd.read_parquet(fused / name), pd.read_parquet(alone / name)
            assert f.dtypes.to_dict() == s.dtypes.to_dict(), name
            pd.testing.assert_frame_equal(f[["epoch", "step", "epoch_end"]], s[["epoch", "step", "epoch_end"]])
            assert (f["trial_id"] == spec.trial_id).all() and (f["alpha"] == spec.alpha).all() and (f["seed"] == spec.seed).all()
        f, s = pd.read_parquet(fused / R.EPOCHS), pd.read_parquet(alone / R.EPOCHS)
        assert f["alpha_active"].tolist()[1:] == [spec.alpha_at(e) for e in range(EPOCHS)]
        # Epoch 0 (the seeded init) agrees to rounding; training drifts only by rounding (see test_fused).
        for col in ("test_loss", "test_acc", "csi_mean"):
            assert f[col][0] == pytest.approx(s[col][0], rel=1e-5, abs=1e-6), col
        assert f["train_loss"].tolist()[1:] == pytest.approx(s["train_loss"].tolist()[1:], rel=0.05)
        assert f["csi_mean"].tolist() == pytest.approx(s["csi_mean"].tolist(), abs=0.02)
        status = json.loads((fused / R.STATUS).read_text())
        assert status["state"] == "done" and status["fused"] == 2 and status["git_sha"] and status["host"]


def test_fused_checkpoint_is_a_single_trial_checkpoint(fused_ab: Path) -> None:
    ckpt = torch.load(fused_ab / B.trial_id / R.CHECKPOINT, weights_only=True)
    model = build_model("resnet20", 10, 1)
    model.load_state_dict(ckpt["model"])  # strict: the single model's keys and shapes
    steps = EPOCHS * (1438 // 128)
    assert ckpt["epoch"] == EPOCHS and ckpt["step"] == steps
    assert all(int(v) == steps for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt.load_state_dict(ckpt["optimizer"])
    assert all("momentum_buffer" in s for s in opt.state.values()) and len(opt.state) == len(list(model.parameters()))
    kept = sorted(p.name for p in (fused_ab / B.trial_id / "checkpoints").iterdir())
    assert kept == [f"epoch_{e:03d}.pt" for e in range(EPOCHS + 1)]


@pytest.mark.slow
def test_kill_between_members_checkpoints_then_resume_level(fused_ab: Path, tmp_path: Path) -> None:
    # rows-written is reached once per member per epoch (A then B): the 4th is B's epoch 2,
    # killed before B's checkpoint, so A is at epoch 2 and B at epoch 1.
    out = group_cli(tmp_path, [A, B], fault="rows-written:4")
    assert out.returncode == -9, out.stderr
    ckpt_epoch = lambda s: torch.load(tmp_path / s.trial_id / R.CHECKPOINT, weights_only=True)["epoch"]
    assert (ckpt_epoch(A), ckpt_epoch(B)) == (2, 1)
    out = group_cli(tmp_path, [A, B])  # B catches up while A rides along, then both go on
    assert out.returncode == 0, out.stderr
    for spec in (A, B):
        assert_one_row_per_epoch(tmp_path / spec.trial_id, EPOCHS)
        assert_same_results(fused_ab / spec.trial_id, tmp_path / spec.trial_id)
        assert temp_files(tmp_path / spec.trial_id) == []
        assert json.loads((tmp_path / spec.trial_id / R.STATUS).read_text())["attempts"] == 2


@pytest.mark.slow
def test_fused_member_resumes_alone_beside_a_twin(fused_ab: Path, tmp_path: Path) -> None:
    out = group_cli(tmp_path, [A, B], fault="rows-written:3")  # killed in epoch 2, after A's rows
    assert out.returncode == -9, out.stderr
    assert run_group([B], [tmp_path / B.trial_id]) == ["done"]  # B alone: it trained fused, so it keeps a twin
    assert run_trial(A, tmp_path / A.trial_id) == "done"  # trainer.run resumes a fused member too
    assert_same_results(fused_ab / B.trial_id, tmp_path / B.trial_id)
    assert_one_row_per_epoch(tmp_path / A.trial_id, EPOCHS)
    assert json.loads((tmp_path / A.trial_id / R.STATUS).read_text())["fused"] is False


@pytest.mark.slow
def test_diverged_member_fails_alone_and_the_rest_match_a_group_without_it(tmp_path: Path) -> None:
    states = run_group([A, BAD, C], folders(tmp_path / "with", [A, BAD, C]))
    assert states == ["done", "failed", "done"]
    status = json.loads((tmp_path / "with" / BAD.trial_id / R.STATUS).read_text())
    assert status["error_kind"] == "diverged" and status["retryable"] is False and "epoch 1" in status["error"]
    assert pd.read_parquet(tmp_path / "with" / BAD.trial_id / R.EPOCHS)["epoch"].tolist() == [0]
    assert run_group([A, C], folders(tmp_path / "without", [A, C])) == ["done", "done"]
    for spec in (A, C):  # re-fused without the diverged member: the same numbers, bitwise
        assert_same_results(tmp_path / "without" / spec.trial_id, tmp_path / "with" / spec.trial_id)
    assert run_group([A, BAD, C], folders(tmp_path / "with", [A, BAD, C])) == ["done", "failed", "done"]  # nothing reruns


@pytest.mark.slow
def test_a_member_that_blows_up_in_its_last_step_is_diverged_not_done(tmp_path: Path) -> None:
    # One step per epoch (the whole digits training set in one batch) and an extreme alpha: the loss
    # of the only step is finite (taken before its update), the network after it is not. Only the
    # training loss was checked, so the trial was `done` with NaN test loss and CSI in its rows.
    ok, bad = (TrialSpec(sweep="grp", epochs=1, batch_size=1438, alpha=a, seed=0, device="cpu") for a in (0.0, 1e30))
    assert run_group([ok, bad], folders(tmp_path, [ok, bad])) == ["done", "failed"]
    status = json.loads((tmp_path / bad.trial_id / R.STATUS).read_text())
    assert (status["error_kind"], status["retryable"]) == ("diverged", False), status
    assert status["error"].startswith("non-finite test loss (nan) after epoch 1 (alpha 1e+30)"), status
    assert pd.read_parquet(tmp_path / bad.trial_id / R.EPOCHS)["epoch"].tolist() == [0]  # no NaN row
    assert pd.read_parquet(tmp_path / ok.trial_id / R.EPOCHS)["test_loss"].notna().all()


@pytest.mark.slow
def test_busy_member_is_left_to_its_holder(tmp_path: Path) -> None:
    short = [TrialSpec(sweep="grp", epochs=1, alpha=a, seed=0, device="cpu") for a in (0.0, -1.0)]
    held = tmp_path / short[1].trial_id
    held.mkdir(parents=True)
    with TrialLock(held):  # flock: another open file description counts as another holder
        assert run_group(short, folders(tmp_path, short)) == ["done", "busy"]
    assert not (held / R.STATUS).exists()


@pytest.mark.slow
def test_unfusable_trials_are_a_user_mistake(tmp_path: Path) -> None:
    other = TrialSpec(sweep="grp", epochs=EPOCHS + 1, seed=5, device="cpu")
    with pytest.raises(UserError, match="differ in epochs"):
        run_group([A, other], folders(tmp_path, [A, other]))
    assert list(tmp_path.iterdir()) == []  # nothing written
    out = group_cli(tmp_path, [A, other])
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "differ in epochs" in out.stderr
    wide = TrialSpec(sweep="grp", model="resnet18", dataset="cifar10", device="cpu")
    with pytest.raises(UserError, match="no fused form"):
        run_group([wide, wide], [tmp_path / "x", tmp_path / "y"])


def test_one_trial_given_twice_is_one_line_not_a_wait_on_its_own_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import cli
    from trainer.group import main as group_main

    (folder,) = folders(tmp_path, [A])
    folder.mkdir()
    (folder / R.SPEC).write_text(json.dumps(A.to_dict()))
    again = folder.parent / "." / folder.name / "spec.json"
    assert cli(group_main, ["--spec", str(folder / "spec.json"), "--spec", str(again)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --spec {again}: the same trial folder as --spec {folder / 'spec.json'}; allowed: each trial once"]
    assert sorted(p.name for p in folder.iterdir()) == ["spec.json"]  # nothing ran
