"""The robustness job: corruptions against their definitions, attack properties, the dimensionality of
the change against an independent computation, input-unit gradients, the CIFAR-10-C layout, and a
sweep -> robust -> collect run end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.collect import collect
from orchestrator.robust import main as robust_main
from orchestrator.sweep import main as sweep_main
from trainer.analysis.attacks import InputSpace, change_dimensionality, fgsm, gradient_variability, input_unit_gradients, pgd
from trainer.analysis.corruption_sets import read_official
from trainer.analysis.corruptions import CORRUPTIONS, corrupt, generator_for
from trainer.analysis.robustness_job import ROBUST_DIMENSIONALITY, ROBUSTNESS, Context, RobustPlan, attack_piece, corruption_piece
from trainer.cli import cli
from trainer.data import DATASETS, TensorData, read_digits
from trainer.errors import UserError
from trainer.models import TrackedNet
from trainer.spec import TrialSpec
from trainer.trial import run_trial

CPU = torch.device("cpu")
# Corruptions whose parameters grow with severity in every respect: the distance from the clean image must too.
# (glass blur, snow, frost, elastic and pixelate mix parameters that do not all grow: Hendrycks & Dietterich
# ordered their severities by the error they cause, not by a pixel distance.)
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur", "fog", "brightness",
            "contrast", "jpeg_compression")  # fmt: skip


def _digits(n: int = 12) -> torch.Tensor:
    (_, _), (x, _) = read_digits(Path("."))
    return x[:n].float() / 255


def _colour(n: int = 4, side: int = 32) -> torch.Tensor:
    """Natural-looking colour images (32 px: CIFAR-10-C's parameters): digits upsampled and tinted."""
    x = F.interpolate(_digits(n), size=(side, side), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return x * torch.tensor([0.9, 0.6, 0.3]).view(1, 3, 1, 1) + 0.05


def _colour64() -> torch.Tensor:
    """64 px colour images: Tiny-ImageNet-C's parameters."""
    return _colour(3, 64)


# ---- corruptions ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("images", [_digits, _colour, _colour64], ids=["digits-8px-grey", "32px-colour", "64px-colour"])
def test_corruptions_keep_shape_and_range_are_seeded_and_grow_with_severity(images: object) -> None:
    x = images()  # type: ignore[operator]
    for name in CORRUPTIONS:
        distances = []
        for severity in range(1, 6):
            # the same draws at every severity, so that only the severity's parameters differ
            out = corrupt(name, x, severity, generator_for(0, name, 1, 0))
            assert out.shape == x.shape and out.dtype == torch.float32, name
            assert float(out.min()) >= 0 and float(out.max()) <= 1, name
            assert torch.equal(out, corrupt(name, x, severity, generator_for(0, name, 1, 0))), f"{name}: not seeded"
            assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4), f"{name}: not 8-bit"
            distances.append(float((out - x).abs().mean()))
        assert min(distances) > 0, f"{name} leaves the images unchanged at some severity: {distances}"
        if name in MONOTONE:
            assert all(a <= b + 1e-6 for a, b in zip(distances, distances[1:])), f"{name}: {distances}"
        assert distances[-1] > 1.5 * min(distances) or name in ("glass_blur", "elastic_transform", "pixelate"), f"{name}: {distances}"


@pytest.mark.slow
def test_noise_corruptions_follow_their_definitions() -> None:
    x = torch.full((64, 1, 8, 8), 128 / 255)  # on the 8-bit grid, as the outputs
    g = generator_for(0, "gaussian_noise", 5, 0)
    out = corrupt("gaussian_noise", x, 5, g)
    assert float((out - x).std()) == pytest.approx(0.10, rel=0.1)  # sigma 0.10 at severity 5
    out = corrupt("impulse_noise", x, 5, generator_for(0, "impulse_noise", 5, 0))
    assert float((out != x).float().mean()) == pytest.approx(0.07, abs=0.02)  # 7% salt and pepper
    assert set(out[out != x].unique().tolist()) <= {0.0, 1.0}
    out = corrupt("contrast", _digits(), 5, torch.Generator())
    clean = _digits()
    assert torch.allclose(out.mean(dim=(2, 3)), clean.mean(dim=(2, 3)), atol=2 / 255)  # contrast keeps each image's mean
    assert torch.allclose(out.std(dim=(2, 3)), 0.15 * clean.std(dim=(2, 3)), atol=2 / 255)
    assert not torch.equal(corrupt("shot_noise", x, 3, generator_for(0, "shot_noise", 3, 0)),
                           corrupt("shot_noise", x, 3, generator_for(1, "shot_noise", 3, 0)))  # fmt: skip


# ---- attacks, dimensionality, gradients -------------------------------------------------------------
def _small_net() -> TrackedNet:
    """A two-block network trained briefly on digits (seconds): something worth attacking."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
    blocks = [("stage1.block1", nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())),
              ("stage2.block1", nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()))]  # fmt: skip
    net = TrackedNet(stem, blocks, nn.Linear(16, 10))
    (x, y), _ = read_digits(Path("."))
    info = DATASETS["digits"][0]
    xn = (x.float() / 255 - info.mean[0]) / info.std[0]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(150):
        i = torch.arange(step * 64, step * 64 + 64) % len(y)
        loss = F.cross_entropy(net(xn[i])[0], y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def context() -> Context:
    (train, test) = read_digits(Path("."))
    data = TensorData(DATASETS["digits"][0], train, test, CPU)
    plan = RobustPlan(epsilons=(0, 2 / 255, 8 / 255, 16 / 255, 32 / 255), pgd_steps=5, images=200)
    return Context(TrialSpec(), data, _small_net(), CPU, plan)


@pytest.mark.slow
def test_attacks_stay_in_the_ball_and_weaken_the_network(context: Context) -> None:
    x, y, space = context.pixels[:64], context.labels[:64], context.space
    for eps in (2 / 255, 16 / 255):
        adv = fgsm(context.model, x, y, eps, space)
        assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        adv, _ = pgd(context.model, x, y, eps, 5, 2.5 * eps / 5, space, torch.Generator().manual_seed(0))
        assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    rows, dims = attack_piece(context, 1, "fgsm")
    fg = pd.DataFrame(rows, columns=["epoch", "kind", "name", "severity", "epsilon", "source", "n", "accuracy", "single"])
    rows, _ = attack_piece(context, 1, "pgd")
    pg = pd.DataFrame(rows, columns=fg.columns)
    assert fg.accuracy.iloc[0] > 0.7  # the clean network works
    for table in (fg, pg):
        assert (np.diff(table.accuracy) <= 0).all(), table.accuracy.tolist()  # non-increasing in epsilon
        assert (table.accuracy <= table.single + 1e-12).all()
    assert (pg.accuracy.to_numpy() <= fg.accuracy.to_numpy() + 1e-12).all(), (pg.accuracy.tolist(), fg.accuracy.tolist())
    assert pg.accuracy.iloc[-1] < 0.5 * pg.accuracy.iloc[0]  # 32/255 breaks most images
    assert len(dims) == 4 * 2  # the epsilons > 0 x 2 layers


def _independent_pcs(delta: np.ndarray, fraction: float) -> tuple[int, float]:
    """Components for `fraction` of the variance and participation ratio from the covariance's eigenvalues."""
    lam = np.sort(np.linalg.eigvalsh(np.cov(delta, rowvar=False)))[::-1].clip(min=0)
    share = np.cumsum(lam) / lam.sum()
    return int(np.argmax(share >= fraction - 1e-12) + 1), float(lam.sum() ** 2 / (lam**2).sum())


def test_change_dimensionality_against_the_covariance_spectrum() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(300, 20))
    change = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 20)) + 0.01 * rng.normal(size=(300, 20))  # ~3 dimensions
    pcs, ratio = change_dimensionality(clean, clean + change)
    ref_pcs, ref_ratio = _independent_pcs(change, 0.95)
    assert pcs == ref_pcs and pcs <= 3 and ratio == pytest.approx(ref_ratio, rel=1e-6)
    assert change_dimensionality(clean, clean + np.nan)[0] is None


