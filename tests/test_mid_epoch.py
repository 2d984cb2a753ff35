"""A stop inside an epoch (SIGUSR1: a SLURM time limit ahead): checkpoint at the next step, resume there.

The trial process gets SIGUSR1 at a chosen training step (trainer.faults), saves a mid-epoch
checkpoint, records itself interrupted and exits 76; running it again continues from that step,
and on CPU its files equal an uninterrupted run's bitwise (train statistics included: the stopped
stretch's running sums travel in the checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainer import results as R
from trainer.cli import EXIT_CHECKPOINTED
from trainer.spec import TrialSpec

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
FILES = (R.EPOCHS, R.LAYERS, R.UNITS)
TIMING = ["seconds", "eval_seconds", "images_per_s"]
STEPS = 1438 // 128  # digits: 11 steps per epoch


def new_trial(root: Path, spec: TrialSpec) -> Path:
    folder = root / spec.trial_id
    folder.mkdir(parents=True)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    return folder


def run(module: str, folders: list[Path], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "SWEEP_FAULT": fault} if fault else ENV
    args = [a for f in folders for a in ("--spec", str(f / R.SPEC))]
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=300)


def assert_same(a: Path, b: Path) -> None:
    for name in FILES:
        got, want = pd.read_parquet(a / name), pd.read_parquet(b / name)
        got, want = got.drop(columns=[c for c in TIMING if c in got]), want.drop(columns=[c for c in TIMING if c in want])
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=name)


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [STEPS + 7, 2 * STEPS + 4])  # inside epoch 2 (between mid-epoch evaluations) / at one
def test_stop_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path, stop_step: int) -> None:
    spec = TrialSpec(sweep="mid", epochs=3, alpha=-2.0, device="cpu", eval_every_steps=4, eval_until_epoch=3)
    ref = new_trial(tmp_path / "ref", spec)
    assert run("trainer.run", [ref]).returncode == 0

    folder = new_trial(tmp_path / "stopped", spec)
    out = run("trainer.run", [folder], f"train-step:{stop_step}:USR1")
    assert out.returncode == EXIT_CHECKPOINTED, out.stderr
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "interrupted" and "time limit: checkpointed in epoch" in status["last_interruption"]
    mid = torch.load(folder / "checkpoint_mid.pt", weights_only=True)
    assert mid["epoch"] == stop_step // STEPS and 0 < mid["in_epoch"]["step"] <= STEPS
    assert run("trainer.run", [folder]).returncode == 0
    assert not (folder / "checkpoint_mid.pt").exists()
    assert_same(folder, ref)
    assert json.loads((folder / R.STATUS).read_text())["attempts"] == 2


@pytest.mark.slow
def test_fused_group_stops_together_and_resumes_bitwise(tmp_path: Path) -> None:
    specs = [TrialSpec(sweep="mid", epochs=2, alpha=a, seed=s, device="cpu") for a, s in ((-3.0, 0), (0.0, 1))]
    refs = [new_trial(tmp_path / "ref", s) for s in specs]
    assert run("trainer.group", refs).returncode == 0
    folders = [new_trial(tmp_path / "stopped", s) for s in specs]
    assert run("trainer.group", folders, f"train-step:{STEPS + 5}:USR1").returncode == EXIT_CHECKPOINTED
    assert all((f / "checkpoint_mid.pt").exists() for f in folders)
    assert run("trainer.group", folders).returncode == 0
    for f, r in zip(folders, refs):
        assert_same(f, r)


@pytest.mark.slow
def test_stale_mid_checkpoint_is_ignored(tmp_path: Path) -> None:
    """A mid-epoch checkpoint of an epoch that has finished since (a kill between writes) is dropped."""
    spec = TrialSpec(sweep="mid", epochs=1, device="cpu")
    folder = new_trial(tmp_path, spec)
    assert run("trainer.run", [folder], f"train-step:{STEPS - 3}:USR1").returncode == EXIT_CHECKPOINTED
    mid = folder / "checkpoint_mid.pt"
    saved = mid.read_bytes()
    assert run("trainer.run", [folder]).returncode == 0
    mid.write_bytes(saved)  # as if the kill came after checkpoint.pt was replaced, before the mid one went
    spec2 = TrialSpec(sweep="mid", epochs=1, device="cpu")
    assert spec2.trial_id == spec.trial_id
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "done"
    from trainer.checkpoint import load_mid_checkpoint

    assert load_mid_checkpoint(folder, torch.device("cpu"), 1) is None and not mid.exists()
