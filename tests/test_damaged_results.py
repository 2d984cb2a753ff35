"""A done trial whose result files were damaged from outside (cut short, emptied, deleted) is not
done: `orchestrator.status` says so with the fix, and rerunning the sweep sets its files aside and
trains it anew. Before, it stayed `done` for ever: every collect skipped it and no launch ran it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.synthetic import write_trial
from orchestrator.collect import collect
from orchestrator.folders import scan
from orchestrator.grid import load_grid
from orchestrator.plan import make_plan
from orchestrator.prepare import set_aside_damaged
from orchestrator.status import main as status_main
from orchestrator.sweep import main as sweep_main
from trainer import results as R
from trainer.cli import cli
from trainer.files import damaged_results
from trainer.lock import TrialLock


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _synthetic(tmp_path: Path) -> tuple[Path, Path, list]:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: dmg\nfixed: {epochs: 2}\nsweep: {alpha: [-5, 0, 5]}\n")
    specs = list(load_grid(grid).specs)
    sweep = tmp_path / "results" / "dmg"
    for spec in specs:
        write_trial(sweep, spec, units=False)
    return grid, sweep, specs


def test_what_counts_as_damaged(tmp_path: Path) -> None:
    _, sweep, specs = _synthetic(tmp_path)
    folder = sweep / "trials" / specs[0].trial_id
    assert damaged_results(folder) is None
    layers = folder / R.LAYERS
    whole = layers.read_bytes()
    for damage, said in [
        (lambda: _cut(layers), "layers.parquet is damaged ("),
        (lambda: layers.write_bytes(b""), "layers.parquet is damaged (0 bytes, not a whole Parquet file)"),
        (lambda: layers.write_bytes(whole[:-1] + b"X"), "layers.parquet is damaged"),
        (lambda: layers.unlink(), "layers.parquet is missing"),
    ]:
        damage()
        assert (damaged_results(folder) or "").startswith(said), damage
        layers.write_bytes(whole)
    assert damaged_results(folder) is None
    # units.parquet too: a done trial whose unit rows are gone stayed done, and the ablation job needs them
    units = folder / R.UNITS
    kept = units.read_bytes()
    _cut(units)
    assert (damaged_results(folder) or "").startswith("units.parquet is damaged (")
    units.unlink()
    assert damaged_results(folder) == "units.parquet is missing"
    units.write_bytes(kept)
    assert damaged_results(folder) is None


def test_the_collector_sees_a_done_trial_without_its_units_as_status_does(tmp_path: Path) -> None:
    """status called it unreadable; collect (even --full) aggregated it as done."""
    _, sweep, specs = _synthetic(tmp_path)
    _cut(sweep / "trials" / specs[0].trial_id / R.UNITS)
    (sweep / "trials" / specs[1].trial_id / R.UNITS).unlink()
    result = collect(sweep, figures=False, full=True)
    assert result.counts["done"] == 1 and result.counts["unreadable"] == 2
    reasons = dict(zip(result.excluded.trial_id, result.excluded.reason))
    assert (
        reasons[specs[1].trial_id]
        == "done but units.parquet is missing; rerun the sweep: it sets the trial's files aside and trains it anew"
    )
    assert reasons[specs[0].trial_id].startswith("done but units.parquet is damaged (")
    assert set(pd.read_parquet(result.summary / "trials.parquet").trial_id) == {specs[2].trial_id}


def test_status_and_the_plan_see_a_damaged_done_trial_as_unreadable_to_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sweep, specs = _synthetic(tmp_path)
    _cut(sweep / "trials" / specs[1].trial_id / R.EPOCHS)
    (sweep / "trials" / specs[2].trial_id / R.LAYERS).unlink()
    states = scan(sweep)
    assert [states[s.trial_id].state for s in specs] == ["done", "unreadable", "unreadable"]
    assert states[specs[2].trial_id].reason == (
        "done, but layers.parquet is missing; rerun the sweep: it sets the trial's files aside and trains it anew"
    )
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "1 done" in out and "2 unreadable" in out and "done, but epochs.parquet is damaged" in out
    plan = make_plan(specs, sweep)
    assert [s.trial_id for s in plan.to_run] == [s.trial_id for s in specs[1:]]
    excluded = collect(sweep, figures=False).excluded  # the collector names the fix too
    assert all(r.endswith("; rerun the sweep: it sets the trial's files aside and trains it anew") for r in excluded.reason)
    assert len(excluded) == 2 and excluded.reason.str.startswith("epochs.parquet unreadable: ").sum() == 1

    # The launcher's set-aside: everything but spec.json (and the lock) moves, nothing is deleted.
    held = sweep / "trials" / specs[2].trial_id
    with TrialLock(held):  # another process holds this one (an analysis job): left for the next launch
        lines = set_aside_damaged(plan)
    assert len(lines) == 1 and specs[1].trial_id in lines[0] and "done, but epochs.parquet is damaged" in lines[0]
    folder = sweep / "trials" / specs[1].trial_id
    (aside,) = folder.glob("damaged-*")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [aside.name, R.SPEC]
    assert {p.name for p in aside.iterdir()} >= {R.EPOCHS, R.LAYERS, R.STATUS}
    assert scan(sweep)[specs[1].trial_id].state == "pending"
    assert scan(sweep)[specs[2].trial_id].state == "unreadable"
    assert set_aside_damaged(make_plan(specs, sweep)) and not list(held.glob(R.STATUS))


@pytest.mark.slow
def test_a_rerun_trains_damaged_done_trials_anew_and_no_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: dmg\nfixed: {epochs: 2, batch_size: 256}\nsweep: {alpha: [-3, 0], seed: [0, 1]}\n")
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results), "--max-parallel", "2"]) == 0
    trials = sorted((results / "dmg" / "trials").iterdir())
    first = {t.name: pd.read_parquet(t / R.EPOCHS) for t in trials}
    _cut(trials[0] / R.EPOCHS)
    (trials[1] / R.LAYERS).unlink()
    untouched = {t.name: (t / R.STATUS).read_bytes() for t in trials[2:]}
    capsys.readouterr()

    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert err.count("set aside: ") == 2 and "running 2 of 4 trials" in err
    assert all(scan(results / "dmg")[t.name].state == "done" for t in trials)
    for t in trials[:2]:  # trained anew: the same numbers (CPU, seeded), the old files beside them
        again = pd.read_parquet(t / R.EPOCHS)
        metrics = [c for c in again.columns if c not in ("seconds", "eval_seconds", "images_per_s")]
        pd.testing.assert_frame_equal(again[metrics], first[t.name][metrics])
        assert len(list(t.glob("damaged-*/status.json"))) == 1
    assert {t.name: (t / R.STATUS).read_bytes() for t in trials[2:]} == untouched  # the others never ran again
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert "nothing to run: every trial is done" in capsys.readouterr().out
