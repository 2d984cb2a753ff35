"""The after-training jobs (ablation, robustness) resume only under the settings their rows were
measured with (trainer.analysis.plan_record). Before, a rerun with other settings (other
fractions, epsilons, image counts) found every epoch or piece present, added nothing, said it had
ablated or measured every trial, and the old rows stood for the new plan. Now such a rerun is one
line naming the file and the settings, exit 2, before any job starts; `--replace` measures anew;
and a rerun over finished trials starts no worker at all (each worker imports torch: seconds a
trial, half an hour of nothing over a 500-trial sweep)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator.analysis.ablate as ablate_cli
import orchestrator.analysis.robust as robust_cli
from benchmarks.synthetic import write_trial
from orchestrator.analysis.ablate import main as ablate_main
from orchestrator.analysis.robust import main as robust_main
from orchestrator.collect import collect
from orchestrator.grid import load_grid
from trainer import results as R
from trainer.analysis import ablation_job, robustness_job
from trainer.analysis.ablation import AblationPlan
from trainer.analysis.plan_record import PLAN_KEY, PlanMismatch, measured_anew, plan_text, recorded, with_plan
from trainer.cli import ArgumentParser, cli
from trainer.spec import TrialSpec
from trainer.trial import run_trial

ROBUST = ["--images", "20", "--epsilons", "0", "0.03", "--pgd-steps", "1", "--gradient-images", "4", "--gradient-units", "2",
          "--corruptions", "contrast"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder with one finished digits trial that kept its checkpoints of epochs 0 and 1."""
    spec = TrialSpec(sweep="plans", epochs=1, batch_size=256, keep_checkpoints=(0, 1))
    folder = tmp_path_factory.mktemp("sweep") / "trials" / spec.trial_id
    folder.mkdir(parents=True)
    assert run_trial(spec, folder) == "done"
    return folder.parent.parent


@pytest.fixture
def sweep(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "s")
    return tmp_path / "s"


def _trial(sweep: Path) -> Path:
    return next((sweep / "trials").iterdir())


def _jobs_started(monkeypatch: pytest.MonkeyPatch, module: object) -> list[int]:
    """Counts the jobs each launch hands to its worker pool."""
    started: list[int] = []
    real = module.run_pool  # type: ignore[attr-defined]

    def counting(name: str, jobs: list, *args: object) -> list[str]:
        started.append(len(jobs))
        return real(name, jobs, *args)

    monkeypatch.setattr(module, "run_pool", counting)
    return started


def test_the_record_resumes_the_same_settings_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    a, b = plan_text({"draws": 3, "fractions": (0.0, 1.0)}), plan_text({"fractions": [0.0, 1.0], "draws": 3})
    assert a == b  # canonical: key order and tuples vs lists do not matter
    assert measured_anew([path], a, replace=False) is False  # no file: nothing to replace
    table = pd.DataFrame({"epoch": [0]})
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path)  # written before the record existed
    assert recorded(path) is None
    assert measured_anew([path], a, replace=False) is False  # taken as it is, as before
    assert measured_anew([path], a, replace=True) is True  # --replace: unknown settings are measured anew
    pq.write_table(with_plan(pa.Table.from_pandas(table, preserve_index=False), a), path)
    assert recorded(path) == {"draws": 3, "fractions": [0.0, 1.0]}
    assert measured_anew([path], a, replace=False) is False and measured_anew([path], a, replace=True) is False
    other = plan_text({"draws": 1, "fractions": [0.0, 1.0]})
    with pytest.raises(
        PlanMismatch, match=r"x\.parquet: measured with other settings \(draws 3\) than this run asks for \(draws 1\); allowed"
    ):
        measured_anew([path], other, replace=False)
    assert measured_anew([path], other, replace=True) is True
    assert pq.read_table(path).schema.metadata[PLAN_KEY] == a


