"""Fault injection: processes really killed with SIGKILL, then the work rerun until done.

Two kinds of kill, both real:
- at a chosen dangerous moment (trainer.faults: a temp file written but not renamed, results
  written but no checkpoint yet, mid-epoch), so every window is hit on every run;
- at random moments, of the launcher or of its worker processes, over a whole sweep.
Afterwards every trial is done exactly once (one row per epoch, no temp or half files) and,
on CPU, its numbers equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.folders import scan
from orchestrator.grid import load_grid
from trainer.results import EPOCHS, LAYERS, UNITS
from trainer.spec import TrialSpec

# One thread everywhere: float sums then come out bit-identical between runs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = ["seconds", "eval_seconds", "images_per_s"]
SPEC = TrialSpec(sweep="faults", alpha=-5.0, epochs=3, batch_size=256, seed=3)


def run_trainer(folder: Path, fault: str | None = None) -> int:
    env = {**ENV, "SWEEP_FAULT": fault} if fault else ENV
    return subprocess.run(
        [sys.executable, "-m", "trainer.run", "--spec", str(folder / "spec.json")],
        env=env, capture_output=True, timeout=300,
    ).returncode  # fmt: skip


def new_trial(folder: Path, spec: TrialSpec = SPEC) -> Path:
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(spec.to_dict()))
    return folder


def assert_same_results(folder: Path, reference: Path) -> None:
    for name in (EPOCHS, LAYERS, UNITS):
        got = pd.read_parquet(folder / name)
        want = pd.read_parquet(reference / name)
        if name == EPOCHS:
            assert list(got.epoch) == list(range(SPEC.epochs + 1))  # one row per epoch
            got, want = got.drop(columns=TIMING), want.drop(columns=TIMING)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = new_trial(tmp_path_factory.mktemp("ref") / SPEC.trial_id)
    assert run_trainer(folder) == 0
    return folder


KILLS = [
    "parquet-tmp:1",  # epoch 0's epochs.parquet complete under its temp name
    "parquet-tmp:5",  # epoch 1's layers.parquet
    "json-tmp:1",  # the very first status.json
    "json-tmp:4",  # a status update after an epoch
    "checkpoint-tmp:2",  # epoch 1's checkpoint written, not renamed
    "rows-written:2",  # epoch 2's rows on disk, its checkpoint not yet
    "train-step:7",  # in the middle of epoch 2
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", KILLS)
def test_kill_at_a_dangerous_moment_then_resume(fault: str, tmp_path: Path, reference: Path) -> None:
    folder = new_trial(tmp_path / SPEC.trial_id)
    assert run_trainer(folder, fault) == -signal.SIGKILL  # it really died there
    assert run_trainer(folder) == 0
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] in (1, 2)
    assert leftovers(folder) == []
    assert_same_results(folder, reference)


# ---- random kills over a whole sweep ----------------------------------------------------------
def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_random_kills_of_launcher_and_workers(tmp_path: Path) -> None:
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text("name: chaos\nfixed: {epochs: 3, batch_size: 256}\nsweep: {alpha: [-5, 0, 5], seed: [0, 1]}\n")
    results = tmp_path / "results"
    launcher = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid_path), "--results", str(results),
                "--max-parallel", "2"]  # fmt: skip
    rng = random.Random(20261121)
    kills, orphans = 0, []
    for _ in range(8):
        proc = subprocess.Popen(launcher, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 5.0))
        if proc.poll() is not None:
            continue  # finished before the kill: the next rounds find less (or nothing) to do
        workers = children(proc.pid)
        victim = rng.choice([proc.pid, *workers]) if workers else proc.pid
        os.kill(victim, signal.SIGKILL)
        kills += 1
        if victim == proc.pid:
            orphans += workers  # they go on alone; the next launcher must leave their trials to them
        else:
            proc.kill()
        proc.wait()
    # Rerun until done (orphaned workers still hold their trials' locks while they live).
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        subprocess.run(launcher, env=ENV, capture_output=True, timeout=300)
        if all(s.state == "done" for s in scan(results / "chaos").values()) and not any(map(alive, orphans)):
            break
        time.sleep(1)
    assert kills >= 3

    sweep = results / "chaos"
    specs = load_grid(grid_path).specs
    states = scan(sweep)
    assert set(states) == {s.trial_id for s in specs}
    assert {s.state for s in states.values()} == {"done"}
    assert leftovers(sweep) == []
    # The numbers equal an uninterrupted sweep's however the relaunches regrouped the fused trials
    # (a fusable trial always trains fused, beside a twin when alone: trainer.group): weights,
    # accuracy and CSI bitwise; the training statistics to float32 rounding, since a group's size
    # can change the last bits of its per-model loss reductions (docs/fused.md).
    reference = tmp_path / "reference"
    subprocess.run([*launcher[:-3], str(reference), *launcher[-2:]], env=ENV, capture_output=True, timeout=300, check=True)
    for spec in specs:
        ref = reference / "chaos" / "trials" / spec.trial_id
        got_folder = sweep / "trials" / spec.trial_id
        for name in (EPOCHS, LAYERS, UNITS):
            got, want = pd.read_parquet(got_folder / name), pd.read_parquet(ref / name)
            if name == EPOCHS:
                got, want = got.drop(columns=TIMING), want.drop(columns=TIMING)
                train = ["train_loss", "train_ce", "train_selectivity"]
                pd.testing.assert_frame_equal(got[train], want[train], rtol=1e-6)
                got, want = got.drop(columns=train), want.drop(columns=train)
            pd.testing.assert_frame_equal(got, want, check_exact=True)
    for spec in specs:
        epochs = pd.read_parquet(sweep / "trials" / spec.trial_id / EPOCHS)
        assert list(epochs.epoch) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_damaged_checkpoint_fails_its_trial_alone_and_is_not_retried_on_the_same_file(tmp_path: Path) -> None:
    # Three fused trials stopped after epoch 1 (their worker SIGKILLed when epoch 2's first rows were
    # written), then one member's checkpoint.pt truncated. Before, the exception failed all three
    # members, and the runner restarted the group on the same file until each had max_attempts.
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text("name: damaged\nfixed: {epochs: 3, batch_size: 256}\nsweep: {seed: [0, 1, 2]}\n")
    specs = load_grid(grid_path).specs
    sweep = tmp_path / "r" / "damaged"
    folders = [new_trial(sweep / "trials" / s.trial_id, s) for s in specs]
    group = [sys.executable, "-m", "trainer.group", *[a for f in folders for a in ("--spec", str(f / "spec.json"))]]
    killed = subprocess.run(group, env={**ENV, "SWEEP_FAULT": "rows-written:4"}, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    bad, *good = folders
    assert all(json.loads((f / "status.json").read_text())["epoch"] == 1 for f in folders)
    with open(bad / "checkpoint.pt", "r+b") as f:
        f.truncate(1000)

    launcher = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid_path), "--results", str(tmp_path / "r")]
    launcher += ["--max-parallel", "1"]
    out = subprocess.run(launcher, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert f"error: {bad.name}: checkpoint {bad / 'checkpoint.pt'} is unreadable" in out.stderr, out.stderr
    assert "restarting" not in out.stderr, out.stderr  # the same file would fail the same way
    st = json.loads((bad / "status.json").read_text())
    assert (st["state"], st["error_kind"], st["attempts"]) == ("failed", "user", 2), st
    assert "delete it to restart the trial from scratch" in st["error"]
    for f in good:  # trained on without it, from their own checkpoints
        st = json.loads((f / "status.json").read_text())
        assert (st["state"], st["attempts"], st["epoch"]) == ("done", 2, 3), st
        assert list(pd.read_parquet(f / EPOCHS).epoch) == [0, 1, 2, 3]

    (bad / "checkpoint.pt").unlink()  # as the error says; then the next launch trains it from scratch
    again = subprocess.run(launcher, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    st = json.loads((bad / "status.json").read_text())
    assert (st["state"], st["attempts"]) == ("done", 3), st
    assert list(pd.read_parquet(bad / EPOCHS).epoch) == [0, 1, 2, 3]
