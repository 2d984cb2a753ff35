"""Tests of the collector (`python -m orchestrator.collect`): statistics, tables, incremental
re-collection, figures and every bad input. Real digits trials (trainer.run) for end-to-end checks,
synthetic trial folders (benchmarks.synthetic.write_trial, the trainer's schemas) for the rest.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.synthetic import write_trial
from orchestrator.collect import core as C
from orchestrator.collect import rows_file
from orchestrator.collect.scan import KINDS, expected_schema, scan_files
from orchestrator.collect.stats import summarize, t975, t_quantile_975
from trainer import results as R
from trainer.cli import cli
from trainer.lock import TrialLock
from trainer.spec import TrialSpec

from helpers import imported_by

TABLES = ("trials", "epochs", "layers", "conditions", "condition_epochs", "condition_layers", "excluded")


# ---- helpers ------------------------------------------------------------------------------------
def synthetic(sweep: Path, alphas=(-10.0, -1.0, 0.0, 1.0), seeds=(0, 1, 2), epochs: int = 4, **fields) -> list[TrialSpec]:
    """Done synthetic trials (trainer schemas, fast) for every alpha x seed; returns their specs."""
    specs = [TrialSpec(sweep=sweep.name, alpha=a, seed=s, epochs=epochs, **fields) for a in alphas for s in seeds]
    for spec in specs:
        write_trial(sweep, spec, units=False)
    return specs


def set_status(sweep: Path, spec: TrialSpec, **status) -> Path:
    folder = sweep / "trials" / spec.trial_id
    (folder / R.STATUS).write_text(json.dumps({"attempts": 1, **status}))
    return folder


def collect(sweep: Path, **kw) -> tuple[C.CollectResult, list[str]]:
    warnings: list[str] = []
    result = C.collect(sweep, figures=kw.pop("figures", False), warn=warnings.append, **kw)
    return result, warnings


def table(sweep: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(sweep / "summary" / f"{name}.parquet")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(C.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory) -> Path:
    """Four real digits trials (alpha -10 and 0, seeds 0 and 1, 2 epochs): a pristine sweep to copy."""
    from trainer.trial import run_trial

    sweep = tmp_path_factory.mktemp("real") / "digits-test"
    for alpha in (-10.0, 0.0):
        for seed in (0, 1):
            spec = TrialSpec(sweep=sweep.name, alpha=alpha, seed=seed, epochs=2)
            assert run_trial(spec, sweep / "trials" / spec.trial_id) == "done"
    return sweep


@pytest.fixture
def real(real_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the real sweep (tests may break it)."""
    return Path(shutil.copytree(real_tree, tmp_path / real_tree.name, ignore=shutil.ignore_patterns("checkpoint.pt")))


# ---- statistics ---------------------------------------------------------------------------------
def test_t_quantile_matches_published_table():
    # two-sided 95% critical values of Student's t (any statistics textbook table)
    table_values = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 29: 2.0452, 100: 1.9840}
    for df, expected in table_values.items():
        assert t_quantile_975(df) == pytest.approx(expected, abs=1e-4)
    got = t975([1, 2, 5, 10])
    assert math.isnan(got[0]) and got[1:] == pytest.approx([12.7062, 2.7764, 2.2622], abs=1e-4)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 60), 250, 1001):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_summarize_against_hand_computed_values():
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "c", "c"], "x": [0.90, 0.92, 0.94, 0.5, 1.0, 3.0]})
    s = summarize(df, "g", ["x"])
    assert list(s.index) == ["a", "b", "c"] and list(s["n"]) == [3, 1, 2]
    a = s.loc["a"]  # mean 0.92, std 0.02, sem 0.02 / sqrt(3), half-width t(0.975, 2) * sem
    assert a["x_mean"] == pytest.approx(0.92) and a["x_std"] == pytest.approx(0.02)
    assert a["x_sem"] == pytest.approx(0.011547005, rel=1e-6)
    assert a["x_ci95_low"] == pytest.approx(0.92 - 4.302653 * 0.011547005, rel=1e-6)
    assert a["x_ci95_high"] == pytest.approx(0.92 + 0.0496832, rel=1e-5)
    c = s.loc["c"]  # mean 2, std sqrt(2), sem 1, half-width 12.7062
    assert (c["x_mean"], c["x_std"], c["x_sem"]) == pytest.approx((2.0, math.sqrt(2), 1.0))
    assert (c["x_ci95_low"], c["x_ci95_high"]) == pytest.approx((2 - 12.7062047, 2 + 12.7062047))
    b = s.loc["b"]  # one seed: a mean, no spread
    assert b["x_mean"] == 0.5 and all(math.isnan(b[f"x_{k}"]) for k in ("std", "sem", "ci95_low", "ci95_high"))


