"""Whole nodes: a job given G GPUs trains G groups side by side, one per GPU, on the real local SLURM.

    python -m pytest tests/test_slurm_nodes.py

The test cluster's node declares two fake GPUs (gres gpu:2 backed by character devices, see
scripts/local_slurm.sh), so a job asking for them gets CUDA_VISIBLE_DEVICES=0,1 from SLURM. The
trials train on the CPU; what is checked is the job's side: two worker processes alive at the
same time, each holding its own group's trial lock and seeing only its own GPU, and the trials'
start and end times overlapping.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.backends.slurm import squeue
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli

from helpers import job_of, status, write_grid, write_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def lock_holder(trial: Path) -> int | None:
    try:
        pid = int(json.loads((trial / ".lock").read_text())["pid"])
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, ValueError, KeyError):
        return None


def test_a_two_gpu_job_runs_two_groups_at_once(tmp_path: Path, sweep_name: str) -> None:
    grid = write_grid(tmp_path, sweep_name, "epochs: 3", "  seed: [0, 1]\n")
    # fuse 1: each trial is its own group; gpus_per_task 2: one task holds both fake GPUs and both groups.
    profile = write_profile(tmp_path, gpus_per_task=2, cpus_per_trial=1)
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")]) == 0
    sweep = tmp_path / "r" / sweep_name
    trials = sorted((sweep / "trials").iterdir())
    jobs = {job_of(t) for t in trials}
    assert len(jobs) == 1  # one task for both groups
    script = next(sweep.glob("slurm/*/*_submission.sh")).read_text()
    assert "#SBATCH --gpus-per-node=2\n" in script and "#SBATCH --cpus-per-task=2\n" in script

    seen: dict[Path, str] = {}
    together = False
    deadline = time.monotonic() + 240
    while squeue(jobs) and time.monotonic() < deadline:
        pids = {t: lock_holder(t) for t in trials}
        if all(pids.values()):
            try:
                envs = {t: environ(pid) for t, pid in pids.items() if pid is not None}
            except OSError:  # a worker ended between the two reads
                continue
            if len(set(pids.values())) == 2:
                together = True  # two worker processes, alive at the same moment
                seen.update({t: env.get("CUDA_VISIBLE_DEVICES", "") for t, env in envs.items()})
        time.sleep(0.2)
    assert not squeue(jobs), "the job did not finish in time"
    assert together, "the two groups never ran at the same time"
    assert sorted(seen.values()) == ["0", "1"], seen  # each worker sees only its own GPU

    spans = [(status(t)["started"], status(t)["ended"]) for t in trials]
    assert all(status(t)["state"] == "done" for t in trials)
    assert spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1], spans  # the trials' own times overlap
    log = "".join((t / "trainer.log").read_text() for t in trials)
    assert "gpu0: trainer.group" in log and "gpu1: trainer.group" in log
