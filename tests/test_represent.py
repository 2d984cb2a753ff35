"""The representation job: stored activations, dimensionality, pairs, CKA / PWCCA rows, tables.

The measures themselves are checked against independent references in tests/test_representation.py;
here: that the job feeds them the right activations (those CSI is computed from, on the same test
images for every trial), that float16 storage does not move them, that pairs are the papers'
(regularized vs the unregularized trial of its seed; unregularized seeds among themselves), that
every file resumes, and that the collector's tables and figures come out of a sweep end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.analysis.represent import main as represent_main
from orchestrator.analysis.represent import pairs
from orchestrator.collect import collect
from orchestrator.sweep import main as sweep_main
from trainer import results as R
from trainer.analysis.representation import linear_cka, participation_ratio, pcs_for_variance, pwcca_distance, pwcca_distance_svcca
from trainer.analysis.representation_job import layer_activations, represent_trial
from trainer.analysis.similarity_job import (
    DIMENSIONALITY,
    SIMILARITY,
    StoredActivations,
    activation_path,
    compare_trials,
    decode,
    encode,
    image_subset,
    images_for,
    stored_epochs,
)
from trainer.cli import cli
from trainer.data import load_dataset
from trainer.errors import UserError
from trainer.models import build_for
from trainer.spec import TrialSpec
from trainer.trial import run_trial

CPU = torch.device("cpu")


# ---- storage ------------------------------------------------------------------------------------
def test_encode_decode_bounds_the_error_per_unit() -> None:
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(300, 8)) * rng.uniform(1e-4, 1e3, size=8) + rng.uniform(-5, 50, size=8), 0)
    a[:, 3] = 7.25  # a constant (dead or saturated) unit
    a[:, 5] = a[:, 4]  # a duplicated unit
    z, mean, scale = encode(a.astype(np.float32))
    assert z.dtype == np.float16 and np.abs(z).max() <= 1.0
    back = decode(z, mean, scale)
    dev = np.abs(a - a.mean(0)).max(0)
    assert np.all(np.abs(back - a) <= dev * 2.0**-11 + np.abs(a) * 1e-6)  # half a float16 ulp of the unit's range, plus float32 rounding
    assert np.ptp(back[:, 3]) == 0 and np.array_equal(back[:, 4], back[:, 5])


def test_images_default_and_subset() -> None:
    assert images_for(TrialSpec(), 359, streamed=False) == 359
    assert images_for(TrialSpec(dataset="cifar10"), 10_000, streamed=False) == 10_000
    assert images_for(TrialSpec(dataset="imagenet"), 50_000, streamed=True) == 5_000
    assert images_for(TrialSpec(dataset="cifar10", represent_images=2_000), 10_000, streamed=False) == 2_000
    sub = image_subset(50_000, 5_000)
    assert len(sub) == 5_000 and np.all(np.diff(sub) > 0) and np.array_equal(sub, image_subset(50_000, 5_000))
    assert np.array_equal(image_subset(359, 359), np.arange(359))


# ---- the per-trial job --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three digits trials run alone (trainer.run), each ending with its representation job."""
    root = tmp_path_factory.mktemp("represent")
    out = {}
    for name, seed, alpha in (("plain0", 0, 0.0), ("plain1", 1, 0.0), ("reg0", 0, -30.0)):
        spec = TrialSpec(sweep="r", epochs=2, seed=seed, alpha=alpha, keep_checkpoints=(0, 1, 2), represent=True)
        folder = root / spec.trial_id
        folder.mkdir()
        (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
        assert run_trial(spec, folder) == "done"
        out[name] = folder
    return out


def fresh_activations(folder: Path, epoch: int) -> list[np.ndarray]:
    """A kept checkpoint's units on the whole digits test set, computed here (float32)."""
    model = build_for("resnet20", "digits")
    model.load_state_dict(torch.load(folder / "checkpoints" / f"epoch_{epoch:03d}.pt", weights_only=True)["model"])
    data = load_dataset("digits", "./data", CPU)
    return layer_activations(model, data, None, 128, CPU)[0]


@pytest.mark.slow
def test_job_stores_the_units_csi_is_computed_from(trials: dict[str, Path]) -> None:
    """The stored activations are the kept network's units on the test set: their class means are the
    mu_max of units.parquet, and the dimensionality rows are the measures of those activations."""
    folder = trials["reg0"]
    assert stored_epochs(folder) == [0, 1, 2]
    units = pd.read_parquet(folder / R.UNITS)
    dims = pd.read_parquet(folder / DIMENSIONALITY)
    acts = fresh_activations(folder, 2)
    with StoredActivations(activation_path(folder, 2)) as stored:
        labels = stored.labels
        assert np.array_equal(stored.images, np.arange(359))
        for name, a in zip(stored.layers, acts):
            np.testing.assert_allclose(stored.layer(name), a, atol=2e-4 * np.abs(a).max())
            u = units[(units.epoch == 2) & units.epoch_end & (units.layer == name)].sort_values("unit")
            class_means = np.stack([a[labels == c].mean(0) for c in range(10)])
            np.testing.assert_allclose(class_means.max(0), u.mu_max.to_numpy(), rtol=1e-4, atol=1e-6)
            row = dims[(dims.epoch == 2) & (dims.layer == name)].iloc[0]
            assert row.pcs_95 == pcs_for_variance(a, 0.95) and row.participation_ratio == pytest.approx(participation_ratio(a), rel=1e-12)
            assert (row.n_units, row.n_images) == (a.shape[1], 359)
            assert row.pcs_95_per_unit == row.pcs_95 / min(a.shape[1], 358)  # width-normalised


def test_float16_storage_does_not_move_the_measures(trials: dict[str, Path]) -> None:
    a, b = fresh_activations(trials["reg0"], 2), fresh_activations(trials["plain0"], 2)
    with StoredActivations(activation_path(trials["reg0"], 2)) as sa, StoredActivations(activation_path(trials["plain0"], 2)) as sb:
        for i, name in enumerate(sa.layers):
            x, y = sa.layer(name), sb.layer(name)
            assert abs(linear_cka(x, y) - linear_cka(a[i], b[i])) < 1e-4
            assert abs(pwcca_distance(x, y) - pwcca_distance(a[i], b[i])) < 1e-3
            assert pcs_for_variance(x) == pcs_for_variance(a[i])


def test_job_resumes_at_the_first_epoch_missing(trials: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / trials["plain1"].name
    shutil.copytree(trials["plain1"], folder)
    before = pd.read_parquet(folder / DIMENSIONALITY)
    assert represent_trial(folder, "cpu") == 0  # all there: nothing to do
    activation_path(folder, 2).unlink()  # killed between an epoch's activations and its rows
    stamp = activation_path(folder, 1).stat().st_mtime_ns
    assert represent_trial(folder, "cpu") == 1
    assert activation_path(folder, 1).stat().st_mtime_ns == stamp  # epochs done are not redone
    after = pd.read_parquet(folder / DIMENSIONALITY)
    pd.testing.assert_frame_equal(before, after)  # one row per (epoch, layer), the same numbers


# ---- pairs ----------------------------------------------------------------------------------
def test_compare_trials_rows(trials: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / trials["reg0"].name
    shutil.copytree(trials["reg0"], folder)
    assert compare_trials(folder, [trials["plain0"]]) == 3  # epochs 0, 1, 2
    assert compare_trials(folder, [trials["plain0"]]) == 0  # done: nothing again
    rows = pd.read_parquet(folder / SIMILARITY)
    assert set(rows.pair) == {"vs_unregularized"} and set(rows.reference_seed) == {0} and set(rows.alpha) == {-30.0}
    first = rows[rows.epoch == 0]
    np.testing.assert_allclose(first.cka, 1.0, atol=1e-12)  # the same seed: the same initial network
    np.testing.assert_allclose(first.pwcca_distance, 0.0, atol=1e-9)
    with StoredActivations(activation_path(folder, 2)) as a, StoredActivations(activation_path(trials["plain0"], 2)) as b:
        for name in a.layers:
            row = rows[(rows.epoch == 2) & (rows.layer == name)].iloc[0]
            assert row.cka == linear_cka(a.layer(name), b.layer(name))
            assert row.pwcca_distance == pwcca_distance(a.layer(name), b.layer(name))  # weights from the regularized trial
            assert row.pwcca_distance_svcca == pwcca_distance_svcca(a.layer(name), b.layer(name))
    assert 0 < rows[rows.epoch == 2].cka.mean() < 1


def test_compare_refuses_other_images(trials: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / trials["plain1"].name
    shutil.copytree(trials["plain1"], other)
    with np.load(activation_path(other, 1)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["images"] = arrays["images"][::-1].copy()
    np.savez(activation_path(other, 1), **arrays)
    folder = tmp_path / trials["plain0"].name
    shutil.copytree(trials["plain0"], folder)
    with pytest.raises(ValueError, match="different test images"):
        compare_trials(folder, [other])


def test_a_reference_is_unregularized(trials: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / trials["plain0"].name
    shutil.copytree(trials["plain0"], folder)
    with pytest.raises(UserError, match="a reference is an unregularized trial"):
        compare_trials(folder, [trials["reg0"]])


def test_pairs_are_the_papers() -> None:
    grid = [TrialSpec(alpha=a, onset_epoch=o, seed=s) for a in (-20.0, 0.0) for o in (0, 5) for s in (0, 1, 2)]
    other = [TrialSpec(model="resnet18", dataset="cifar10", alpha=-20.0, seed=0)]  # no unregularized partner
    specs = {s.trial_id: s for s in grid + other}  # alpha 0's two onsets are one trial per seed
    assert len(specs) == 10
    got = pairs(specs)
    plain = {s.seed: s.trial_id for s in grid if s.alpha == 0}
    for s in grid:
        if s.alpha != 0:
            assert got[s.trial_id] == [plain[s.seed]]
    assert got[plain[1]] == [plain[0]] and got[plain[2]] == [plain[0], plain[1]] and plain[0] not in got
    assert other[0].trial_id not in got
    assert sum(len(v) for v in got.values()) == 6 + 3


# ---- the sweep: in-job, afterwards, collected -------------------------------------------------------
GRID = """name: rep
fixed: {{epochs: 2, batch_size: 128, lr: 0.1, keep_checkpoints: [0, 2], represent: true}}
sweep:
  alpha: [-30, 0]
  seed: [0, 1]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 digits trials trained as one fused group, each ending with its representation job; then the pairs."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "grid.yaml").write_text(GRID.format())
    assert cli(sweep_main, ["--grid", str(tmp / "grid.yaml"), "--results", str(tmp / "results")]) == 0
    folder = tmp / "results" / "rep"
    assert cli(represent_main, [str(folder)]) == 0
    return folder


@pytest.mark.slow
def test_sweep_pairs_and_resumes(sweep: Path) -> None:
    trials = {f.name: f for f in (sweep / "trials").iterdir()}
    specs = {t: TrialSpec.from_dict(R.read_json(f / R.SPEC)) for t, f in trials.items()}
    rows = pd.concat(pd.read_parquet(f / SIMILARITY) for f in trials.values() if (f / SIMILARITY).exists())
    assert len(rows) == 3 * 2 * 9  # 3 pairs x 2 epochs x 9 layers
    assert sorted(rows.drop_duplicates("trial_id").pair) == ["across_seeds", "vs_unregularized", "vs_unregularized"]
    for t, ref in zip(rows.trial_id, rows.reference_id):
        assert specs[ref].alpha == 0 and (specs[t].seed == specs[ref].seed) == (specs[t].alpha != 0)
    # a trial's analysis lost (say, a sweep run without represent: true): the command redoes it, then its pair
    reg = next(f for t, f in trials.items() if specs[t].alpha != 0)
    shutil.rmtree(reg / "activations")
    (reg / DIMENSIONALITY).unlink()
    (reg / SIMILARITY).unlink()
    assert cli(represent_main, [str(sweep)]) == 0
    assert stored_epochs(reg) == [0, 2] and len(pd.read_parquet(reg / SIMILARITY)) == 2 * 9


@pytest.mark.slow
def test_collector_tables_and_figures(sweep: Path) -> None:
    result = collect(sweep)
    summary = result.summary
    sim = pd.read_parquet(summary / "representation_similarity.parquet")
    raw = pd.read_parquet(summary / "representation_pairs.parquet")
    dims = pd.read_parquet(summary / "representation_dimensionality.parquet")
    assert set(zip(sim.alpha, sim.pair)) == {(-30.0, "vs_unregularized"), (0.0, "across_seeds")}
    assert set(sim[sim.pair == "vs_unregularized"].n) == {2} and set(sim[sim.pair == "across_seeds"].n) == {1}
    for r in sim.itertuples():
        g = raw[(raw.condition_id == r.condition_id) & (raw.pair == r.pair) & (raw.epoch == r.epoch) & (raw.layer == r.layer)]
        assert r.cka_mean == pytest.approx(g.cka.mean()) and r.pwcca_distance_mean == pytest.approx(g.pwcca_distance.mean())
    assert len(dims) == 2 * 2 * 9 and set(dims.n) == {2}  # 2 conditions x 2 epochs x 9 layers, 2 seeds each
    # the condition's label, then every condition field as conditions.parquet has them (not only alpha and onset)
    fields = pd.read_parquet(summary / "conditions.parquet").columns[1:].tolist()
    fields = fields[: fields.index("n")]
    assert fields[:2] == ["condition", "sweep"] and {"model", "dataset", "epochs", "alpha", "onset_epoch"} <= set(fields)
    assert dims.columns[: len(fields) + 1].tolist() == ["condition_id", *fields] == sim.columns[: len(fields) + 1].tolist()
    for name in ("cka_over_epochs.png", "pwcca_vs_alpha.png", "dimensionality_vs_alpha.png", "pwcca_svcca_vs_alpha.png"):
        assert (summary / "figures" / name).stat().st_size > 10_000
    assert "cka_over_epochs.png" in (summary / "report.md").read_text()


def test_orchestrator_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(represent_main, [str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    (tmp_path / "trials").mkdir()
    assert cli(represent_main, [str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no done trial with kept checkpoints" in err[0]


def test_cross_seed_pairs_and_their_kind() -> None:
    from trainer.analysis.similarity_job import pair_kind

    grid = [TrialSpec(alpha=a, seed=s) for a in (-20.0, 0.0) for s in (0, 1, 2)]
    specs = {s.trial_id: s for s in grid}
    plain = {s.seed: s for s in grid if s.alpha == 0}
    got = pairs(specs, cross_seed=True)
    for s in grid:
        if s.alpha != 0:  # its own seed first, then the others
            assert got[s.trial_id] == [plain[s.seed].trial_id, *(plain[o].trial_id for o in (0, 1, 2) if o != s.seed)]
            assert [pair_kind(s, specs[r]) for r in got[s.trial_id]] == ["vs_unregularized"] + ["vs_unregularized_other_seed"] * 2
    assert pairs(specs) == {t: refs[:1] if specs[t].alpha != 0 else refs for t, refs in got.items()}
    assert pair_kind(plain[1], plain[0]) == "across_seeds"


@pytest.mark.slow
def test_minibatch_cka_command(trials: dict[str, Path], tmp_path: Path) -> None:
    """Ranadive et al.'s minibatch CKA of the regularized trial with its unregularized twin, every kept epoch."""
    from trainer.analysis.minibatch_cka_job import MINIBATCH_CKA
    from trainer.analysis.minibatch_cka_job import main as mb_main

    reg = tmp_path / trials["reg0"].name
    shutil.copytree(trials["reg0"], reg)
    assert mb_main(["--trial", str(reg), "--against", str(trials["plain0"]), "--batch-size", "64"]) == 0
    rows = pd.read_parquet(reg / MINIBATCH_CKA)
    assert len(rows) == 3 * 10 and set(rows.pair) == {"vs_unregularized"} and set(rows.cka_batch_size) == {64}  # 3 epochs x (9 blocks + fc)
    first = rows[rows.epoch == 0]
    np.testing.assert_allclose(first.cka_minibatch, 1.0, atol=1e-9)  # the same seed: the same initial network
    assert (rows[rows.epoch == 2].cka_minibatch < 1).all()
    assert mb_main(["--trial", str(reg), "--against", str(trials["plain0"])]) == 0 and len(pd.read_parquet(reg / MINIBATCH_CKA)) == 30
    assert mb_main(["--trial", str(reg), "--against", str(trials["plain0"]), "--batch-size", "2"]) == 2


@pytest.mark.slow
def test_represent_minibatch_cka_into_the_collector(sweep: Path) -> None:
    """--minibatch-cka: every pair's minibatch CKA, summarised beside the linear CKA, its own figure."""
    assert cli(represent_main, [str(sweep), "--minibatch-cka"]) == 0
    summary = collect(sweep).summary
    mb = pd.read_parquet(summary / "representation_minibatch_cka.parquet")
    assert set(zip(mb.alpha, mb.pair)) == {(-30.0, "vs_unregularized"), (0.0, "across_seeds")} and set(mb.cka_batch_size) == {64}
    assert "fc" in set(mb.layer) and mb.cka_minibatch_boot_high.max() <= 1.0 + 1e-12
    assert (summary / "figures" / "cka_minibatch_over_epochs.png").stat().st_size > 10_000