def test_conditions_are_all_fields_but_the_seed(tmp_path):
    sweep = tmp_path / "s"
    synthetic(sweep, alphas=(-1.0, 0.0), seeds=(0, 1, 2))
    synthetic(sweep, alphas=(-1.0,), seeds=(0, 1), onset_epoch=2)  # another condition at the same alpha
    collect(sweep)
    conds, trials = table(sweep, "conditions"), table(sweep, "trials")
    assert list(zip(conds["alpha"], conds["onset_epoch"], conds["n"])) == [(-1.0, 0, 3), (-1.0, 2, 2), (0.0, 0, 3)]
    assert [list(s) for s in conds["seeds"]] == [[0, 1, 2], [0, 1], [0, 1, 2]]
    assert list(conds["condition"]) == ["alpha=-1, onset_epoch=0", "alpha=-1, onset_epoch=2", "alpha=0, onset_epoch=0"]
    for _, c in conds.iterrows():  # every statistic against numpy on the trials table
        for metric in ("test_acc", "csi_mean"):
            x = trials.loc[trials["condition_id"] == c["condition_id"], metric].to_numpy()
            sem = x.std(ddof=1) / math.sqrt(len(x))
            assert c[f"{metric}_mean"] == pytest.approx(x.mean())
            assert c[f"{metric}_sem"] == pytest.approx(sem)
            assert c[f"{metric}_ci95_high"] - c[f"{metric}_mean"] == pytest.approx(t_quantile_975(len(x) - 1) * sem)
    layers = table(sweep, "condition_layers")
    first = layers[layers["condition_id"] == conds["condition_id"][0]]
    assert list(first["n"]) == [3] * 9 and list(first["csi_mean_mean"]) == pytest.approx(
        [conds.loc[0, f"csi_mean.{layer}"] for layer in first["layer"]]
    )


# ---- end to end on real trials ------------------------------------------------------------------
@pytest.mark.slow
def test_collect_real_sweep_tables_report_and_figures(real, capsys):
    code, out, err = run_main(capsys, str(real))
    assert code == 0, err
    assert f"{real}: 4 done, 0 failed, 0 running, 0 pending (read 4 trials, 0 from the cache)" in out
    assert "7 tables (.parquet), report.md, figures/ (4 PNG)" in out
    summary = real / "summary"
    for name in TABLES:
        assert isinstance(pd.read_parquet(summary / f"{name}.parquet"), pd.DataFrame)
    for kind in ("epochs", "layers"):  # exactly the trials' own rows, in the trainer's schema
        got = pq.read_table(summary / f"{kind}.parquet")
        assert got.schema.remove_metadata().equals(expected_schema(f"{kind}.parquet"))
        own = pa.concat_tables(pq.read_table(p) for p in sorted(real.glob(f"trials/*/{kind}.parquet")))
        keys = [("trial_id", "ascending"), ("epoch", "ascending"), ("layer", "ascending")][: 2 if kind == "epochs" else 3]
        assert got.replace_schema_metadata(None).sort_by(keys).equals(own.sort_by(keys))
    trials = table(real, "trials")
    assert list(zip(trials["alpha"], trials["seed"])) == [(-10.0, 0), (-10.0, 1), (0.0, 0), (0.0, 1)]
    assert (trials["epoch"] == 2).all() and trials["git_sha"].notna().all() and trials["offset_epoch"].isna().all()
    conds = table(real, "conditions")
    assert list(conds["alpha"]) == [-10.0, 0.0] and list(conds["n"]) == [2, 2]
    assert len(table(real, "condition_epochs")) == 2 * 3 and len(table(real, "condition_layers")) == 2 * 9
    for png in ("test_acc_vs_alpha", "csi_vs_alpha", "csi_over_epochs", "layer_csi_vs_alpha"):
        assert (summary / "figures" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{png}.png)" in (summary / "report.md").read_text()
    report = (summary / "report.md").read_text()
    assert "| alpha | n | test acc (%) | csi_mean |" in report and "| -10 | 2 |" in report


