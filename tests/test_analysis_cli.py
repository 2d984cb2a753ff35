"""The after-training commands (orchestrator.ablate, .represent, .robust) refuse a mistaken flag in
one line naming it, its value and what is allowed, exit 2, before any job starts or anything is
written; a job that would run for days (10^8 draws, 10^6 PGD steps) is such a mistake. The jobs
run on this machine, so a device it lacks (the flag's, or without it the trials' own) is refused
the same way rather than failing once per trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.synthetic import write_trial
from orchestrator.analysis.ablate import main as ablate_main
from orchestrator.analysis.represent import main as represent_main
from orchestrator.analysis.robust import main as robust_main
from orchestrator.grid import load_grid
from trainer.checkpoint import KEPT
from trainer.cli import cli

MAINS = {"ablate": ablate_main, "represent": represent_main, "robust": robust_main}


def _sweep(root: Path, device: str = "cpu") -> Path:
    """Two done trials (synthetic files, no training), each with a kept checkpoint (an empty stand-in: never loaded here)."""
    grid = root / "grid.yaml"
    grid.write_text(f"name: an\nfixed: {{epochs: 2, device: '{device}'}}\nsweep: {{alpha: [-5, 0]}}\n")
    specs = load_grid(grid).specs
    sweep = root / "results" / "an"
    for spec in specs:
        write_trial(sweep, spec, units=False)
        (sweep / "trials" / spec.trial_id / KEPT).mkdir()
        (sweep / "trials" / spec.trial_id / KEPT / "epoch_002.pt").touch()
    return sweep


def _files(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.rglob("*"))


def _one_line(capsys: pytest.CaptureFixture[str], command: str, argv: list[str], sweep: Path) -> str:
    before = _files(sweep)
    assert cli(MAINS[command], [str(sweep), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert _files(sweep) == before  # nothing written, no job started
    return err[0]


@pytest.mark.parametrize(
    ("command", "argv", "said"),
    [
        ("ablate", ["--draws", "100000000"], "--draws is 100000000; allowed: 1 to 1000"),
        ("ablate", ["--draws", "0"], "--draws is 0; allowed: 1 to 1000"),
        ("ablate", ["--fractions", "0.5", "1.5"], "--fractions has 1.5; allowed: fractions of a stage's width in [0, 1]"),
        ("ablate", ["--fractions", "nan"], "--fractions has nan; allowed"),
        ("ablate", ["--counts", "4", "-1"], "--counts has -1; allowed: channel counts >= 0"),
        ("ablate", ["--count-steps", "0", "2"], "--count-steps is 0 2; allowed: A B, both >= 1"),
        ("ablate", ["--max-parallel", "100000"], "--max-parallel is 100000; allowed: 1 to 1024"),
        ("represent", ["--device", "tpu"], "--device is 'tpu'; allowed: auto, cpu, cuda, cuda:N"),
        ("represent", ["--device", "cuda:99"], "--device is 'cuda:99' but this machine has"),
        ("represent", ["--max-parallel", "0"], "--max-parallel is 0; allowed: 1 to 1024"),
        ("robust", ["--device", "cuda:99"], "--device is 'cuda:99' but this machine has"),
        ("robust", ["--device", "gpu"], "--device is 'gpu'; allowed: auto, cpu, cuda, cuda:N"),
        ("robust", ["--pgd-steps", "1000000"], "--pgd-steps is 1000000; allowed: 1 to 1,000"),
        ("robust", ["--images", "0"], "--images is 0; allowed: 1 to 1,000,000"),
        ("robust", ["--gradient-units", "-3"], "--gradient-units is -3; allowed: 1 to 100,000"),
        ("robust", ["--gradient-images", "0"], "--gradient-images is 0; allowed: 1 to 1,000,000"),
    ],
)
def test_a_mistaken_flag_is_one_line_naming_it(
    command: str, argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _one_line(capsys, command, argv, _sweep(tmp_path))
    assert line.startswith(f"error: {said}"), line


@pytest.mark.parametrize("command", sorted(MAINS))
def test_trials_on_a_device_this_machine_lacks_are_one_line_that_says_what_to_pass(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A sweep trained on a GPU cluster, analysed where there is no such GPU: without --device every job would fail.
    line = _one_line(capsys, command, [], _sweep(tmp_path, device="cuda:99"))
    assert line.startswith("error: the trials' field 'device' is 'cuda:99' but this machine has"), line
    assert line.endswith("pass --device cpu (or auto)"), line
