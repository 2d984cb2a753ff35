"""Red-team regressions: every way a new user or an adversary broke the tool, kept as a test.

Grouped as the issue found them: launchers that never exit, nonsense accepted as science,
mistakes found only after writing, names, YAML alias bombs, corrupt data, trial folders that
lie, the collector killed at its dangerous moments, orphaned workers, and the small ones. Each
case drives the real command or the real component (CPU, seconds); the few that train or run
many real collects are marked slow. The disk-full cases mount a small tmpfs and need root; they
skip, saying so, otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.synthetic import write_trial
from orchestrator.backends.local import check_local_devices
from orchestrator.collect import cache
from orchestrator.collect import core as C
from orchestrator.folders import scan, spec_problem
from orchestrator.grid import load_grid
from orchestrator.preflight import ROWS_BYTES
from orchestrator.runner import Runner, make_slots
from orchestrator.status import main as status_main
from orchestrator.strict import MAX_NODES, load_yaml
from orchestrator.sweep import main as sweep_main
from orchestrator.sweep import parse_args
from trainer import results as R
from trainer.cli import cli
from trainer.data import DataMissing, epoch_generator, load_dataset
from trainer.errors import UserError
from trainer.registry import CHECKPOINT_BYTES
from trainer.spec import MAX_EPOCHS, MAX_SEED, SpecError, TrialSpec, quote

from helpers import make_cifar, make_tinyimagenet, wait_until

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop("SWEEP_FAULT", None)


def write(folder: Path, text: str, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], results: Path) -> str:
    """Run the sweep command: exit 2, one line on stderr, nothing written; returns the line."""
    code = cli(sweep_main, [*argv, "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert len(err[0]) < 700, err[0]
    assert not results.exists(), sorted(results.rglob("*"))
    return err[0]


def synthetic_sweep(root: Path, text: str) -> tuple[Path, Path, list[TrialSpec]]:
    """A grid file and its sweep folder holding every trial done (synthetic files: no training)."""
    grid = write(root, text)
    specs = list(load_grid(grid).specs)
    sweep = root / "results" / specs[0].sweep
    for spec in specs:
        write_trial(sweep, spec, units=False)
    return grid, sweep, specs


SMALL = "name: rt\nfixed: {epochs: 2, batch_size: 256}\nsweep: {alpha: [-5, 0], seed: [0, 1]}\n"


# ---- nonsense accepted, wrong science recorded as right ------------------------------------------
BAD_FIELDS = {
    "onset after the last epoch": ("{epochs: 3, alpha: -30, onset_epoch: 5}", "field 'onset_epoch' is 5; allowed: 0 to 2"),
    "batch larger than the training set": ("{batch_size: 5000}", "field 'batch_size' is 5000; allowed: 2 to 1438"),
    "negative milestone": ("{epochs: 10, lr_milestones: [-1, 5]}", "allowed: strictly increasing epochs between 1 and 9"),
    "milestone at the end": ("{epochs: 10, lr_milestones: [5, 10]}", "'lr_milestones' is [5, 10]; allowed: strictly increasing"),
    "milestone at 0": ("{epochs: 10, lr_milestones: [0]}", "'lr_milestones' is [0]"),
    "lr_gamma -1": ("{lr_gamma: -1}", "field 'lr_gamma' is -1.0; allowed: 0 < lr_gamma <= 1"),
    "lr_gamma above 1": ("{lr_gamma: 2}", "field 'lr_gamma' is 2.0; allowed: 0 < lr_gamma <= 1"),
    "lr .inf": ("{lr: .inf}", "field 'lr' is inf; allowed: a finite number"),
    "momentum .nan": ("{momentum: .nan}", "field 'momentum' is nan; allowed: a finite number"),
    "momentum 1": ("{momentum: 1}", "field 'momentum' is 1.0; allowed: 0 <= momentum < 1"),
    "weight_decay .inf": ("{weight_decay: .inf}", "field 'weight_decay' is inf; allowed: a finite number"),
    "alpha -.inf": ("{alpha: -.inf}", "field 'alpha' is -inf; allowed: a finite number"),
    "seed 2**70": ("{seed: 1180591620717411303424}", "field 'seed' is 1180591620717411303424; allowed: 0 to 4294967295"),
    "epochs 1e9 (int)": ("{epochs: 1000000000}", "field 'epochs' is 1000000000; allowed: 1 to 10000"),
    "epochs 1e9 (float)": ("{epochs: 1e9}", "field 'epochs' must be int, got 1000000000.0"),
    "keep_checkpoints past the end": ("{epochs: 3, keep_checkpoints: [0, 4]}", "'keep_checkpoints' is [0, 4]; allowed: epochs between 0"),
    "keep_checkpoints negative": ("{epochs: 3, keep_checkpoints: [-1]}", "'keep_checkpoints' is [-1]; allowed: epochs between 0 and 3"),
    "eval_until_epoch past the end": ("{epochs: 3, eval_every_steps: 2, eval_until_epoch: 4}", "'eval_until_epoch' is 4; allowed: 0 to 3"),
    "eval_every_steps beyond an epoch": ("{eval_every_steps: 50, eval_until_epoch: 1}", "'eval_every_steps' is 50; allowed: 1 to 10"),
    "eval_every_steps without eval_until_epoch": ("{eval_every_steps: 2}", "allowed: both 0, or both set"),
    "ablation_fractions empty": ("{ablation_fractions: []}", "'ablation_fractions' is []; allowed: null, or a non-empty list"),
    "ablation fraction above 1": ("{ablation_fractions: [0.5, 1.5]}", "fractions in [0, 1]"),
    "offset after the end": ("{epochs: 3, alpha: -1, offset_epoch: 4}", "'offset_epoch' is 4; allowed: null or 1 to 3"),
    "int beyond any float": ("{alpha: " + "9" * 400 + "}", "field 'alpha' must be float, got 999"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_nonsense_field_is_one_line_before_anything_is_written(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed, expected = BAD_FIELDS[case]
    grid = write(tmp_path, f"name: g\nfixed: {fixed}\n")
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert line.startswith(f"error: {grid}") and expected in line, line


def test_fields_at_their_bounds_are_accepted_and_the_rngs_take_them() -> None:
    edge = TrialSpec(
        epochs=MAX_EPOCHS, seed=MAX_SEED, batch_size=1438, onset_epoch=MAX_EPOCHS - 1, alpha=-1.0, offset_epoch=MAX_EPOCHS,
        lr_milestones=(1, MAX_EPOCHS - 1), lr_gamma=1.0, momentum=0.0, keep_checkpoints=(0, MAX_EPOCHS),
        eval_every_steps=0, ablation_fractions=(0.0, 1.0),
    )  # fmt: skip
    assert len(edge.trial_id) == 12
    # The seed reaches torch's global RNG, each epoch's generator (seed * 1_000_003 + epoch) and numpy.
    torch.manual_seed(edge.seed)
    epoch_generator(edge.seed, edge.epochs).manual_seed(edge.seed * 1_000_003 + edge.epochs)
    np.random.default_rng([edge.seed, edge.epochs, 3, 64, 2])
    np.random.RandomState(edge.seed)
    with pytest.raises(SpecError, match="allowed: 0 to 4294967295"):
        TrialSpec(seed=MAX_SEED + 1)


@pytest.mark.parametrize("grid", sorted(p.name for p in (REPO / "grids").glob("*.yaml")))
def test_every_shipped_grid_stays_valid(grid: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(sweep_main, ["--grid", str(REPO / "grids" / grid), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert "GPU-hours to run" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


# ---- names, long values, YAML bombs, odd files and flags ---------------------------------------
def test_name_with_a_trailing_newline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, 'name: "x\\n"\n')
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert "key 'name' is 'x\\n'; allowed: 1-100 letters" in line


def test_numeric_name_says_it_must_be_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, "name: 2024\n")
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert "key 'name' is a number to YAML (read as 2024); a name must be text: put it in quotes" in line
    # The hint never offers a value the user did not write (`0123` is read as 123, `1e3` as 1000.0).
    for text in ("0123", "1e3"):
        line = one_line_error(capsys, ["--grid", str(write(tmp_path, f"name: {text}\n"))], tmp_path / "results")
        assert 'name: "123"' not in line and 'name: "1000.0"' not in line and "exactly as you meant it" in line


def test_messages_quote_at_most_a_short_prefix_of_a_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = "x" * 100_000
    for text in (f"name: {huge}\n", f"name: g\nfixed: {{model: {huge}}}\n", f"name: g\nsweep: {{alpha: {huge}}}\n"):
        grid = write(tmp_path, text)
        line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
        assert len(line) < 400 and "xxxx" in line, line
    assert len(quote(list(range(10**6)))) <= 80 and len(quote(10**5000)) <= 80


def alias_bomb(levels: int, width: int = 9) -> str:
    """A grid whose name is a list of `levels` nested aliases: width**levels values once expanded."""
    parts = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return f"name: [{', '.join(parts)}]\n"


def test_yaml_alias_bomb_is_refused_cheaply(tmp_path: Path) -> None:
    """458 bytes that expand to 9**9 values: refused before expansion, in little time and memory."""
    path = write(tmp_path, alias_bomb(9))
    assert len(path.read_bytes()) < 600
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(UserError, match=f"expands to more than {MAX_NODES} values"):
        load_yaml(path, "grid")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 50e6


@pytest.mark.parametrize("levels", [5, 8])
def test_smaller_alias_bombs_give_short_lines(levels: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 9**5 values load (under the bound) and fail as a grid name; 9**8 are refused by the loader.
    # Either way one short line, never a message that quotes the expansion (351 MB before).
    grid = write(tmp_path, alias_bomb(levels))
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert len(line) < 400, line


@pytest.mark.parametrize(
    "text,expected",
    [("name: g\nsweep: &a {alpha: *a}\n", "recursive alias"), ("name: g\nx: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply")],
)
@pytest.mark.slow
def test_recursive_and_deep_yaml(text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["--grid", str(write(tmp_path, text))], tmp_path / "results")
    assert expected in line


def test_grid_that_is_a_folder_or_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "grids"
    folder.mkdir()
    assert "a folder, not a grid file" in one_line_error(capsys, ["--grid", str(folder)], tmp_path / "results")
    fifo = tmp_path / "grid.fifo"
    os.mkfifo(fifo)  # reading it would block forever
    assert "not a regular file" in one_line_error(capsys, ["--grid", str(fifo)], tmp_path / "results")


@pytest.mark.parametrize("flag", [["--fuse", "abc"], ["--max-parallel", "x"], ["--bogus"]])
def test_bad_flags_are_one_line(flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, SMALL)
    line = one_line_error(capsys, ["--grid", str(grid), *flag], tmp_path / "results")
    assert line.startswith("error: python -m orchestrator.sweep: ") and "see --help" in line


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--fuse", "100000"], "error: --fuse is 100000; allowed: >= 1 (1: every trial alone) and <= 4096"),  # was named a profile key
        # argparse kept the last of two without a word: two grids ran one, two profiles the last one's engine
        (["--fuse", "2", "--fuse=3"], "--fuse given twice ('2' and '3'); give it once"),
        (["--cluster", "a.yaml", "--cluster", "b.yaml"], "--cluster given twice ('a.yaml' and 'b.yaml'); give it once"),
        (["--grid", "other.yaml"], "--grid given twice ("),
    ],
)
def test_flags_out_of_range_or_given_twice_are_one_line(
    flags: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write(tmp_path, SMALL)
    assert said in one_line_error(capsys, ["--grid", str(grid), *flags], tmp_path / "results")


def test_a_tilde_after_the_equals_sign_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell leaves `--results=~/runs` as it is: the sweep went to a folder named "~" in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = parse_args(["--grid=~/g.yaml", "--results=~/runs", "--cluster=~/p.yaml"])
    assert (args.grid, args.results, args.cluster) == (
        tmp_path / "home" / "g.yaml",
        tmp_path / "home" / "runs",
        tmp_path / "home" / "p.yaml",
    )


def test_a_folder_in_the_way_of_the_launchers_files_is_one_line_before_any_trial_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder named grid.yaml where the launcher keeps the grid's copy, a file named trials: the
    line said "free space there", and the trials' folders were written before grid.yaml failed."""
    grid = write(tmp_path, SMALL)
    sweep = tmp_path / "results" / "rt"
    (sweep / "grid.yaml").mkdir(parents=True)
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {sweep / 'grid.yaml'} (Is a directory); something else is in the way there "
                   f"({sweep / 'grid.yaml'} or a folder above it): move it away, or choose another folder with --results"]  # fmt: skip
    assert not (sweep / "trials").exists()
    (sweep / "grid.yaml").rmdir()
    (sweep / "trials").write_text("")
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 2
    assert "(Not a directory); something else is in the way there" in capsys.readouterr().err