@pytest.mark.slow
def test_change_dimensionality_in_the_job_is_of_the_difference(context: Context) -> None:
    moved = corrupt("gaussian_noise", context.pixels, 5, generator_for(0, "gaussian_noise", 5, 0))
    rows = context.dimension_rows(1, "corruption", "gaussian_noise", 5, None, moved)
    delta = [m - c for m, c in zip(context.units(moved), context.clean_units)]
    for row, d in zip(rows, delta):
        assert (row[8], row[9]) == pytest.approx(_independent_pcs(d, 0.95), rel=1e-6)


@pytest.mark.slow
def test_input_unit_gradients_match_the_jacobian(context: Context) -> None:
    x, space, net = context.pixels[:3], context.space, context.model
    g = input_unit_gradients(net, x, space, 1, np.array([0, 5]))
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda p: net(space.to_model(p), capture=True)[1][1][0], x[i : i + 1])  # type: ignore[index]
        assert g[i] == pytest.approx(jac[[0, 5]].abs().flatten(1).mean(1).numpy(), rel=1e-5)
    grads = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    mean, cv_samples, cv_units = gradient_variability(grads)
    assert mean == 2.0
    assert cv_samples == pytest.approx(np.mean([1 / 2, 0.0, 1 / 2]))  # per unit: std / mean over the 2 images
    assert cv_units == pytest.approx(np.std([1, 2, 3]) / 2)