def test_without_flags_a_trial_keeps_its_own_plan() -> None:
    spec = TrialSpec(epochs=4, keep_checkpoints=(0, 4), ablation_counts=(8,), ablation_draws=2, robust_images=100)
    parser = ArgumentParser()
    ablation_job.add_plan_arguments(parser)
    none = ablation_job.plan_overrides(parser.parse_args([]))
    assert none == {} and ablation_job.plan_for(spec, none) == AblationPlan(counts=(8,), draws=2)
    assert ablation_job.plan_for(TrialSpec(), none) == AblationPlan(ablation_job.DEFAULT_FRACTIONS)
    given = ablation_job.plan_overrides(parser.parse_args(["--fractions", "0", "1", "--random-masks", "both"]))
    plan = ablation_job.plan_for(spec, given)
    assert plan == AblationPlan(fractions=(0.0, 1.0), draws=2, random_masks="both")  # k from the flags, draws its own
    again = ablation_job.plan_overrides(parser.parse_args(ablation_job.plan_arguments(given)))
    assert again == given  # what the launcher passes each job is what it was given

    parser = ArgumentParser()
    robustness_job.add_plan_arguments(parser)
    none = robustness_job.plan_overrides(parser.parse_args([]))
    assert none == {} and robustness_job.plan_for(spec, none).images == 100  # robust_images
    given = robustness_job.plan_overrides(parser.parse_args([*ROBUST, "--all-kept"]))
    assert robustness_job.plan_overrides(parser.parse_args(robustness_job.plan_arguments(given))) == given
    assert robustness_job.plan_for(spec, given).epsilons == (0.0, 0.03)


@pytest.mark.slow
def test_ablate_again_with_another_plan_is_one_line_and_replace_measures_it(
    sweep: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _jobs_started(monkeypatch, ablate_cli)
    path = _trial(sweep) / R.ABLATIONS
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1", "--draws", "1"]) == 0
    assert started == [1] and set(pd.read_parquet(path).fraction) == {0.0, 1.0}
    assert json.loads(pq.read_schema(path).metadata[PLAN_KEY])["fractions"] == [0.0, 1.0]
    before = path.read_bytes()
    capsys.readouterr()

    # The same plan again: nothing to do, no worker started, nothing rewritten.
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1", "--draws", "1"]) == 0
    assert started == [1, 0] and path.read_bytes() == before
    assert "ablated 0 trials (1 of 1 had nothing left to ablate)" in capsys.readouterr().out

    # Another plan: one line naming the file and what differs, before any job starts.
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "0.5", "--draws", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: measured with other settings (fractions 0 1) "), err
    assert "(fractions 0 0.5); allowed: the same settings (the job resumes), or --replace" in err[0]
    assert started == [1, 0] and path.read_bytes() == before
    # The defaults (no flags: the trial's own plan) differ too.
    assert cli(ablate_main, [str(sweep)]) == 2 and "draws 1" in capsys.readouterr().err

    # --replace: the rows are those of the new plan only, and the record says so.
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "0.5", "--draws", "1", "--replace"]) == 0
    rows = pd.read_parquet(path)
    assert set(rows.fraction) == {0.0, 0.5} and sorted(rows.epoch.unique()) == [0, 1]
    assert json.loads(pq.read_schema(path).metadata[PLAN_KEY])["fractions"] == [0.0, 0.5]
    after = path.read_bytes()
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "0.5", "--draws", "1", "--replace"]) == 0
    assert path.read_bytes() == after and started[-1] == 0  # replaced once: a second --replace resumes

    # A file from before the record (no settings in it) is taken as it is, as before.
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1"]) == 0 and started[-1] == 0

    # A damaged file: the trial's job fails in one line with the fix; --replace measures it anew.
    path.write_bytes(path.read_bytes()[:200])
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1"]) == 1
    assert (
        f"{path}: damaged (" in capsys.readouterr().err
        and "measure the trial anew with --replace" in (path.parent / "ablate.log").read_text()
    )
    assert cli(ablate_main, [str(sweep), "--fractions", "0", "1", "--replace"]) == 0
    assert set(pd.read_parquet(path).fraction) == {0.0, 1.0}


