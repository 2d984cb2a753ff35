"""Strict grids and cluster profiles: every user mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.grid import load_grid
from orchestrator.profiles import RayProfile, SlurmProfile, load_profile
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.errors import UserError

GOOD = """
name: g
fixed: {model: resnet20, dataset: digits, epochs: 1}
sweep:
  alpha: [-1, 0, 1]
  seed: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_is_the_cartesian_product_in_file_order(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, GOOD))
    assert grid.name == "g" and grid.axes == ("alpha", "seed")
    assert [(s.alpha, s.seed) for s in grid.specs] == [(-1, 0), (-1, 1), (0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(s.sweep == "g" and s.epochs == 1 for s in grid.specs)
    assert len({s.trial_id for s in grid.specs}) == 6


def test_scientific_notation_is_a_number(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, "name: g\nfixed: {weight_decay: 1e-5, lr: 5E-2}\n"))
    assert grid.specs[0].weight_decay == pytest.approx(1e-5)
    assert grid.specs[0].lr == pytest.approx(0.05)


def test_alpha_zero_collapses_onsets(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, "name: g\nsweep: {alpha: [-20, 0], onset_epoch: [0, 5], seed: [0, 1]}\n"))
    assert grid.n_expanded == 8
    assert len(grid.specs) == 6  # alpha 0 x onset {0, 5} is one trial per seed
    assert sorted((s.alpha, s.onset_epoch) for s in grid.specs if s.seed == 0) == [(-20, 0), (-20, 5), (0, 0)]


def test_cosine_trials_that_differ_only_in_step_settings_are_one(tmp_path: Path) -> None:
    """lr_milestones and lr_gamma shape only the step schedule; cosine trials differing in them
    trained identically under several trial ids (seen: 4 identical runs)."""
    text = "name: g\nfixed: {epochs: 4}\nsweep: {lr_schedule: [step, cosine], lr_gamma: [0.1, 0.5], lr_milestones: [[1], [2]]}\n"
    grid = load_grid(write(tmp_path, text))
    assert grid.n_expanded == 8
    assert len(grid.specs) == 5  # 4 step trials, 1 cosine
    cosine = [s for s in grid.specs if s.lr_schedule == "cosine"]
    assert [(s.lr_gamma, s.lr_milestones) for s in cosine] == [(0.1, None)]
    # An offset at the last epoch is null's "to the end" (the two trained the same under two trial ids).
    grid = load_grid(write(tmp_path, "name: g\nfixed: {epochs: 8, alpha: -1}\nsweep: {offset_epoch: [null, 8, 6]}\n"))
    assert grid.n_expanded == 3 and sorted(str(s.offset_epoch) for s in grid.specs) == ["6", "None"]


