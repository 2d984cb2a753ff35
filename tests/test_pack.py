"""Packing trials into fused groups (orchestrator.pack) and the sweep's --fuse / profile 'fuse'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.folders import scan
from orchestrator.pack import pack
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.spec import TrialSpec


def specs(n: int, **fields: object) -> list[TrialSpec]:
    return [TrialSpec(seed=i, **fields) for i in range(n)]  # type: ignore[arg-type]


def test_groups_are_even_and_keep_plan_order() -> None:
    s = specs(17)
    groups = pack(s, 16)
    assert [len(g) for g in groups] == [9, 8]  # not 16 + 1
    assert [x for g in groups for x in g] == s
    assert [len(g) for g in pack(specs(32), 16)] == [16, 16]
    assert [len(g) for g in pack(specs(5), 1)] == [1] * 5  # fuse 1: every trial alone


def test_only_trials_differing_in_alpha_onset_seed_share_a_group() -> None:
    a = [TrialSpec(alpha=al, seed=sd, onset_epoch=on) for al in (-1.0, 1.0) for sd in (0, 1) for on in (0, 2)]
    other_lr = [TrialSpec(lr=0.05, seed=i) for i in range(2)]
    other_sweep = [TrialSpec(sweep="labels-do-not-split", alpha=-1.0, seed=9)]
    groups = pack(a + other_lr + other_sweep, 16)
    assert sorted(len(g) for g in groups) == [2, 9]
    assert all(len({t.fuse_key() for t in g}) == 1 for g in groups)
    wide = [TrialSpec(model="resnet18", dataset="cifar10", seed=i) for i in range(3)]  # no fused form
    assert [len(g) for g in pack(wide, 16)] == [1, 1, 1]


def test_min_groups_spreads_over_workers() -> None:
    assert [len(g) for g in pack(specs(15), 16, min_groups=2)] == [8, 7]
    assert [len(g) for g in pack(specs(1), 16, min_groups=4)] == [1]
    assert [len(g) for g in pack(specs(3), 16, min_groups=2)] == [3]  # not 2 + a lone trial
    with pytest.raises(ValueError):
        pack(specs(2), 0)


GRID = "name: packed\nfixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256}\nsweep: {alpha: [-3, 0, 3], seed: [0]}\n"


def test_dry_run_says_how_trials_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    assert cli(sweep_main, ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / "r"), "--dry-run", "--fuse", "2"]) == 0
    out = capsys.readouterr().out
    assert "packing: 2 of 3 trials train fused, in 1 groups of at most 2 (--fuse)" in out  # 2 + 1 alone ...
    assert "; 1 alone on the fused engine beside a throwaway twin (the same numbers as fused):" in out  # ... which trains fused too
    assert cli(sweep_main, ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "packing: 3 of 3 trials train fused, in 1 groups of at most 16 (--fuse)" in out and "twin" not in out
    assert cli(sweep_main, ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / "r"), "--dry-run", "--fuse", "1"]) == 0
    assert "packing: 0 of 3 trials train fused" in (out := capsys.readouterr().out) and "twin" not in out  # --fuse 1: each alone, unfused


@pytest.mark.slow
def test_local_sweep_fuses_by_default_and_fuse_1_runs_each_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    for fuse, results, expected in ((None, "fused", 3), ("1", "alone", False)):
        args = ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / results)] + (["--fuse", fuse] if fuse else [])
        assert cli(sweep_main, args) == 0
        states = scan(tmp_path / results / "packed")
        assert {s.state for s in states.values()} == {"done"} and len(states) == 3
        assert {json.loads((s.folder / "status.json").read_text())["fused"] for s in states.values()} == {expected}
    code = cli(sweep_main, ["--grid", str(tmp_path / "grid.yaml"), "--results", str(tmp_path / "x"), "--fuse", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "error: --fuse is 0; allowed: >= 1 (1: every trial alone)" and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_dry_run_prints_exactly_the_groups_the_run_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run --max-parallel N packs with the worker count, as the run does: the same groups, line for line."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nfixed: {epochs: 1, batch_size: 512}\nsweep: {alpha: [-3, 0, 3], seed: [0, 1]}\n")
    args = ["--grid", str(grid), "--results", str(tmp_path / "r"), "--max-parallel", "2"]
    assert cli(sweep_main, [*args, "--dry-run"]) == 0
    shown = {frozenset(line.split(": ", 1)[1].split()) for line in capsys.readouterr().out.splitlines() if line.startswith("  group ")}
    assert len(shown) == 2  # 6 trials, 2 workers: two fused groups of 3, not one of 6
    assert cli(sweep_main, args) == 0
    ran = set()
    for log in (tmp_path / "r" / "g" / "trials").glob("*/trainer.log"):
        for line in log.read_text().splitlines():
            if ": trainer.group " in line:
                ran.add(frozenset(line.split(": trainer.group ", 1)[1].split()))
    assert ran == shown
