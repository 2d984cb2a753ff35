"""Loader workers never keep a dead trial locked (trainer.lock: flock on <trial>/.lock).

A trial-like process holds TrialLock, starts the portable loader with two workers, takes a batch
and then dies: by an exception, or by SIGKILL of the main process (workers get no chance to
clean up). The lock must be free within a few seconds either way: forked workers would inherit
the lock's open file description and hold it; forkserver workers never have it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.lock import is_locked

from imagenet_tree import make_imagenet_tree

TRIAL = """
import os, signal, sys, time, torch
from pathlib import Path
from trainer.data import load_dataset
from trainer.lock import TrialLock
root, cache, trial, how = sys.argv[1:]
with TrialLock(Path(trial)):
    data = load_dataset("imagenet", root, torch.device("cpu"), 2, loader="torchvision", cache_dir=cache)
    batches = data.train_batches(0, 0, 2, True)
    next(batches)
    print("training", flush=True)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("the training loop failed")
"""


@pytest.mark.slow  # a fresh interpreter, torch and the forkserver: ~5-10 s on a busy 2-core machine
@pytest.mark.parametrize("how", ["exception", "kill"])
def test_dead_trial_is_unlocked_despite_loader_workers(tmp_path: Path, how: str) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False, per_class=6)
    trial = tmp_path / "trial"
    trial.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", TRIAL, str(tree.root), str(tmp_path / "cache"), str(trial), how],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.wait(timeout=120) != 0
        if how == "kill":
            # No worker ever had the lock's descriptor, so it is free the moment the trial is reaped
            # (forked workers hold it until torch's watchdog notices, ~0.5-5 s: this check fails then).
            assert not is_locked(trial), "the trial's lock outlived its process: a loader worker holds it"
        deadline = time.monotonic() + 3.0
        while is_locked(trial) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_locked(trial), f"{trial} still locked after the trial process died ({how})"
        # The workers (and the forkserver) inherited the trial's stdout/stderr: EOF comes when they are gone.
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"loader workers outlived the dead trial process ({how}) by more than 10 s")
        assert "training" in out, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
