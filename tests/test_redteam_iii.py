"""Red-team regressions, third round (issue 21): the newer surfaces.

sbatch_extra abbreviations, special files and pixel bombs in an ImageNet tree, damaged mid-epoch
checkpoints, signals to launchers and groups, ablate / represent / collect on damaged trials, and
three older weak spots. Each case drives the real component (CPU, real FIFOs and symlinks); the
few that train are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.profiles import RESERVED_OPTIONS, SBATCH_OPTIONS, load_profile, sbatch_option
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.errors import UserError


def write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- 1. sbatch_extra: sbatch's getopt_long takes any unambiguous prefix of a long option ---------


def shortest_prefix(option: str) -> str:
    """The shortest prefix sbatch reads as `option` (the full name when every shorter one is ambiguous)."""
    for n in range(1, len(option) + 1):
        if [name for name in SBATCH_OPTIONS if name.startswith(option[:n])] == [option]:
            return option[:n]
    return option


@pytest.mark.parametrize("option", sorted(RESERVED_OPTIONS))
def test_every_reserved_sbatch_option_is_refused_by_its_shortest_prefix(option: str, tmp_path: Path) -> None:
    prefix = shortest_prefix(option)
    assert sbatch_option(prefix) == option
    profile = write(tmp_path, f"backend: slurm\nsbatch_extra: ['--nice=5', '--{prefix}=1']\n", "p.yaml")
    with pytest.raises(UserError, match=f"entry 2 sets --{prefix}.*--{option}[;,]|entry 2 sets --{option};") as err:
        load_profile(profile)
    assert f"--{option}" in str(err.value) and "\n" not in str(err.value)


def test_the_red_teams_abbreviations_are_one_line_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, "name: g\nfixed: {model: resnet20, dataset: digits, epochs: 1}\nsweep: {seed: [0]}\n", "grid.yaml")
    cases = {"--hol": "--hold", "--dep=afterok:1": "--dependency", "--arr=0-9999": "--array", "--wra=hostname": "--wrap",
             "--test": "--test-only", "--no-req": "--no-requeue", "--tasks=2": "--tasks-per-node"}  # fmt: skip
    for line, full in cases.items():
        profile = write(tmp_path, f"backend: slurm\nsbatch_extra: ['{line}']\n", "p.yaml")
        results = tmp_path / "results"
        code = cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results), "--dry-run"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {profile}: ") and f"which sbatch reads as {full};" in err[0], err[0]
        assert not results.exists()


def test_ambiguous_and_foreign_sbatch_options(tmp_path: Path) -> None:
    profile = write(tmp_path, "backend: slurm\nsbatch_extra: ['--tim=5']\n", "p.yaml")
    with pytest.raises(UserError, match=r"sets --tim, which sbatch finds ambiguous \(--time, --time-min\); allowed: the full option"):
        load_profile(profile)
    # Exact names and a newer sbatch's options pass (sbatch judges the latter); --wait would block the submission.
    assert load_profile(
        write(tmp_path, "backend: slurm\nsbatch_extra: ['--nice=5', '--time-min=10', '--tres-per-task=gres/gpu:1']\n", "q.yaml")
    )
    with pytest.raises(UserError, match="sets --wait; not allowed there: sbatch would block"):
        load_profile(write(tmp_path, "backend: slurm\nsbatch_extra: ['--wait']\n", "r.yaml"))