@pytest.mark.slow
def test_robust_again_with_other_settings_is_one_line_and_replace_measures_them(
    sweep: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _jobs_started(monkeypatch, robust_cli)
    trial = _trial(sweep)
    files = [trial / name for name in (R.ROBUSTNESS, R.ROBUST_DIMENSIONALITY, R.ROBUST_GRADIENTS)]
    assert cli(robust_main, [str(sweep), *ROBUST]) == 0
    assert started == [1] and set(pd.read_parquet(files[0]).query("kind == 'fgsm'").n_images) == {20}
    before = [f.read_bytes() for f in files]
    capsys.readouterr()

    assert cli(robust_main, [str(sweep), *ROBUST]) == 0  # nothing left: no worker, nothing rewritten
    assert started == [1, 0] and [f.read_bytes() for f in files] == before
    assert "measured 0 trials (1 of 1 had nothing left to measure)" in capsys.readouterr().out

    other = [*ROBUST[:1], "30", *ROBUST[2:]]  # 30 images instead of 20
    assert cli(robust_main, [str(sweep), *other]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured with other settings (images 20) than this run asks for (images 30)" in err[0], err
    assert started == [1, 0] and [f.read_bytes() for f in files] == before

    # More corruptions are more pieces under the same settings: added, the rest kept.
    assert cli(robust_main, [str(sweep), *ROBUST, "fog"]) == 0
    rows = pd.read_parquet(files[0])
    assert set(rows[rows.kind == "corruption"].name) == {"contrast", "fog"} and started[-1] == 1

    assert cli(robust_main, [str(sweep), *other, "--replace"]) == 0
    for f in files:  # every file anew, the dimensionality's included
        assert json.loads(pq.read_schema(f).metadata[PLAN_KEY])["images"] == 30, f.name
    for f in files[:2]:  # no row of the old settings is left
        assert set(pd.read_parquet(f).query("kind == 'pgd'").n_images) == {30}, f.name
    assert set(pd.read_parquet(files[0]).query("kind == 'corruption'").name) == {"contrast"}
    layers = pd.read_parquet(files[2])
    assert not layers.duplicated(["epoch", "layer"]).any()  # the gradients once, not old and new


def test_the_collector_says_when_trials_were_measured_with_different_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: mix\nfixed: {epochs: 2}\nsweep: {alpha: [-5, 0], seed: [0, 1]}\n")
    sweep = tmp_path / "results" / "mix"
    specs = load_grid(grid).specs
    for i, spec in enumerate(specs):
        write_trial(sweep, spec, units=False)
        rows = {"epoch": [2, 2], "stage": [1, 1], "k": [0, 8], "fraction": [0.0, 0.5], "selection": ["topk", "topk"],
                "draw": [0, 0], "accuracy": [0.9, 0.5], "loss": [0.3, 1.0], "top5": [None, None]}  # fmt: skip
        table = R.make_table(ablation_job.ABLATION_COLUMNS, rows, spec.row_fields(), R.trial_schema(spec))
        draws = 1 if i == 3 else 3  # one trial ablated with another plan
        pq.write_table(
            with_plan(table, plan_text({"draws": draws, "fractions": [0.0, 0.5]})), sweep / "trials" / spec.trial_id / R.ABLATIONS
        )
    collect(sweep)
    warned = [line for line in capsys.readouterr().err.splitlines() if "measured with other settings" in line]
    assert len(warned) == 1, warned
    assert warned[0].startswith("warning: 1 of 4 trials' ablations.parquet were measured with other settings than the other 3 (e.g. ")
    assert specs[3].trial_id in warned[0] and "draws 1; the others: draws 3)" in warned[0]
    pq.write_table(with_plan(table, plan_text({"draws": 3, "fractions": [0.0, 0.5]})), sweep / "trials" / specs[3].trial_id / R.ABLATIONS)
    collect(sweep)  # alike again: no warning
    assert "measured with other settings" not in capsys.readouterr().err

    # A damaged file is one warning naming it, left out; the collect goes on (it was a traceback).
    damaged = sweep / "trials" / specs[0].trial_id / R.ABLATIONS
    damaged.write_bytes(damaged.read_bytes()[:300])
    collect(sweep)
    warned = [line for line in capsys.readouterr().err.splitlines() if str(damaged) in line]
    assert len(warned) == 1 and "unreadable (" in warned[0], warned
    assert warned[0].endswith(f"left out of the tables; to measure it anew: python -m orchestrator.ablate {sweep} --replace")
    curves = pd.read_parquet(sweep / "summary" / "ablation_curves.parquet")
    assert sorted(curves.n.unique()) == [1, 2]  # alpha -5: seed 1 only; alpha 0: both seeds