def test_results_that_is_a_sweep_folder_is_refused_not_nested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--results results/digits` for `--results results` trained every trial again one level down
    (results/digits/digits); status and collect already refused that mix-up, the launcher did not."""
    root = tmp_path / "results"
    sweep = root / "other"
    (sweep / "trials" / "0123456789ab").mkdir(parents=True)
    grid = write(tmp_path, SMALL)
    for given in (sweep, sweep / "trials", sweep / "trials" / "0123456789ab"):
        code = cli(sweep_main, ["--grid", str(grid), "--results", str(given)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert (
            err[0].startswith(f"error: --results {given}: ")
            and f"allowed: the folder that holds the sweeps, e.g. --results {root}" in err[0]
        )
        assert sorted(p.name for p in sweep.rglob("*")) == ["0123456789ab", "trials"]  # nothing written
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(root), "--dry-run"]) == 0  # the root itself is fine


# ---- mistakes found only after writing: the device --------------------------------------------------
def test_cuda_device_missing_here_is_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = "cuda" if count == 0 else f"cuda:{count}"  # a device this machine does not have, whatever it has
    grid = write(tmp_path, f"name: g\nfixed: {{device: '{device}', epochs: 1}}\n")
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert f"field 'device' is '{device}' but this machine has" in line


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("device", "'tpu'", "allowed: auto, cpu, cuda, cuda:N"),
        ("cache_dir", "''", "allowed: null or a path"),
        ("data_root", "''", "allowed: null or a path"),
    ],
)
def test_a_profile_value_no_trial_takes_names_the_profile_not_the_grid(
    key: str, value: str, allowed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The profile's resource fields override every trial's: a bad one is the profile's mistake.
    grid = write(tmp_path, SMALL)
    profile = write(tmp_path, f"backend: local\n{key}: {value}\n", "profile.yaml")
    line = one_line_error(capsys, ["--grid", str(grid), "--cluster", str(profile)], tmp_path / "results")
    assert line.startswith(f"error: {profile}: key '{key}' is "), line
    assert allowed in line and str(grid) not in line, line


def test_cpu_and_auto_devices_need_no_torch_in_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would raise now
    check_local_devices((TrialSpec(device="cpu"), TrialSpec(device="auto")), "grid.yaml")


# ---- corrupt data ------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_corrupt_cifar_batch_fails_the_launch_naming_the_file(damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cifar(tmp_path / "data")
    bad = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    content = bad.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": content[: len(content) // 2], "garbage": b"not a pickle at all"}[damage])
    grid = write(tmp_path, f"name: c\nfixed: {{dataset: cifar10, epochs: 1, data_root: '{tmp_path / 'data'}'}}\n")
    line = one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")
    assert f"{bad} is not a CIFAR-10 batch file" in line
    with pytest.raises(DataMissing, match="data_batch_3 is not a CIFAR-10 batch file"):  # and inside a trial, too
        load_dataset("cifar10", tmp_path / "data", torch.device("cpu"))


@pytest.mark.parametrize(
    "damage", ["no images", "empty image", "garbage image", "bad annotation", "garbage later image", "garbage val image", "201 classes"]
)
def test_broken_tinyimagenet_fails_the_launch(damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tinyimagenet(tmp_path / "data")
    folder = tmp_path / "data" / "tiny-imagenet-200"
    first_class = sorted((folder / "train").iterdir())[0]
    if damage == "no images":
        shutil.rmtree(first_class / "images")
        (first_class / "images").mkdir()
        expected = f"{first_class / 'images'} holds no .JPEG image"
    elif damage == "empty image":
        sorted((first_class / "images").iterdir())[-1].write_bytes(b"")
        expected = "is empty (0 bytes)"
    elif damage == "garbage image":
        sorted((first_class / "images").iterdir())[0].write_bytes(b"not a JPEG")
        expected = "is not a readable image"
    elif damage == "bad annotation":
        with open(folder / "val" / "val_annotations.txt", "a") as f:
            f.write("val_9.JPEG\tn00000000\n")
        expected = "'n00000000' is not '<image><TAB><wnid>' of a known class"
    elif damage in ("garbage later image", "garbage val image"):  # only the first image of each side was decoded
        bad = sorted((sorted((folder / "train").iterdir())[-1] / "images").iterdir())[-1]
        bad = folder / "val" / "images" / "val_3.JPEG" if damage == "garbage val image" else bad
        bad.write_bytes(b"<html>404 Not Found</html>")  # a download that saved an error page
        expected = f"{bad} is not a readable image"
    else:  # more classes than the network's 200 outputs: every trial crashed in its loss ("Target 200 is out of bounds")
        (folder / "wnids.txt").write_text("".join(f"n{i:08d}\n" for i in range(201)))
        expected = f"{folder / 'wnids.txt'} lists 201 classes, more than the network's 200 outputs"
    grid = write(tmp_path, f"name: t\nfixed: {{model: resnet18, dataset: tinyimagenet, epochs: 1, data_root: '{tmp_path / 'data'}'}}\n")
    assert expected in one_line_error(capsys, ["--grid", str(grid)], tmp_path / "results")


# ---- trial folders that lie ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("field,value", [("error", 5), ("epoch", "abc"), ("retryable", "no"), ("epoch", True), ("versions", [])])
def test_a_status_field_of_another_type_is_unreadable_not_a_traceback(
    field: str, value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid JSON, hand-edited: "error": 5 crashed orchestrator.status (TypeError); "retryable": "no"
    # counted as retryable; "epoch": "abc" was shown as abc/3 and kept through a relaunch.
    grid, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    victim = sweep / "trials" / specs[1].trial_id
    status = json.loads((victim / R.STATUS).read_text())
    (victim / R.STATUS).write_text(json.dumps({**status, "state": "failed", field: value}))
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable" in out and f"{field} {str(value)!r} is not " in out, out
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 0  # rebuilt from the folder
    assert {s.state for s in scan(sweep).values()} == {"done"}


def test_garbage_spec_in_a_done_trial_is_shown_then_repaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    victim = sweep / "trials" / specs[1].trial_id
    (victim / R.SPEC).write_text("{garbage")
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "3 done" in out and "1 unreadable" in out and "spec.json is not JSON; rerun the sweep to repair it from the grid" in out
    assert "1/?" not in out  # before: "done 1/?"

    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    captured = capsys.readouterr()
    assert f"repaired: {victim}: spec.json is not JSON" in captured.err and "every trial is done" in captured.out
    assert spec_problem(victim) is None and json.loads((victim / R.SPEC).read_text()) == specs[1].to_dict()
    assert {s.state for s in scan(sweep).values()} == {"done"}
    assert C.collect(sweep, figures=False, warn=lambda m: None).counts["done"] == 4


@pytest.mark.parametrize("where", ["summary", "summary/figures", "summary/.cache"])
def test_a_file_where_the_summary_goes_is_one_line(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.collect.command import main as collect_main

    _, sweep, _ = synthetic_sweep(tmp_path, SMALL)
    (sweep / where).parent.mkdir(exist_ok=True)
    (sweep / where).write_text("notes")
    assert cli(collect_main, [str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {sweep / where}: a file, not a folder; the collector writes the summary there: move that file away"]
    assert (sweep / where).read_text() == "notes"  # left as it was, and nothing written beside it
    assert where == "summary" or sorted(p.name for p in (sweep / "summary").iterdir()) == [Path(where).name]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A real read-only folder (a read-only bind mount: root ignores permission bits); skipped where
    mount is not allowed."""
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True).returncode != 0:
        pytest.skip("needs mount (a read-only bind mount)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode != 0:
            pytest.skip("needs mount -o remount,bind,ro")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_the_commands_that_write_into_a_read_only_sweep_are_one_line(read_only: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cancel, ablate, represent and robust on a sweep on a read-only mount (a share, another user's
    results) ended in OSError tracebacks from their first write; collect and sweep already said it."""
    from orchestrator.analysis.ablate import main as ablate_main
    from orchestrator.analysis.represent import main as represent_main
    from orchestrator.analysis.robust import main as robust_main
    from orchestrator.cancel import main as cancel_main

    _, sweep, _ = synthetic_sweep(read_only.parent / "rw", SMALL)
    seen = read_only / sweep.relative_to(read_only.parent / "rw")
    for name, main in (("cancel", cancel_main), ("the job", ablate_main), ("the job", represent_main), ("the job", robust_main)):
        assert cli(main, [str(seen)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {seen}: not writable (Read-only file system); {name} writes into the sweep's trial folders: "
                       "run it where you may write, or on a copy of the sweep folder"]  # fmt: skip
    assert cli(status_main, [str(seen)]) == 0  # reading is fine


def test_unreadable_status_is_shown_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    status = sweep / "trials" / specs[2].trial_id / R.STATUS
    status.write_bytes(status.read_bytes()[:25])  # truncated
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "3 done" in out and "1 unreadable" in out
    assert "status.json unreadable: rerun the sweep, the trial's next attempt rebuilds it" in out


def test_edited_spec_is_not_trusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    victim = sweep / "trials" / specs[0].trial_id
    (victim / R.SPEC).write_text(json.dumps({**specs[0].to_dict(), "epochs": 7}))  # edited after the run
    state = scan(sweep)[specs[0].trial_id]
    edited = TrialSpec.from_dict({**specs[0].to_dict(), "epochs": 7}).trial_id
    assert state.state == "unreadable" and f"spec.json hashes to {edited}, not the folder's id" in (state.error or "")
    assert cli(status_main, [str(sweep)]) == 0
    assert "/7" not in capsys.readouterr().out  # the edited epochs are not shown as the trial's
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    assert spec_problem(victim) is None and scan(sweep)[specs[0].trial_id].state == "done"


def test_stray_folders_are_not_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    (sweep / "trials" / "notes").mkdir()
    (sweep / "trials" / "notes" / "todo.txt").write_text("look at alpha -5")
    (sweep / "trials" / "README.txt").write_text("a file, not a folder")
    assert cli(status_main, [str(sweep)]) == 0
    captured = capsys.readouterr()
    assert f"{sweep}: 4 trials: 4 done" in captured.out and "notes" not in captured.out
    assert captured.err.count("warning:") == 1 and "'notes'" in captured.err and "not named by a trial id" in captured.err
    warnings: list[str] = []
    result = C.collect(sweep, figures=False, warn=warnings.append)
    assert sum(result.counts.values()) == 4 and result.counts["pending"] == 0
    assert len(warnings) == 1 and "'notes'" in warnings[0]
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().err.count("warning:") == 1


def test_trainer_run_refuses_a_folder_not_named_by_the_trial_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.group import main as group_main
    from trainer.run import main as run_main

    folder = tmp_path / "my-trial"
    folder.mkdir()
    (folder / R.SPEC).write_text(json.dumps(TrialSpec(epochs=1).to_dict()))
    for main in (run_main, group_main):  # the command's own main: exit code and stderr as on a shell
        assert main(["--spec", str(folder / R.SPEC)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "folder is named 'my-trial'" in lines[0] and TrialSpec(epochs=1).trial_id in lines[0]
    assert sorted(p.name for p in folder.iterdir()) == [R.SPEC]  # nothing trained, nothing recorded


# ---- the collector killed at its dangerous moments -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("site", ["collect-rows", "collect-tables", "collect-figures", "collect-report"])
def test_collect_killed_leaves_only_work_to_redo(site: str, tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    first = [TrialSpec(sweep="s", alpha=a, seed=s, epochs=3) for a in (-1.0, 0.0) for s in (0, 1)]
    for spec in first:
        write_trial(sweep, spec, units=False)
    C.collect(sweep, warn=lambda m: None)  # a complete summary of 4 trials, figures included
    for spec in (TrialSpec(sweep="s", alpha=1.0, seed=s, epochs=3) for s in (0, 1)):
        write_trial(sweep, spec, units=False)
    before_kill = time.time_ns()
    env = {**ENV, "SWEEP_FAULT": f"{site}:1"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.collect", str(sweep)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    summary = sweep / "summary"
    assert not (summary / cache.MANIFEST).exists()  # no commit: the next collect trusts nothing it finds

    result = C.collect(sweep, warn=lambda m: None)
    assert sorted(result.read) == sorted(t.name for t in (sweep / "trials").iterdir())  # all read again
    ids = set(pd.read_parquet(summary / "trials.parquet")["trial_id"])
    assert len(ids) == 6 and set(pd.read_parquet(summary / "epochs.parquet")["trial_id"]) == ids
    assert "6 done" in (summary / "report.md").read_text()
    for png in C.FIGURES:  # every figure drawn again, after the kill: none left from the 4-trial summary
        assert (summary / "figures" / png).stat().st_mtime_ns > before_kill, png
    manifest = cache.load(summary)
    assert set(manifest.trials) == ids and manifest.current(summary, [summary / "report.md", *summary.glob("*.parquet")])


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


@pytest.mark.slow
def test_two_collects_of_one_sweep_take_turns(tmp_path: Path) -> None:
    # A collect paused after writing its tables (SIGSTOP at collect-tables), trials finishing, and a
    # second collect meanwhile: before the lock, the second wrote the 6-trial summary, the first then
    # its 4-trial tables and a manifest for those 4 beside 6-trial rows files, and the next collect
    # stopped on a pandas traceback (duplicate entries). Now the second waits, saying for whom.
    sweep = tmp_path / "s"
    for spec in (TrialSpec(sweep="s", alpha=a, seed=s, epochs=3) for a in (-1.0, 0.0) for s in (0, 1)):
        write_trial(sweep, spec, units=False)
    command = [sys.executable, "-m", "orchestrator.collect", str(sweep)]
    first = subprocess.Popen(command, env={**ENV, "SWEEP_FAULT": "collect-tables:1:STOP"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _stopped(first.pid), 120, "the first collect pauses after its tables")
        for spec in (TrialSpec(sweep="s", alpha=1.0, seed=s, epochs=3) for s in (0, 1)):
            write_trial(sweep, spec, units=False)
        second = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        said = second.stderr.readline()
        assert said.startswith(f"another collect of this sweep is running (pid {first.pid} on "), said
        assert said.rstrip().endswith("; waiting for it to finish") and second.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=120) == 0
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "6 done" in out and "(read 2 trials, 4 from the cache)" in out, out
    summary = sweep / "summary"
    ids = set(pd.read_parquet(summary / "trials.parquet")["trial_id"])
    assert len(ids) == 6 and set(pd.read_parquet(summary / "layers.parquet")["trial_id"]) == ids == set(cache.load(summary).trials)
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "unchanged since the last collect" in again.stdout, again.stderr
    assert err.strip() == "", err  # the wait was its one line


@pytest.mark.slow
def test_collect_without_figures_removes_stale_ones(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for s in (0, 1):
        write_trial(sweep, TrialSpec(sweep="s", alpha=0.0, seed=s, epochs=2), units=False)
    C.collect(sweep, warn=lambda m: None)
    assert len(list((sweep / "summary" / "figures").glob("*.png"))) == 4
    write_trial(sweep, TrialSpec(sweep="s", alpha=0.0, seed=2, epochs=2), units=False)
    C.collect(sweep, figures=False, warn=lambda m: None)  # the old figures show 2 trials, the tables 3
    assert list((sweep / "summary" / "figures").glob("*.png")) == []


# ---- orphans ----------------------------------------------------------------------------------------
HOLD = """
import fcntl, json, os, sys, time
fds = []
for folder in sys.argv[1:]:
    json.dump({"state": "running", "attempts": 1}, open(os.path.join(folder, "status.json"), "w"))
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("held", flush=True)
time.sleep(120)
"""


def test_trials_held_by_orphaned_workers_count_as_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The launcher was killed; its workers still train two trials. A relaunch must not say 'done'."""
    grid, sweep, specs = synthetic_sweep(tmp_path, SMALL)
    held = [sweep / "trials" / s.trial_id for s in specs[:2]]
    for folder in held:
        for name in (R.EPOCHS, R.LAYERS):
            (folder / name).unlink()
    orphan = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, held)], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout is not None and orphan.stdout.readline().strip() == "held"
        code = cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")])
        out = capsys.readouterr().out
        assert code == 1, out
        assert "every trial is done" not in out and "2 done" in out and "2 running in another process" in out
        assert "not finished" in out
    finally:
        orphan.kill()
        orphan.wait()


# ---- launchers that never exit: every failure path is bounded ---------------------------------------
def runner_trial(root: Path, status: bytes | None) -> Path:
    spec = TrialSpec(sweep="rt", epochs=1)
    folder = root / spec.trial_id
    folder.mkdir(parents=True)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    if status is not None:
        (folder / R.STATUS).write_bytes(status)
    return folder


def starts(folder: Path) -> int:
    return (folder / "trainer.log").read_text().count(": trainer.group ")


def test_corrupt_status_and_a_worker_dying_early_do_not_loop(tmp_path: Path) -> None:
    """The case that looped forever: the worker fails before its attempt is recorded, and the
    runner cannot record it either (status.json unreadable). It gives up at once and says why."""
    folder = runner_trial(tmp_path, b'{"state": "do')
    start = time.monotonic()
    report = Runner(make_slots(1), max_attempts=3, python=shutil.which("false")).run([[folder]])
    assert time.monotonic() - start < 10
    assert starts(folder) == 1
    assert "status.json could not be written" in report.given_up[folder]


def test_a_worker_that_always_fails_stops_at_the_attempt_cap(tmp_path: Path) -> None:
    folder = runner_trial(tmp_path, None)
    report = Runner(make_slots(1), max_attempts=3, python=shutil.which("false")).run([[folder]])
    status = json.loads((folder / R.STATUS).read_text())
    assert starts(folder) == 3 and status["attempts"] == 3 and status["error_kind"] == "setup"
    assert report.states[folder].state == "failed" and not report.states[folder].runnable(3)


def test_a_missing_interpreter_is_recorded_not_raised(tmp_path: Path) -> None:
    folder = runner_trial(tmp_path, None)
    report = Runner(make_slots(1), max_attempts=3, python=str(tmp_path / "no-such-python")).run([[folder]])
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "failed" and status["attempts"] == 1 and status["error_kind"] == "setup"
    assert "cannot start a worker" in status["error"] and "no-such-python" in status["error"]
    assert folder in report.given_up


@pytest.mark.slow
def test_launcher_with_a_corrupt_status_json_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated status.json is rebuilt from what the folder proves (exit 0); one that cannot be
    written (a folder in its place) ends the launch at once with exit 1 and the reason."""
    grid = write(tmp_path, "name: rt\nfixed: {epochs: 1, batch_size: 256}\n")
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    folder = next((results / "rt" / "trials").iterdir())
    rows = pd.read_parquet(folder / R.EPOCHS)
    status = folder / R.STATUS
    status.write_bytes(status.read_bytes()[:30])
    start = time.monotonic()
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert time.monotonic() - start < 90
    repaired = json.loads(status.read_text())
    assert repaired["state"] == "done" and "rebuilt from the trial folder" in repaired["repaired"]
    assert repaired["epoch"] == 1  # from its checkpoint: `orchestrator.status` shows 1/1, not -/1 (issue 21)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / R.EPOCHS), rows)  # resumed at its end: nothing retrained

    status.unlink()  # deleted outright: pending, then done again at its end, its epoch from the checkpoint (was `-/1`)
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert json.loads(status.read_text())["epoch"] == 1 and json.loads(status.read_text())["state"] == "done"
    pd.testing.assert_frame_equal(pd.read_parquet(folder / R.EPOCHS), rows)

    status.unlink()
    status.mkdir()
    capsys.readouterr()
    start = time.monotonic()
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 1
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert f"gave up on {folder.name}" in err and "status.json could not be written" in err


# ---- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a results folder on a file system that fills up (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_before_anything_is_written(small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, SMALL)
    start = time.monotonic()
    line = one_line_error(capsys, ["--grid", str(grid)], small_disk / "results")
    assert time.monotonic() - start < 10
    need = (CHECKPOINT_BYTES["resnet20"]["digits"] + ROWS_BYTES) / 1e6
    assert "MB free; a trial needs at least" in line and f"{need:.1f} MB" in line and "--results" in line


def test_disk_full_while_preparing_is_one_line(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte: not even a spec.json fits
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    monkeypatch.setattr("orchestrator.preflight.check_space", lambda *a: None)  # as if the disk filled up just after the check
    grid = write(tmp_path, SMALL)
    code = cli(sweep_main, ["--grid", str(grid), "--results", str(small_disk / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0] and "cannot write" in err[0], err


@pytest.mark.slow
def test_disk_full_during_training_ends_with_the_reason(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first checkpoint does not fit: the worker fails on ENOSPC, the trial is failed as the user's
    to mend (not retried on the same disk), the launch ends (exit 1) and says why."""
    monkeypatch.setattr("orchestrator.preflight.check_space", lambda *a: None)  # the disk fills up after the check
    grid = write(tmp_path, "name: rt\nfixed: {epochs: 1, batch_size: 256}\n")
    start = time.monotonic()
    code = cli(sweep_main, ["--grid", str(grid), "--results", str(small_disk / "results")])
    assert time.monotonic() - start < 120
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "error: " in captured.err and "No space left on device" in captured.err and "restarting" not in captured.err, captured.err
    assert "not finished" in captured.out
    (st,) = scan(small_disk / "results" / "rt").values()
    status = json.loads((st.folder / R.STATUS).read_text())
    assert (status["state"], status["error_kind"], status["attempts"]) == ("failed", "user", 1), status
    assert "[Errno 28] No space left on device (the disk holding " in status["error"], status
    # The failed write's partial file is gone: it held space the next launch's check then missed.
    assert [p.name for p in (small_disk / "results").rglob(f"*{R.TMP_MARK}*")] == []


def test_a_sweep_that_will_keep_more_than_is_free_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    from orchestrator.preflight import check_space

    specs = load_grid(write(tmp_path, "name: rt\nfixed: {epochs: 8}\nsweep: {seed: [0, 1]}\n")).specs
    ckpt = CHECKPOINT_BYTES["resnet20"]["digits"]
    total = 2 * (len(specs[0].kept_epochs()) + 1) * ckpt + 2 * ROWS_BYTES  # epochs 0-8 kept, and the rolling one
    usage = namedtuple("usage", "total used free")
    for free, warned in ((total - 1, True), (total, False)):
        monkeypatch.setattr("orchestrator.preflight.shutil.disk_usage", lambda _, free=free: usage(free, 0, free))
        check_space(tmp_path, specs)
        err = capsys.readouterr().err
        assert (err.count("\n") == 1 and f"the 2 trial(s) to run keep about {total / 1e6:.1f} MB" in err) if warned else err == "", err


# ---- fused groups: what is bitwise and what is not ------------------------------------------------
@pytest.mark.slow
def test_group_size_changes_no_weight_accuracy_or_csi(tmp_path: Path) -> None:
    from trainer.trial import run_group

    a, b, c = (TrialSpec(sweep="fz", epochs=1, batch_size=256, alpha=al, seed=s, device="cpu") for al, s in ((-5.0, 0), (2.0, 1), (0.0, 2)))
    assert run_group([a], [tmp_path / "alone" / a.trial_id]) == ["done"]  # beside its twin: a group of 2
    assert run_group([a, b, c], [tmp_path / "three" / s.trial_id for s in (a, b, c)]) == ["done"] * 3
    alone, three = (tmp_path / g / a.trial_id for g in ("alone", "three"))
    x, y = pd.read_parquet(alone / R.EPOCHS), pd.read_parquet(three / R.EPOCHS)
    for col in ("test_loss", "test_acc", "csi_mean"):
        assert x[col].tolist() == y[col].tolist(), col
    for col in ("train_loss", "train_ce", "train_selectivity"):  # running means: float32 rounding only
        assert x[col].tolist()[1:] == pytest.approx(y[col].tolist()[1:], rel=1e-6), col
    wa, wb = (torch.load(f / R.CHECKPOINT, weights_only=True)["model"] for f in (alone, three))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- the launcher's space check knows the real checkpoint sizes --------------------------------------
@pytest.mark.slow  # builds every network, VGG16 for ImageNet included
def test_checkpoint_sizes_cover_the_real_models() -> None:
    """CHECKPOINT_BYTES holds each real checkpoint (weights, momentum, buffers) of every model and
    data set a spec allows, and is not far above it."""
    from trainer.models import build_for
    from trainer.registry import DATASETS, MODELS

    assert set(CHECKPOINT_BYTES) == set(MODELS)
    for name in MODELS:
        for dataset in DATASETS:
            try:
                TrialSpec(model=name, dataset=dataset)
            except SpecError:
                assert dataset not in CHECKPOINT_BYTES[name]
                continue  # this model does not take that data set's images
            model = build_for(name, dataset)
            real = 4 * (2 * sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
            assert real <= CHECKPOINT_BYTES[name][dataset] <= 1.05 * real, (name, dataset, real)


def test_data_missing_on_the_node_records_the_log_path(tmp_path: Path) -> None:
    """The launcher's data check passed elsewhere, the worker's failed: status.json points at the log."""
    spec = TrialSpec(sweep="rt", epochs=1, dataset="cifar10", data_root=str(tmp_path / "not-here"), device="cpu")
    folder = tmp_path / spec.trial_id
    folder.mkdir()
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    report = Runner(make_slots(1), max_attempts=3, log_hint="job 9_0").run([[folder]])
    status = json.loads((folder / R.STATUS).read_text())
    assert (status["state"], status["error_kind"], status["attempts"]) == ("failed", "user", 1), status
    assert status["log"] == str(folder / "trainer.log") and "not found" in Path(status["log"]).read_text()
    assert status["error"].endswith("(job 9_0)") and report.user_errors