@pytest.mark.slow
def test_incremental_reads_only_new_or_changed_trials(real):
    parked = real.parent / "parked"
    last = sorted((real / "trials").iterdir())[-1]
    shutil.move(last, parked)
    first, _ = collect(real)
    assert (len(first.read), first.cached) == (3, 0)
    shutil.move(parked, real / "trials" / last.name)
    second, _ = collect(real)
    assert second.read == [last.name] and second.cached == 3
    incremental = {name: table(real, name) for name in TABLES}
    third, _ = collect(real)
    assert third.read == [] and third.cached == 4
    # a rewritten result file (a trial reset and run again) is read again
    epochs = pq.read_table(last / R.EPOCHS)
    pq.write_table(epochs, last / R.EPOCHS)
    fourth, _ = collect(real)
    assert fourth.read == [last.name]
    full, _ = collect(real, full=True)
    assert len(full.read) == 4
    for name in TABLES:  # incremental gives exactly what a full collect gives
        pd.testing.assert_frame_equal(table(real, name), incremental[name])


# ---- incremental and states on synthetic trials ------------------------------------------------
@pytest.mark.slow
def test_unchanged_sweep_rewrites_nothing_big_and_keeps_figures(tmp_path):
    sweep = tmp_path / "s"
    synthetic(sweep)
    C.collect(sweep, warn=lambda m: None)
    stamps = {p: p.stat().st_mtime_ns for p in [*(sweep / "summary" / "figures").iterdir(), sweep / "summary" / R.LAYERS]}
    again = C.collect(sweep, warn=lambda m: None)
    assert again.read == [] and again.cached == 12
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_trials_leaving_done_leave_the_tables(tmp_path):
    sweep = tmp_path / "s"
    specs = synthetic(sweep)
    collect(sweep)
    shutil.rmtree(sweep / "trials" / specs[0].trial_id)  # deleted
    set_status(sweep, specs[1], state="running", started="2026-01-01T00:00:00+00:00", host="node7")  # rerun
    result, _ = collect(sweep)
    assert result.read == [] and result.cached == 10
    assert set(table(sweep, "epochs")["trial_id"]) == {s.trial_id for s in specs[2:]}
    assert list(table(sweep, "excluded")["state"]) == ["interrupted"]


def test_failed_and_unfinished_trials_are_listed_not_mixed_in(tmp_path, capsys):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(-1.0, 0.0), seeds=(0, 1, 2))
    set_status(sweep, specs[0], state="failed", error="non-finite loss nan in epoch 3 (alpha -1.0)", error_kind="diverged")
    since = {"started": "2026-01-01T00:00:00+00:00", "host": "node7"}
    live = set_status(sweep, specs[1], state="running", **since)
    set_status(sweep, specs[2], state="running", **since)  # its process died: nobody holds the lock
    pending = TrialSpec(sweep="s", alpha=5.0, seed=0)
    (sweep / "trials" / pending.trial_id).mkdir()
    R.write_json(pending.to_dict(), sweep / "trials" / pending.trial_id / R.SPEC)
    with TrialLock(live):
        code, out, _ = run_main(capsys, str(sweep), "--no-figures")
    assert code == 0
    assert "3 done, 1 failed, 1 running, 1 pending, 1 interrupted" in out
    assert f"failed      {specs[0].trial_id} alpha=-1 seed=0: diverged: non-finite loss nan" in out
    assert f"running     {specs[1].trial_id} alpha=-1 seed=1: running since 2026-01-01T00:00:00+00:00 on node7" in out
    assert f"interrupted {specs[2].trial_id} alpha=-1 seed=2: interrupted: no live process holds it" in out
    assert pending.trial_id not in out  # counted, not listed: see excluded.parquet
    excluded = table(sweep, "excluded")
    assert list(excluded["state"]) == ["failed", "interrupted", "running", "pending"]
    assert list(excluded["alpha"]) == [-1.0, -1.0, -1.0, 5.0] and excluded.loc[0, "error_kind"] == "diverged"
    assert set(table(sweep, "trials")["trial_id"]) == {s.trial_id for s in specs[3:]}
    conds = table(sweep, "conditions")
    assert list(conds["alpha"]) == [0.0] and list(conds["n"]) == [3]
    assert "## Excluded trials" in (sweep / "summary" / "report.md").read_text()