# ---- the official CIFAR-10-C layout ------------------------------------------------------------------
@pytest.mark.slow
def test_cifar10c_tree_is_read_and_used(tmp_path: Path, context: Context) -> None:
    n = 12
    rng = np.random.default_rng(0)
    test_x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, n)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    stacked = np.concatenate([np.clip(test_x.astype(int) + 20 * s, 0, 255).astype(np.uint8) for s in range(1, 6)])
    np.save(folder / "fog.npy", stacked.transpose(0, 2, 3, 1))  # the official files are [N, 32, 32, 3]
    np.save(folder / "labels.npy", np.tile(test_y, 5))
    images, labels, where = read_official("cifar10", tmp_path, "fog", 3)
    assert np.array_equal(images, stacked[2 * n : 3 * n]) and np.array_equal(labels, test_y) and np.array_equal(where, np.arange(n))
    # the job's corruption piece on a CIFAR-10 trial reads it: accuracy of the network on exactly those images
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU())
    net = TrackedNet(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), [("stage1.block1", block)], nn.Linear(6, 10)).eval()
    info = DATASETS["cifar10"][0]
    data = TensorData(info, (torch.from_numpy(test_x), torch.from_numpy(test_y)), (torch.from_numpy(test_x), torch.from_numpy(test_y)), CPU)
    spec = TrialSpec(model="resnet20", dataset="cifar10")
    ctx = Context(spec, data, net, CPU, RobustPlan(images=n))
    acc_rows, dim_rows = corruption_piece(ctx, 1, "fog", "official", tmp_path)
    space = InputSpace(info.mean, info.std, CPU)
    for severity, row in zip(range(1, 6), acc_rows):
        x = torch.from_numpy(stacked[(severity - 1) * n : severity * n]).float() / 255
        expected = float((net(space.to_model(x))[0].argmax(1) == torch.from_numpy(test_y)).float().mean())
        assert row[5] == "official" and row[6] == n and row[7] == pytest.approx(expected)
    assert len(dim_rows) == 5  # one layer x 5 severities: the clean images were matched
    np.save(folder / "fog.npy", stacked[:7].transpose(0, 2, 3, 1))
    with pytest.raises(UserError, match="fog.npy"):
        read_official("cifar10", tmp_path, "fog", 1)