def test_overrides_do_not_change_trial_ids(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    plain = [s.trial_id for s in load_grid(path).specs]
    moved = load_grid(path, overrides={"data_root": "/elsewhere", "device": "cpu", "num_workers": 4}).specs
    assert [s.trial_id for s in moved] == plain
    assert all(s.data_root == "/elsewhere" for s in moved)


BAD_GRIDS = {
    "duplicate key": ("name: g\nsweep:\n  alpha: [1]\n  alpha: [2]\n", "key 'alpha' appears twice"),
    "unknown top key": ("name: g\nsweeps: {alpha: [1]}\n", "unknown top-level key 'sweeps'; allowed: name"),
    "a profile as the grid": ("backend: local\nmax_parallel: 2\n", "fixed, sweep (this looks like a cluster profile"),
    "unknown field": ("name: g\nfixed: {alhpa: 1}\n", "unknown field 'fixed.alhpa'; allowed: model"),
    "wrong type": ("name: g\nfixed: {epochs: ten}\n", "field 'epochs' must be int"),
    "quoted number": ("name: g\nfixed: {lr: '1e-5'}\n", "field 'lr' must be float"),
    "bool as number": ("name: g\nsweep: {alpha: [yes]}\n", "sweep.alpha[0]: field 'alpha' must be float"),
    "empty axis": ("name: g\nsweep: {alpha: []}\n", "sweep axis 'alpha' must be a non-empty list"),
    "scalar axis": ("name: g\nsweep: {alpha: 3}\n", "sweep axis 'alpha' must be a non-empty list"),
    "unknown model": ("name: g\nfixed: {model: vgg19}\n", "allowed: resnet20, resnet18, resnet50"),
    "unknown dataset": ("name: g\nfixed: {dataset: mnist}\n", "allowed: digits, cifar10, tinyimagenet, imagenet"),
    "both fixed and swept": ("name: g\nfixed: {seed: 1}\nsweep: {seed: [1, 2]}\n", "both in 'fixed' and in 'sweep'"),
    "path traversal": ("name: ../../etc\n", "key 'name' is '../../etc'"),
    "shell in name": ("name: 'x; rm -rf /'\n", "key 'name'"),
    "malformed": ("name: g\nfixed: {model: [resnet20\n", "malformed YAML at line"),
    "not a mapping": ("- a\n- b\n", "a grid must be a mapping"),
    "offset before onset": ("name: g\nfixed: {alpha: -1, onset_epoch: 5, offset_epoch: 2}\n", "offset_epoch"),
    "sweep key as field": ("name: g\nfixed: {sweep: other}\n", "unknown field 'fixed.sweep'"),
    # PyYAML's loader raised TypeError (a traceback) on a key no dict can hold
    "list as a key": ("name: g\nfixed:\n  ? [a, b]\n  : 1\n", "a key at line 3 is a list; a key must be a name"),
    "mapping as a key": ("? {a: 1}\n: 1\n", "a key at line 1 is a mapping; a key must be a name"),
    "key written twice beside a merge": (
        "name: g\nfixed:\n  <<: {epochs: 1}\n  epochs: 2\n  epochs: 3\n",
        "key 'epochs' appears twice (lines 4 and 5)",
    ),
    # YAML 1.1 read these as 60 epochs (sexagesimal) and an int; YAML 1.2 and the user: text
    "sexagesimal": ("name: g\nfixed: {epochs: '1:00'}\n".replace("'", ""), "field 'epochs' must be int, got \"1:00\""),
    # PyYAML's reader raised outside the parse (a traceback): a pasted colour code, a NUL
    "control character": ("name: g\nfixed: {epochs: 1}\n# \x1b[31m\n", "line 3, column 3: control character 0x1b"),
    # labels and resources are not in the trial id: every value but the first collapsed into one trial
    "label swept": ("name: g\nsweep: {ablation_draws: [1, 10]}\n", "axis 'ablation_draws' has 2 values, but 'ablation_draws' is a label"),
    "resource swept": ("name: g\nsweep: {threads: [1, 2]}\n", "'threads' is a resource (how a trial runs)"),
    # 1 step per epoch: no mid-epoch point, so the evaluations asked for never ran
    "mid-epoch eval of a 1-step epoch": (
        "name: g\nfixed: {epochs: 2, batch_size: 1000, eval_every_steps: 1, eval_until_epoch: 1}\n",
        "field 'eval_every_steps' is 1; allowed: 0 (off): digits at batch_size 1000 has 1 step(s) per epoch",
    ),
    "binary": ("name: g\nfixed: {epochs: 0b11}\n", "field 'epochs' must be int, got \"0b11\""),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_is_one_line_exit_2_nothing_written(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD_GRIDS[case]
    path = write(tmp_path, text)
    results = tmp_path / "results"
    code = cli(sweep_main, ["--grid", str(path), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}"), lines[0]
    assert expected in lines[0]
    assert not results.exists()


def test_yaml_numbers_are_read_as_written_and_merge_keys_work(tmp_path: Path) -> None:
    """YAML 1.2 numbers: `010` is 10 epochs, not YAML 1.1's octal 8; `1e-3` is a float. A merge key
    (`<<: *defaults`) is valid YAML that PyYAML's SafeLoader reads; a key written out overrides it."""
    text = """
    name: g
    fixed:
      <<: {model: resnet20, dataset: digits, epochs: 3, lr: 1e-3}
      epochs: 010
    sweep:
      seed: [007, 0x10, 0o10, 1_000]
    """
    grid = write(tmp_path, text)
    specs = load_grid(grid).specs
    assert {(s.epochs, s.lr, s.model) for s in specs} == {(10, 1e-3, "resnet20")}
    assert sorted(s.seed for s in specs) == [7, 8, 16, 1000]


def test_missing_grid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(sweep_main, ["--grid", str(tmp_path / "nope.yaml")]) == 2
    assert "no such grid file" in capsys.readouterr().err


# ---- cluster profiles ----------------------------------------------------------------------------
def test_profiles_shipped_in_the_repo_all_load() -> None:
    root = Path(__file__).resolve().parent.parent / "cluster_configs"
    profiles = [p for p in root.rglob("*.yaml") if p.name != "cluster.yaml"]  # cluster.yaml: Ray's launcher format
    assert profiles
    for p in profiles:
        load_profile(p)


def test_profile_types(tmp_path: Path) -> None:
    ray = load_profile(write(tmp_path, "backend: ray\ngpus_per_trial: 0.25\nnum_cpus: 2\n", "p.yaml"))
    assert isinstance(ray, RayProfile) and ray.gpus_per_trial == 0.25
    slurm = load_profile(write(tmp_path, "backend: slurm\nsetup: ['module load cuda']\ndata_root: /d\n", "s.yaml"))
    assert isinstance(slurm, SlurmProfile) and slurm.setup == ("module load cuda",)
    assert slurm.trial_overrides() == {"data_root": "/d"}


BAD_PROFILES = {
    "unknown key": ("backend: slurm\npartiton: gpu\n", "unknown key 'partiton'; allowed: backend, device"),
    "bad backend": ("backend: kubernetes\n", "key 'backend' is 'kubernetes'; allowed: local, ray, slurm"),
    "backend a list": ("backend: [local]\n", "key 'backend' is ['local']; allowed: local, ray, slurm"),  # was a traceback
    "backend a mapping": ("backend: {a: 1}\n", "key 'backend' is {'a': 1}; allowed: local, ray, slurm"),
    "no backend": ("max_parallel: 2\n", "key 'backend' is missing; allowed: local, ray, slurm"),
    "a grid as the profile": ("name: g\nsweep: {alpha: [0]}\n", "'backend' is missing; allowed: local, ray, slurm (this looks like a grid"),
    "wrong type": ("backend: slurm\ngpus_per_trial: one\n", "key 'gpus_per_trial' must be int"),
    "negative": ("backend: ray\ncpus_per_trial: -1\n", "key 'cpus_per_trial' is -1.0; allowed: >= 0.0001 (Ray's smallest share"),
    # below Ray's resource precision (0.0001): no share it can hold
    "ray cpus below a share": ("backend: ray\ncpus_per_trial: 1e-9\n", "key 'cpus_per_trial' is 1e-09; allowed: >= 0.0001"),
    "ray gpus below a share": ("backend: ray\ngpus_per_trial: 0.00001\n", "key 'gpus_per_trial' is 1e-05; allowed: 0, or 0.0001 to 1"),
    "multi-line setup": ('backend: slurm\nsetup: ["echo a\\necho b"]\n', "key 'setup'"),
    "injection": ("backend: slurm\npartition: 'gpu --wrap=evil'\n", "key 'partition'"),
    "ray key in slurm": ("backend: slurm\naddress: auto\n", "unknown key 'address'"),
    "fuse zero": ("backend: local\nfuse: 0\n", "key 'fuse' is 0; allowed: >= 1"),
    # ray.init would raise (a traceback, after the trial folders were written)
    "ray address not one": ("backend: ray\naddress: 'not a url'\n", "key 'address' is 'not a url'; allowed: auto, host:port"),
    "ray address no port": ("backend: ray\naddress: head-node\n", "key 'address' is 'head-node'; allowed: auto"),
    "ray address port 0": ("backend: ray\naddress: 'head:0'\n", "key 'address' is 'head:0'; allowed"),
    "ray address http": ("backend: ray\naddress: 'http://head:8265'\n", "or ray://host:port (Ray Client, port 10001)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_profile_is_one_line_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD_PROFILES[case]
    profile = write(tmp_path, text, "profile.yaml")
    grid = write(tmp_path, GOOD)
    results = tmp_path / "results"
    code = cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert str(profile) in lines[0] and expected in lines[0], lines[0]
    assert not results.exists()


def test_backend_flag_must_agree_with_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = write(tmp_path, "backend: ray\n", "profile.yaml")
    code = cli(sweep_main, ["--grid", str(write(tmp_path, GOOD)), "--cluster", str(profile), "--backend", "slurm"])
    assert code == 2 and "key 'backend' is 'ray' but --backend is 'slurm'" in capsys.readouterr().err


def test_user_error_is_a_value_error() -> None:
    # Commands catch UserError to print one line; bugs (anything else) keep their traceback.
    assert issubclass(UserError, ValueError)
