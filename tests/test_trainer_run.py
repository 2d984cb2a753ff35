"""One trial end to end: result files and their schemas, resume after a real kill, divergence,
the trial lock, skip-if-done, and the done-when check of the science (docs/science.md, docs/results.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from trainer import results as R
from trainer.errors import UserError
from trainer.lock import TrialBusy, is_locked
from trainer.loop import lr_at
from trainer.spec import ROW_ID_FIELDS, TrialSpec
from trainer.trial import run_trial

from helpers import FILES, STEPS_PER_EPOCH, UNITS_RESNET20, assert_one_row_per_epoch, assert_same_results, temp_files


# ---- a finished trial and its files -----------------------------------------------------------
@pytest.fixture(scope="module")
def done_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrialSpec, Path]:
    # onset 1: the first training epoch is plain, the next two regularized.
    spec = TrialSpec(sweep="files", epochs=3, alpha=-1.0, onset_epoch=1, device="cpu")
    folder = tmp_path_factory.mktemp("trial") / spec.trial_id
    assert run_trial(spec, folder) == "done"
    return spec, folder


@pytest.mark.slow
def test_files_and_no_temp_files(done_trial) -> None:
    spec, folder = done_trial
    for name in (*FILES, R.SPEC, R.STATUS, R.CHECKPOINT):
        assert (folder / name).is_file(), name
    assert temp_files(folder) == []
    assert TrialSpec.from_dict(json.loads((folder / R.SPEC).read_text())) == spec


def test_schemas_are_exact(done_trial) -> None:
    spec, folder = done_trial
    trial_schema = R.trial_schema(spec)
    for name in FILES:
        got = pq.read_schema(folder / name)
        assert got.equals(R.file_schema(name, trial_schema), check_metadata=False), name
        assert got.names[: len(ROW_ID_FIELDS)] == list(ROW_ID_FIELDS)


def test_every_row_carries_the_trial(done_trial) -> None:
    spec, folder = done_trial
    expected = {k: v for k, v in spec.row_fields().items() if k in ROW_ID_FIELDS}
    assert expected["trial_id"] == folder.name and expected["offset_epoch"] is None
    for name in FILES:
        df = pd.read_parquet(folder / name)
        for key, value in expected.items():
            col = df[key]
            assert col.isna().all() if value is None else (col == value).all(), (name, key)


def test_epoch_rows(done_trial) -> None:
    spec, folder = done_trial
    e = pd.read_parquet(folder / R.EPOCHS)
    assert e["epoch"].tolist() == [0, 1, 2, 3]
    assert e["step"].tolist() == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    # Row e >= 1 is the state after training epoch e-1, with that epoch's alpha and lr.
    assert e["alpha_active"].isna()[0] and e["alpha_active"].tolist()[1:] == [0.0, -1.0, -1.0]
    assert e["lr"].tolist()[1:] == [lr_at(spec, i) for i in range(3)]
    assert e["train_selectivity"].isna().tolist() == [True, True, False, False]  # not computed at alpha 0
    assert e.loc[0, ["train_loss", "train_acc", "seconds"]].isna().all()
    assert e["test_top5"].isna().all()  # 10 classes
    reg = e.iloc[2:]
    np.testing.assert_allclose(reg["train_loss"], reg["train_ce"] + 1.0 * reg["train_selectivity"], rtol=1e-6)  # float32 loss
    assert (e["test_acc"].between(0, 1)).all() and (e["csi_mean"].between(0, 1)).all()
    assert (e["images_per_s"].iloc[1:] > 0).all()


def test_layer_and_unit_rows_agree(done_trial) -> None:
    spec, folder = done_trial
    e, l, u = (pd.read_parquet(folder / n) for n in FILES)
    assert len(l) == 9 * 4 and len(u) == UNITS_RESNET20 * 4
    assert l[l.epoch == 0]["layer"].tolist() == [f"stage{i}.block{j}" for i in (1, 2, 3) for j in (1, 2, 3)]
    assert l[l.epoch == 0]["n_units"].tolist() == [16] * 3 + [32] * 3 + [64] * 3
    for (epoch, layer), g in u.groupby(["epoch", "layer"]):
        assert g["unit"].tolist() == list(range(len(g)))
        row = l[(l.epoch == epoch) & (l.layer == layer)].iloc[0]
        assert row["n_units"] == len(g)
        assert row["csi_mean"] == pytest.approx(g["csi"].astype(float).mean(), rel=1e-6, abs=1e-7)
        assert row["csi_median"] == pytest.approx(g["csi"].astype(float).median(), rel=1e-6, abs=1e-7)
    # The network mean weighs layers equally (docs/science.md).
    by_layers = l.groupby("epoch")["csi_mean"].mean()
    np.testing.assert_allclose(e.set_index("epoch")["csi_mean"], by_layers, rtol=1e-12)
    assert (u["top_class"].between(0, 9)).all() and (u["mu_max"] >= u["mu_rest"]).all()


def test_final_units_match_an_independent_evaluation(done_trial) -> None:
    """Recompute the last epoch's CSI from the checkpoint with hooks and a loop over classes."""
    from trainer.data import load_dataset
    from trainer.models import build_model

    spec, folder = done_trial
    ckpt = torch.load(folder / R.CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 3
    model = build_model("resnet20", 10, 1)
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = load_dataset("digits", "/unused", torch.device("cpu"))
    outs: list[torch.Tensor] = []
    for b in model.blocks:
        b.register_forward_hook(lambda m, i, o: outs.append(o.mean(dim=(2, 3)).double()))
    with torch.no_grad():
        logits, _ = model(data.normalise(data.test_x))
    y = data.test_y.numpy()
    u = pd.read_parquet(folder / R.UNITS)
    last = u[u.epoch == 3]
    for name, acts in zip(model.block_names, outs):
        means = np.stack([acts.numpy()[y == c].mean(0) for c in range(10)])  # [C, U]
        top = means.argmax(0)
        mu_max = means.max(0)
        mu_rest = (means.sum(0) - mu_max) / 9
        csi = (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7)
        rows = last[last.layer == name]
        np.testing.assert_allclose(rows["csi"], csi, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rows["mu_max"], mu_max, rtol=1e-4, atol=1e-6)
        assert (rows["top_class"].to_numpy() == top).mean() > 0.95  # near-ties may flip in float32
    e = pd.read_parquet(folder / R.EPOCHS)
    assert e["test_acc"].iloc[-1] == pytest.approx((logits.argmax(1) == data.test_y).double().mean().item())


def test_status_provenance(done_trial) -> None:
    spec, folder = done_trial
    s = json.loads((folder / R.STATUS).read_text())
    assert s["state"] == "done" and s["trial_id"] == spec.trial_id and s["attempts"] == 1
    assert "git_sha" in s and "git_dirty" in s
    assert s["git_sha"] is None or len(s["git_sha"]) == 40
    assert s["versions"]["torch"] == torch.__version__.split("+")[0] and s["versions"]["python"]
    assert s["host"] and s["device"]
    assert s["started"] <= s["ended"]
    assert s["error"] is None


def test_done_trial_is_not_run_again(done_trial, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, folder = done_trial
    import trainer.trial

    def must_not_train(*args, **kwargs):
        raise AssertionError("a done trial was trained again")

    monkeypatch.setattr(trainer.trial, "train_members", must_not_train)
    before = (folder / R.STATUS).read_text(), (folder / R.EPOCHS).stat().st_mtime_ns
    assert run_trial(spec, folder) == "done"
    assert ((folder / R.STATUS).read_text(), (folder / R.EPOCHS).stat().st_mtime_ns) == before


def test_other_spec_in_a_done_folder_is_refused(done_trial) -> None:
    spec, folder = done_trial
    with pytest.raises(UserError, match="one folder per trial"):
        run_trial(TrialSpec(sweep="files", epochs=3, alpha=-1.0, onset_epoch=1, seed=9), folder)


# ---- resume after a real kill -------------------------------------------------------------------
RESUME_SPEC = {"sweep": "resume", "epochs": 4, "alpha": -2.0, "device": "cpu"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4-epoch trial run straight through, by the command every backend calls."""
    folder = tmp_path_factory.mktemp("uninterrupted") / TrialSpec.from_dict(RESUME_SPEC).trial_id
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps(RESUME_SPEC))
    out = subprocess.run([sys.executable, "-m", "trainer.run", "--spec", str(folder / "spec.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert_one_row_per_epoch(folder, 4)
    return folder


def last_epoch_on_disk(folder: Path) -> int:
    try:
        return int(pq.read_table(folder / R.EPOCHS, columns=["epoch"])["epoch"].to_pylist()[-1])
    except (FileNotFoundError, OSError):
        return -1


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path, uninterrupted: Path, trainer_cli) -> None:
    folder = tmp_path / "killed" / TrialSpec.from_dict(RESUME_SPEC).trial_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(RESUME_SPEC))
    proc = subprocess.Popen([sys.executable, "-m", "trainer.run", "--spec", str(folder / "spec.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while last_epoch_on_disk(folder) < 2:
            assert proc.poll() is None, "the trial ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = last_epoch_on_disk(folder)
    assert 2 <= killed_at < 4, "the kill must land mid-trial"
    assert json.loads((folder / R.STATUS).read_text())["state"] == "running"

    out = trainer_cli(folder / "spec.json")
    assert out.returncode == 0, out.stderr
    assert_one_row_per_epoch(folder, 4)
    assert_same_results(uninterrupted, folder)
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    assert temp_files(folder) == []


KILL_BEFORE_CHECKPOINT = """
import os, sys
import trainer.epochs as epochs, trainer.run as run
save = epochs.save_checkpoint
def save_or_die(folder, model, optimizer, epoch, step, **kw):
    if epoch == 3:
        os._exit(9)  # killed after epoch 3's rows were written, before its checkpoint
    save(folder, model, optimizer, epoch, step, **kw)
epochs.save_checkpoint = save_or_die
sys.exit(run.main(["--spec", sys.argv[1]]))
"""


@pytest.mark.slow
def test_resume_when_killed_between_rows_and_checkpoint(tmp_path: Path, uninterrupted: Path, trainer_cli) -> None:
    folder = tmp_path / "torn" / TrialSpec.from_dict(RESUME_SPEC).trial_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(RESUME_SPEC))
    out = subprocess.run([sys.executable, "-c", KILL_BEFORE_CHECKPOINT, str(folder / "spec.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 9, out.stderr
    assert last_epoch_on_disk(folder) == 3  # rows of epoch 3 are on disk ...
    assert torch.load(folder / R.CHECKPOINT, weights_only=True)["epoch"] == 2  # ... its checkpoint is not

    out = trainer_cli(folder / "spec.json")
    assert out.returncode == 0, out.stderr
    assert_one_row_per_epoch(folder, 4)  # epoch 3 retrained once, its old rows replaced
    assert_same_results(uninterrupted, folder)


# ---- divergence -------------------------------------------------------------------------------
@pytest.mark.slow
def test_diverged_trial_fails_and_is_not_retried(tmp_path: Path, trainer_cli) -> None:
    spec = TrialSpec(sweep="diverge", epochs=3, alpha=1e30, device="cpu")  # the loss runs to -inf / nan
    folder = tmp_path / spec.trial_id
    assert run_trial(spec, folder) == "failed"
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "failed" and status["error_kind"] == "diverged" and status["retryable"] is False
    assert "epoch 1" in status["error"] and "non-finite" in status["error"]
    assert pd.read_parquet(folder / R.EPOCHS)["epoch"].tolist() == [0]

    before = (folder / R.STATUS).read_text(), (folder / R.EPOCHS).stat().st_mtime_ns
    out = trainer_cli(folder / "spec.json")
    assert out.returncode == 3
    assert "failed" in out.stdout and "epoch 1" in out.stdout
    assert ((folder / R.STATUS).read_text(), (folder / R.EPOCHS).stat().st_mtime_ns) == before  # not retrained
    assert run_trial(spec, folder) == "failed"


# ---- the trial lock ---------------------------------------------------------------------------
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_lock_held_by_live_process_then_released_by_its_death(tmp_path: Path) -> None:
    spec = TrialSpec(sweep="lock", epochs=1, device="cpu")
    folder = tmp_path / spec.trial_id
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(folder)
        with pytest.raises(TrialBusy):
            run_trial(spec, folder)
        assert not (folder / R.STATUS).exists()  # the busy attempt touched nothing
    finally:
        holder.kill()  # SIGKILL: the holder never unlocks; the kernel drops its lock
        holder.wait()
    assert not is_locked(folder)
    assert run_trial(spec, folder) == "done"
    assert not is_locked(folder)  # and run_trial released its own


# ---- the done-when check: accuracy and the sign of the regularizer, end to end ------------------
@pytest.mark.slow
def test_digits_accuracy_and_selectivity_respond_to_alpha(tmp_path: Path) -> None:
    results = {}
    for alpha in (0.0, -30.0, 10.0):
        spec = TrialSpec(sweep="done-when", epochs=10, alpha=alpha, device="cpu")
        assert run_trial(spec, tmp_path / spec.trial_id) == "done"
        results[alpha] = pd.read_parquet(tmp_path / spec.trial_id / R.EPOCHS).iloc[-1]
    # Measured on a 2-core CPU (10 epochs): test_acc 0.975 at alpha 0;
    # csi_mean -30 -> 0.023, 0 -> 0.318, +10 -> 0.961.
    assert results[0.0]["test_acc"] > 0.9
    plain = results[0.0]["csi_mean"]
    assert 0.15 < plain < 0.6
    assert results[-30.0]["csi_mean"] < min(0.1, plain / 3)
    assert results[10.0]["csi_mean"] > max(0.8, plain + 0.3)
    assert results[-30.0]["test_acc"] > 0.8  # pushing selectivity down costs little here


# ---- the benchmark command runs ------------------------------------------------------------------
@pytest.mark.slow
def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import step as bench

    args = ["--dataset", "synthetic-cifar", "--n-train", "128", "--batch-size", "32", "--steps", "1", "--rounds", "2"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "alpha=0" in out and "alpha=-10" in out and "step time ratio" in out and "eval / (train + eval)" in out
    with pytest.raises(SystemExit):
        bench.main(["--alpha", "0"])
