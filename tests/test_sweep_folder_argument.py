"""Every command that takes a sweep folder says the same, in one line, exit 2, when given the
wrong folder: the results root lists its sweeps, a trial folder (or trials/) names its sweep.
Before, only the collector did; status, cancel, ablate, represent and robust said "no trials/
inside" and left the user to work out which folder was meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.synthetic import write_trial
from orchestrator.analysis.ablate import main as ablate_main
from orchestrator.analysis.represent import main as represent_main
from orchestrator.analysis.robust import main as robust_main
from orchestrator.cancel import main as cancel_main
from orchestrator.collect.command import main as collect_main
from orchestrator.grid import load_grid
from orchestrator.status import main as status_main
from trainer.cli import cli

MAINS = {
    "status": status_main,
    "collect": collect_main,
    "cancel": cancel_main,
    "ablate": ablate_main,
    "represent": represent_main,
    "robust": robust_main,
}


@pytest.mark.parametrize("command", sorted(MAINS))
def test_a_results_root_or_a_trial_folder_names_the_sweep_to_pass(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: arg\nfixed: {epochs: 2}\nsweep: {alpha: [0]}\n")
    root = tmp_path / "results"
    (spec,) = load_grid(grid).specs
    write_trial(root / "arg", spec, units=False)
    sweep, trial = root / "arg", root / "arg" / "trials" / spec.trial_id
    (sweep / "summary" / "figures").mkdir(parents=True)  # as a collect leaves them
    before = sorted(p for p in tmp_path.rglob("*"))
    for given, said in [
        (root, f"error: {root}: a results root, not a sweep folder; pass one of: {sweep}"),
        (trial, f"error: {trial}: a trial folder, not a sweep; pass the sweep folder {sweep}"),
        (sweep / "trials", f"error: {sweep / 'trials'}: the trials folder, not a sweep; pass the sweep folder {sweep}"),
        (tmp_path / "nowhere", f"error: {tmp_path / 'nowhere'}: no such folder; pass a sweep folder, e.g. results/<sweep>"),
        (sweep / "summary", f"error: {sweep / 'summary'}: a folder inside the sweep {sweep}, not a sweep; pass the sweep folder {sweep}"),
        (
            sweep / "summary" / "figures",
            f"error: {sweep / 'summary' / 'figures'}: a folder inside the sweep {sweep}, not a sweep; pass the sweep folder {sweep}",
        ),
    ]:
        assert cli(MAINS[command], [str(given)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [said], err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written (cancel's request file included)
    # A folder that merely sits under some folder named trials is not taken for part of a sweep.
    (tmp_path / "trials" / "x").mkdir(parents=True)
    assert cli(MAINS[command], [str(tmp_path / "trials" / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'trials' / 'x'}: not a sweep folder (no trials/ inside); " + (
        "expected <results>/<sweep>/trials/<trial_id>/"
    )