def test_excluded_lines_print_seeds_whole_beside_a_trial_without_a_spec(tmp_path, capsys):
    """A trial whose spec.json is unreadable has no seed: the column held floats and every line said seed=0.0."""
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(-1.0, 0.0), seeds=(0, 1))
    set_status(sweep, specs[0], state="failed", error="non-finite loss nan in epoch 3 (alpha -1.0)", error_kind="diverged")
    (sweep / "trials" / specs[1].trial_id / R.SPEC).write_text("{not json")
    code, out, _ = run_main(capsys, str(sweep), "--no-figures")
    assert code == 0 and f"failed      {specs[0].trial_id} alpha=-1 seed=0: diverged" in out
    assert f"unreadable  {specs[1].trial_id}: spec.json unusable" in out and "seed=0.0" not in out


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "nowhere", "no such folder; pass a sweep folder"),
        (lambda root: root, "not a sweep folder (no trials/ inside)"),
        (lambda root: (root / "file.txt").write_text("x") and root / "file.txt", "not a folder"),
    ],
)
def test_not_a_sweep_is_one_clear_line(tmp_path, capsys, make, message):
    code, out, err = run_main(capsys, str(make(tmp_path)))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_results_root_or_trial_folder_points_at_the_sweep(tmp_path, capsys):
    sweep = tmp_path / "results" / "s"
    specs = synthetic(sweep, alphas=(0.0,), seeds=(0,))
    code, _, err = run_main(capsys, str(tmp_path / "results"))
    assert code == 2 and f"a results root, not a sweep folder; pass one of: {sweep}" in err
    code, _, err = run_main(capsys, str(sweep / "trials" / specs[0].trial_id))
    assert code == 2 and f"a trial folder, not a sweep; pass the sweep folder {sweep}" in err