# ---- the official Tiny-ImageNet-C layout --------------------------------------------------------------
TINY_WNIDS = ("n02124075", "n01443537", "n01629819")  # wnids.txt order; labels are their sorted order


def _tiny_c_tree(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """<root>/tiny-imagenet-200/{wnids.txt, val/val_annotations.txt} and <root>/Tiny-ImageNet-C/{fog,contrast}/
    <1-5>/<wnid>/val_<i>.JPEG (64 px RGB JPEGs; fog 3 also holds a grayscale and a CMYK JPEG). The clean test set
    (uint8 [6, 3, 64, 64], labels) in val_annotations order."""
    from tests.imagenet_tree import encode, smooth_image

    rng = np.random.default_rng(0)
    tiny = root / "tiny-imagenet-200"
    (tiny / "val").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    wnid_of = [TINY_WNIDS[i % 3] for i in range(6)]
    (tiny / "val" / "val_annotations.txt").write_text("".join(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n" for i, w in enumerate(wnid_of)))
    clean = np.stack([smooth_image(rng, 64, 64) for _ in wnid_of])
    for name in ("fog", "contrast"):
        for severity in range(1, 6):
            for i, wnid in enumerate(wnid_of):
                moved = np.clip(clean[i].astype(int) + 25 * severity, 0, 255).astype(np.uint8)
                mode = {(1, "fog", 3): "L", (2, "fog", 3): "CMYK"}.get((i, name, severity), "RGB")
                path = root / "Tiny-ImageNet-C" / name / str(severity) / wnid / f"val_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode(moved, mode=mode))
    labels = np.array([sorted(TINY_WNIDS).index(w) for w in wnid_of])
    return clean.transpose(0, 3, 1, 2), labels


def _decoded(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


@pytest.mark.slow
def test_tinyimagenet_c_tree_is_read_and_used(tmp_path: Path) -> None:
    clean, test_y = _tiny_c_tree(tmp_path)
    base = tmp_path / "Tiny-ImageNet-C" / "fog" / "3"
    images, labels, where = read_official("tinyimagenet", tmp_path, "fog", 3)
    # class folders in sorted order, files sorted within; labels by the sorted wnids; each image's clean index
    assert images.shape == (6, 3, 64, 64) and images.dtype == np.uint8
    assert where.tolist() == [1, 4, 2, 5, 0, 3] and labels.tolist() == test_y[where].tolist()
    for image, i in zip(images, where):
        assert np.array_equal(image, _decoded(base / TINY_WNIDS[i % 3] / f"val_{i}.JPEG")), i
    assert np.allclose(images[0], images[0][:1])  # the grayscale JPEG comes back as RGB with equal channels
    # the job's corruption piece on a Tiny ImageNet trial reads it: accuracy of the network on exactly those images
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU())
    net = TrackedNet(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), [("stage1.block1", block)], nn.Linear(6, 200)).eval()
    info = DATASETS["tinyimagenet"][0]
    test = (torch.from_numpy(clean), torch.from_numpy(test_y))
    ctx = Context(TrialSpec(model="resnet18", dataset="tinyimagenet"), TensorData(info, test, test, CPU), net, CPU, RobustPlan(images=6))
    acc_rows, dim_rows = corruption_piece(ctx, 1, "fog", "official", tmp_path)
    space = InputSpace(info.mean, info.std, CPU)
    for severity, row in zip(range(1, 6), acc_rows):
        x, y, _ = read_official("tinyimagenet", tmp_path, "fog", severity)
        expected = float((net(space.to_model(torch.from_numpy(x).float() / 255))[0].argmax(1) == torch.from_numpy(y)).float().mean())
        assert row[3] == severity and row[5] == "official" and row[6] == 6 and row[7] == pytest.approx(expected)
    assert len(dim_rows) == 5 and all(r[7] == 6 for r in dim_rows)  # one layer x 5 severities: every clean image matched
    # what is not of the layout is one UserError naming it
    bad = tmp_path / "Tiny-ImageNet-C" / "contrast" / "2" / TINY_WNIDS[0]
    (bad / "val_9.JPEG").write_bytes((bad / "val_0.JPEG").read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match="val_9.JPEG"):
        read_official("tinyimagenet", tmp_path, "contrast", 2)
    (bad / "val_9.JPEG").write_bytes(b"")  # zero bytes
    with pytest.raises(UserError, match="val_9.JPEG"):
        read_official("tinyimagenet", tmp_path, "contrast", 2)
    (tmp_path / "Tiny-ImageNet-C" / "contrast" / "4" / "n99999999").mkdir()
    with pytest.raises(UserError, match="n99999999"):
        read_official("tinyimagenet", tmp_path, "contrast", 4)
    with pytest.raises(UserError, match="snow"):
        read_official("tinyimagenet", tmp_path, "snow", 1)


# ---- end to end: sweep -> robust -> collect ------------------------------------------------------------
GRID = """name: rob
fixed: {epochs: 1, batch_size: 128, lr: 0.1, keep_checkpoints: [1]}
sweep:
  alpha: [-30, 0]
  seed: [0, 1]
"""
JOB = ["--images", "40", "--epsilons", "0", "0.03", "--pgd-steps", "2", "--gradient-images", "8", "--gradient-units", "2",
       "--corruptions", "gaussian_noise", "contrast"]  # fmt: skip


@pytest.mark.slow
def test_sweep_robust_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    assert cli(sweep_main, ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / "results")]) == 0
    sweep = tmp_path / "results" / "rob"
    assert cli(robust_main, [str(sweep), *JOB, "--max-parallel", "2"]) == 0
    trials = sorted((sweep / "trials").iterdir())
    rows = pd.read_parquet(trials[0] / ROBUSTNESS)
    assert sorted(set(rows.kind)) == ["clean", "corruption", "fgsm", "pgd"] and len(rows) == 1 + 2 * 5 + 2 * 2
    dims = pd.read_parquet(trials[0] / ROBUST_DIMENSIONALITY)
    assert len(dims) == (1 + 2 * 5 + 2) * 9  # clean, 2 corruptions x 5 severities, 2 attacks at one epsilon > 0; 9 layers
    before = {t: (t / ROBUSTNESS).stat().st_mtime_ns for t in trials}
    assert cli(robust_main, [str(sweep), *JOB]) == 0  # idempotent: nothing left to do, nothing rewritten
    assert before == {t: (t / ROBUSTNESS).stat().st_mtime_ns for t in trials}
    summary = collect(sweep).summary
    corr = pd.read_parquet(summary / "robust_corruptions.parquet")
    assert set(corr.name) == {"gaussian_noise", "contrast", "mean"} and set(corr.n) == {2} and set(corr.alpha) == {-30.0, 0.0}
    attacks = pd.read_parquet(summary / "robust_attacks.parquet")
    assert set(attacks.attack) == {"fgsm", "pgd"} and len(attacks) == 2 * 2 * 2  # 2 alphas x 2 attacks x 2 epsilons
    # Every row carries its trial's (robust_trials) or condition's fields, as the other tables do (only alpha before)
    per_trial = pd.read_parquet(summary / "robust_trials.parquet")
    assert {"sweep", "model", "dataset", "epochs", "onset_epoch", "seed", "trial_id", "condition"} <= set(per_trial.columns)
    assert {"model", "dataset", "epochs", "onset_epoch"} <= set(corr.columns) & set(attacks.columns)
    change = pd.read_parquet(summary / "robust_change_dimensionality.parquet")
    assert set(change.kind) == {"clean", "corruption", "fgsm", "pgd"} and len(change) == 2 * 4 * 9
    report = (summary / "report.md").read_text()
    assert "## Robustness" in report and "corruption_acc" in report and "robust_attacks.png" in report
    for name in ("robust_corruption_vs_alpha.png", "robust_attacks.png", "robust_change_dimensionality.png", "robust_gradients.png"):
        assert (summary / "figures" / name).stat().st_size > 5_000
    # --no-figures: tables and report only (the analyses' figures were drawn anyway); those of the
    # collect before go, as the main figures do, since nothing vouches for them any more
    result = collect(sweep, figures=False)
    assert not [p for p in result.written if p.suffix == ".png"] and not list((summary / "figures").glob("robust_*.png"))
    assert (summary / "robust_corruptions.parquet").exists()
    capsys.readouterr()
    # A robust job killed during one trial's corruptions (its file holds clean and one corruption, no
    # attack, no gradients): that trial is said and left out, not averaged in as a mean of fewer corruptions.
    cut = trials[0]
    rows = pq.read_table(cut / ROBUSTNESS)
    kept = rows.filter(pc.is_in(rows["name"], pa.array(["clean", "gaussian_noise"])))
    pq.write_table(kept, cut / ROBUSTNESS)  # the schema's metadata (the job's settings) kept
    (cut / "robust_gradients.parquet").unlink()
    result = collect(sweep, figures=False)
    err = capsys.readouterr().err
    assert f"1 trial(s) with unfinished robustness measurements, left out of the robustness tables: {cut.name} (epoch 1)" in err
    assert f"to finish them: python -m orchestrator.robust {sweep}" in err
    per_trial = pd.read_parquet(summary / "robust_trials.parquet")
    assert cut.name not in set(per_trial.trial_id) and len(set(per_trial.trial_id)) == len(trials) - 1
    assert sorted(pd.read_parquet(summary / "robust_corruptions.parquet").n.unique()) == [1, 2]
    # Every trial cut so: no attack rows anywhere (the collect stopped on a pandas traceback), no robustness tables.
    for t in trials[1:]:
        pq.write_table(kept.set_column(kept.schema.get_field_index("trial_id"), "trial_id", pa.array([t.name] * len(kept))), t / ROBUSTNESS)
        (t / "robust_gradients.parquet").unlink()
    result = collect(sweep, figures=False)
    assert f"{len(trials)} trial(s) with unfinished robustness" in capsys.readouterr().err
    assert not (summary / "robust_trials.parquet").exists() and (summary / "trials.parquet") in result.written
    assert cli(robust_main, [str(sweep), *JOB]) == 0  # the job resumes them; then they are whole again
    collect(sweep, figures=False)
    assert "unfinished" not in capsys.readouterr().err and len(set(pd.read_parquet(summary / "robust_trials.parquet").trial_id)) == len(
        trials
    )
    for bad in ("nope", "official"):  # digits has no published corrupted copy
        assert cli(robust_main, [str(sweep), "--source", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--source" in err[0]


def test_orchestrator_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(robust_main, [str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    (tmp_path / "trials").mkdir()
    assert cli(robust_main, [str(tmp_path), "--corruptions", "rain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown rain" in err[0]
    assert cli(robust_main, [str(tmp_path)]) == 2
    assert "no done trial" in capsys.readouterr().err


def test_robust_fields_are_labels() -> None:
    assert TrialSpec(robust=True, robust_images=100).trial_id == TrialSpec().trial_id
    with pytest.raises(UserError, match="robust_images"):
        TrialSpec(robust_images=5)


@pytest.mark.slow
def test_robust_true_runs_the_job_where_the_trial_ran(tmp_path: Path) -> None:
    spec = TrialSpec(epochs=1, keep_checkpoints=(1,), robust=True, robust_images=10)
    folder = tmp_path / spec.trial_id
    folder.mkdir()
    assert run_trial(spec, folder) == "done"
    rows = pd.read_parquet(folder / ROBUSTNESS)
    assert len(rows) == 1 + 15 * 5 + 2 * 7 and set(rows[rows.kind == "pgd"].n_images) == {10}
    assert (folder / ROBUST_DIMENSIONALITY).exists() and (folder / "robust_gradients.parquet").exists()