def test_sweep_without_a_finished_trial(tmp_path, capsys):
    sweep = tmp_path / "s"
    (sweep / "trials").mkdir(parents=True)
    code, _, err = run_main(capsys, str(sweep))
    assert code == 2 and "no trials yet (trials/ is empty)" in err and err.count("\n") == 1
    specs = synthetic(sweep, alphas=(0.0,), seeds=(0, 1))
    set_status(sweep, specs[0], state="failed", error="boom", error_kind="exception")
    set_status(sweep, specs[1], state="running")
    code, _, err = run_main(capsys, str(sweep))
    assert code == 2 and err.count("\n") == 1
    assert "no finished trial to collect yet (1 failed, 1 interrupted)" in err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle(path: Path) -> None:
    """Corrupt data pages but keep the footer: pyarrow only fails while decoding (no file name)."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "kind, damage, reason",
    [
        (R.EPOCHS, _truncate, "Parquet magic bytes not found in footer"),
        (R.LAYERS, lambda p: p.write_bytes(b""), "Parquet file size is 0 bytes"),
        (R.LAYERS, _flip_middle, "layers.parquet unreadable"),
    ],
)
def test_corrupt_file_is_named_and_skipped(tmp_path, capsys, kind, damage, reason):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(-1.0, 0.0, 1.0), seeds=(0, 1, 2))
    bad = sweep / "trials" / specs[4].trial_id / kind
    damage(bad)
    code, out, err = run_main(capsys, str(sweep), "--no-figures")
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and str(bad.parent) in lines[0] and kind in lines[0] and reason in lines[0]
    assert f"trial {specs[4].trial_id} skipped" in lines[0]
    assert "8 done, 0 failed, 0 running, 0 pending, 1 unreadable" in out
    assert len(table(sweep, "trials")) == 8 and specs[4].trial_id not in set(table(sweep, "layers")["trial_id"])
    assert table(sweep, "excluded")["state"].tolist() == ["unreadable"]
    assert list(table(sweep, "conditions")["n"]) == [3, 2, 3]


def test_scan_isolates_every_bad_file_in_one_pass(tmp_path):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(-1.0, 0.0, 1.0, 2.0), seeds=(0, 1, 2, 3))
    paths = [sweep / "trials" / s.trial_id / R.LAYERS for s in specs]
    for i in (0, 5, 6, 15):
        _flip_middle(paths[i]) if i % 2 else _truncate(paths[i])
    rows, bad = scan_files(paths, R.LAYERS)
    assert sorted(bad) == sorted(paths[i] for i in (0, 5, 6, 15))
    assert sorted(set(rows["_file"].to_pylist())) == [i for i in range(16) if i not in (0, 5, 6, 15)]
    assert rows.num_rows == 12 * 5 * 9  # 12 readable trials x epochs 0..4 x 9 layers


def test_other_unusable_done_trials(tmp_path):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(0.0,), seeds=(0, 1, 2, 3, 4))
    (sweep / "trials" / specs[0].trial_id / R.LAYERS).unlink()
    (sweep / "trials" / specs[1].trial_id / R.STATUS).write_text("{not json")
    folder = sweep / "trials" / specs[2].trial_id  # done, but only epochs 0..2 of 0..4 on disk
    epochs = pq.read_table(folder / R.EPOCHS)
    pq.write_table(epochs.slice(0, 3), folder / R.EPOCHS)
    (sweep / "trials" / specs[3].trial_id / R.SPEC).write_text(json.dumps({"alpha": "x"}))
    result, warnings = collect(sweep)
    reasons = dict(zip(result.excluded["trial_id"], result.excluded["reason"]))
    hint = "rerun the sweep: it sets the trial's files aside and trains it anew"  # the launcher sees this damage
    assert reasons[specs[0].trial_id] == f"done but layers.parquet is missing; {hint}"
    assert reasons[specs[1].trial_id].startswith("status.json unreadable")
    assert reasons[specs[2].trial_id] == "epochs.parquet incomplete: 3 rows, expected epochs 0..4 in order"  # no hint: unseen there
    assert reasons[specs[3].trial_id].startswith("spec.json unusable")
    assert len(warnings) == 1 and "incomplete" in warnings[0]  # the others show in excluded, not as file errors
    assert table(sweep, "trials")["trial_id"].tolist() == [specs[4].trial_id]


def test_layers_file_missing_a_row_is_incomplete(tmp_path):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(0.0,), seeds=(0, 1))
    path = sweep / "trials" / specs[0].trial_id / R.LAYERS
    layers = pq.read_table(path)
    pq.write_table(pa.concat_tables([layers.slice(0, 20), layers.slice(21)]), path)  # epoch 2 lacks a layer
    result, warnings = collect(sweep)
    assert result.excluded["reason"].tolist() == ["layers.parquet incomplete: 44 rows, expected epochs 0..4 x 9 layers in order"]
    assert len(warnings) == 1 and str(path.parent) in warnings[0]
    assert table(sweep, "conditions")["n"].tolist() == [1]


def test_single_seed_conditions_have_no_interval(tmp_path):
    sweep = tmp_path / "s"
    synthetic(sweep, alphas=(-1.0, 0.0), seeds=(0,))
    collect(sweep)
    conds = table(sweep, "conditions")
    assert conds["n"].tolist() == [1, 1] and conds["test_acc_ci95_low"].isna().all() and conds["csi_mean_std"].isna().all()
    assert "(n=1)" in (sweep / "summary" / "report.md").read_text()


def test_long_lists_of_excluded_trials_are_cut_on_stdout(tmp_path, capsys):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(0.0,), seeds=tuple(range(14)))
    for spec in specs[:12]:
        set_status(sweep, spec, state="failed", error="boom", error_kind="exception")
    code, out, _ = run_main(capsys, str(sweep), "--no-figures")
    assert code == 0 and out.count("failed      ") == C.SHOWN_EXCLUDED
    assert f"... and 2 more in {sweep / 'summary' / 'excluded.parquet'}" in out
    assert len(table(sweep, "excluded")) == 12


def test_only_corrupt_finished_trials_is_an_error(tmp_path, capsys):
    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(0.0,), seeds=(0,))
    _truncate(sweep / "trials" / specs[0].trial_id / R.EPOCHS)
    code, out, err = run_main(capsys, str(sweep))
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == f"error: {sweep}: no readable finished trial (see the warnings above)"


@pytest.mark.slow
def test_replaced_summary_file_invalidates_the_cache(tmp_path):
    sweep = tmp_path / "s"
    synthetic(sweep)
    collect(sweep)
    (sweep / "summary" / R.LAYERS).write_bytes(b"garbage")
    result, _ = collect(sweep)
    assert len(result.read) == 12 and result.cached == 0
    assert len(table(sweep, "layers")) == 12 * 5 * 9


# ---- figures and the command ------------------------------------------------------------------
def test_alpha_axis_symlog_only_across_decades():
    from matplotlib.figure import Figure

    from orchestrator.collect.figures import alpha_axis

    for alphas, scale, linthresh in (([-100, -1, -0.1, 0, 1], "symlog", 0.1), ([-20, 0, -5], "linear", None)):
        ax = Figure().add_subplot()
        alpha_axis(ax, alphas)
        assert ax.get_xscale() == scale and ax.get_xlabel().startswith("alpha")
        if linthresh:
            assert ax.xaxis.get_transform().linthresh == linthresh


@pytest.mark.slow
def test_command_in_a_fresh_process_with_figures(tmp_path):
    sweep = tmp_path / "s"
    synthetic(sweep, alphas=(-100.0, -10.0, -1.0, 0.0, 10.0), seeds=(0, 1), epochs=20, onset_epoch=0)
    synthetic(sweep, alphas=(-10.0,), seeds=(0, 1), epochs=20, onset_epoch=5)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.collect", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "12 done" in proc.stdout
    conds = table(sweep, "conditions")
    base = conds[conds["onset_epoch"] == 0].sort_values("alpha")
    assert np.all(np.diff(base["csi_mean_mean"]) > 0)  # the synthetic truth: selectivity falls as alpha goes negative
    assert len(list((sweep / "summary" / "figures").glob("*.png"))) == 4


def test_collector_does_not_import_torch():
    """Importing torch (via an analysis job's constants) once made every collect 3 s slower (issue 25)."""
    assert imported_by("import orchestrator.collect.core", ("torch", "torchvision"))[1] == []


@pytest.mark.parametrize("most_coded", [2, 256])
def test_rows_file_bytes_equal_the_plain_write(tmp_path, monkeypatch, most_coded):
    """The summary's rows files (trial fields written as dictionary arrays, orchestrator.collect.rows_file)
    are byte for byte what pyarrow writes for the plain table: over several row groups, with null
    fields (offset_epoch), list and bool fields, and fields both coded and plain (most_coded=2)."""
    monkeypatch.setattr(rows_file, "ROW_GROUP", 30)
    monkeypatch.setattr(rows_file, "MOST_CODED", most_coded)
    sweep = tmp_path / "s"
    synthetic(sweep, alphas=(-10.0, -1.0, 0.0, 1.0, 5.0), seeds=(0, 1, 2))
    synthetic(sweep, alphas=(2.0,), seeds=(0,), offset_epoch=3)
    collect(sweep)
    for kind in KINDS:
        written = (sweep / "summary" / kind).read_bytes()
        plain = pq.read_table(io.BytesIO(written))  # read back, lists name their items "element": as written
        plain = plain.cast(expected_schema(kind).with_metadata(plain.schema.metadata))
        assert plain.num_rows > 60 and plain.schema.field("trial_id").type == pa.string()  # row groups; plain types
        assert plain.column("offset_epoch").null_count > 0
        few = rows_file.dictionary_columns(plain.column_names)
        again = io.BytesIO()
        pq.write_table(plain, again, use_dictionary=few, row_group_size=30)
        assert written == again.getvalue(), kind


def test_files_read_before_the_states_are_used_only_if_unchanged(tmp_path):
    """A cold collect reads the trial files while it looks at the states (rows.prescan). A file
    replaced after that read (a trial finishing meanwhile) is read again, never taken stale."""
    from orchestrator.collect import rows as RW
    from orchestrator.collect.scan import parse_spec, read_spec, read_trials

    sweep = tmp_path / "s"
    specs = synthetic(sweep, alphas=(0.0, 1.0), seeds=(0,), epochs=3)
    folders = sorted((sweep / "trials").iterdir())
    early = RW.prescan(folders)
    changed = sweep / "trials" / specs[1].trial_id / R.EPOCHS
    epochs = pq.read_table(changed)
    pq.write_table(epochs.set_column(epochs.schema.get_field_index("test_acc"), "test_acc", pa.array([0.5] * 4)), changed)
    trials = read_trials(folders)
    for t in trials:
        read_spec(t, parse_spec(t.folder))
    new = list(enumerate(trials))
    assert RW._from_prescan(early[R.EPOCHS], new, R.EPOCHS) is None  # replaced since: not taken
    assert RW._from_prescan(early[R.LAYERS], new, R.LAYERS) is not None  # unchanged: taken
    backwards = RW.prescan(folders[::-1])  # read in another order than the trials': not taken
    assert RW._from_prescan(backwards[R.LAYERS], new, R.LAYERS) is None
    rows = RW.fresh_rows(new, print, early)[R.EPOCHS]
    test_acc = dict(zip(rows["_rank"].to_pylist(), rows["test_acc"].to_pylist()))
    assert test_acc[[t.trial_id for t in trials].index(specs[1].trial_id)] == 0.5


@pytest.mark.parametrize("max_runs", [4096, 2])
def test_rows_are_put_in_trial_order_from_their_runs(monkeypatch, max_runs):
    """rows.keep_sorted orders rows by trial, stably, by slicing the sorted runs they come in (the
    cached rows, then the new trials'), or by one take where there are many runs (max_runs=2).
    The rows files are then written from contiguous row groups (test_incremental_reads_only_...)."""
    from orchestrator.collect import rows as RW

    monkeypatch.setattr(RW, "MAX_RUNS", max_runs)
    rank = np.array([0, 0, 2, 2, 3, 5, 5, 6, 1, 1, 4, 7, 7], dtype=np.int32)  # cached trials, then the new 1, 4, 7
    table = pa.concat_tables([
        pa.table({"row": pa.array(np.arange(8)), "_rank": pa.array(rank[:8])}),
        pa.table({"row": pa.array(np.arange(8, 13)), "_rank": pa.array(rank[8:])}),
    ])  # fmt: skip
    usable = np.ones(8, dtype=bool)
    usable[5] = False  # trial 5 turned unreadable: its rows go
    out = RW.keep_sorted(table, usable)
    assert out["_rank"].to_pylist() == [0, 0, 1, 1, 2, 2, 3, 4, 6, 7, 7]
    assert out["row"].to_pylist() == [0, 1, 8, 9, 2, 3, 4, 10, 7, 11, 12]  # each trial's rows in their order
    # a chunk per run (sliced, not copied), or one (a take)
    assert out["row"].num_chunks == (1 if max_runs == 2 else 6)


def test_unreadable_cached_rows_are_read_again_from_the_trials(tmp_path):
    """A summary rows file the manifest vouches for but that cannot be read (damaged in place,
    same size, mtime and inode) is said in one warning, and every trial is read again."""
    sweep = tmp_path / "s"
    synthetic(sweep)
    collect(sweep)
    expected = {name: table(sweep, name) for name in ("epochs", "layers", "conditions")}
    path = sweep / "summary" / R.LAYERS
    st = path.stat()
    with open(path, "r+b") as f:  # the footer's metadata zeroed in place
        f.seek(st.st_size - 300)
        f.write(bytes(290))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    result, warnings = collect(sweep)
    assert [w for w in warnings if "cached summary unreadable" in w] and len(result.read) == 12 and result.cached == 0
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(table(sweep, name), frame)
