"""A full SLURM controller (MaxJobCount): the launcher submits what fits, waits, tops up, loses nothing.

    python -m pytest tests/test_slurm_maxjobs.py

The test starts a cluster of its own with scripts/local_slurm.sh (a state folder under /tmp, free
ports, MaxJobCount=3, MinJobAge=2; under a second here) and stops it at the end; the project's
running clusters are never touched. The controller then holds at most 2 job records (an array
counts one per task, a finished job MinJobAge more), so a sweep of four one-trial tasks does not
fit: the first array is refused with SLURM's own "Resource temporarily unavailable", the launcher
submits the 2 that fit (halving, then bisecting) and the 2 others as jobs leave. Every trial ends
done, once, with one attempt; sbatch's own two minutes of retries per refusal are cut short.
A controller kept full by other jobs (held, so they never leave) is tried a bounded number of
times, and the launcher then stops waiting with exit 3, having submitted and touched nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.backends.slurm import wait
from orchestrator.backends.slurm.queue import SUBMITTED, read_submission
from orchestrator.sweep import EXIT_UNSUBMITTED
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli

from helpers import ROOT, status, write_grid, write_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

START = ROOT / "scripts" / "local_slurm.sh"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def full_slurm() -> Iterator[dict[str, str]]:
    """A cluster of its own with MaxJobCount=3; yields the environment that reaches it, stops it afterwards."""
    if os.geteuid() != 0 or shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("starting a SLURM cluster needs root and the SLURM packages (scripts/local_slurm.sh install)")
    state = tempfile.mkdtemp(prefix="sweep-maxjobs-", dir="/tmp")  # short: munge's socket path has a length limit
    ctld, slurmd = _free_ports(2)
    env = {
        **os.environ, "LOCAL_SLURM_DIR": state, "LOCAL_SLURM_CTLD_PORT": str(ctld), "LOCAL_SLURM_SLURMD_PORT": str(slurmd),
        "LOCAL_SLURM_MAX_JOB_COUNT": "3", "LOCAL_SLURM_MIN_JOB_AGE": "2",
    }  # fmt: skip
    try:
        up = subprocess.run(["bash", str(START), "start"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        yield {**os.environ, "SLURM_CONF": f"{state}/conf/slurm.conf"}
    finally:
        subprocess.run(["bash", str(START), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def test_a_full_controller_is_topped_up_until_every_trial_is_done_once(tmp_path: Path, full_slurm: dict[str, str]) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    grid = write_grid(tmp_path, name, "epochs: 1", "  seed: [0, 1, 2, 3]\n")
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--results", str(tmp_path / "r")]
    began = time.monotonic()
    run = subprocess.run(
        [*cmd, "--cluster", str(write_profile(tmp_path, wait=True))], capture_output=True, text=True, cwd=ROOT, env=full_slurm, timeout=300
    )  # fmt: skip
    took = time.monotonic() - began
    assert run.returncode == 0, run.stderr  # the old launcher: exit 2 ("sbatch refused the jobs") after sbatch's 2 minutes
    assert "4 done, 0 failed of 4" in run.stdout, run.stdout + run.stderr
    assert "wait in the launcher: the SLURM controller is full (MaxJobCount" in run.stderr, run.stderr
    assert "Resource temporarily unavailable (sbatch stopped before its retries)" in run.stderr  # not 2 minutes per refusal
    sweep = tmp_path / "r" / name
    trials = list((sweep / "trials").iterdir())
    assert len(trials) == 4
    for trial in trials:
        assert status(trial)["state"] == "done" and status(trial)["attempts"] == 1, status(trial)
    jobs = [rec["job_id"] for t in trials if (rec := read_submission(t))]
    assert len(set(jobs)) == 4  # each trial in a task of its own
    # Every task that went out has its pickle: four, so no task was submitted twice (or lost).
    assert len(list((sweep / "slurm").glob("*/*_submitted.pkl"))) == 4
    print(f"launcher took {took:.0f} s")


def test_a_controller_full_of_other_jobs_is_tried_a_bounded_number_of_times(
    tmp_path: Path, full_slurm: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLURM_CONF", full_slurm["SLURM_CONF"])
    monkeypatch.setattr(wait, "TOPUP_EVERY_S", 0)  # a try at every poll of the queue (2 s) instead of every minute
    monkeypatch.setattr(wait, "TOPUP_TRIES_WITHOUT_ROOM", 2)
    other = f"o{uuid.uuid4().hex[:8]}"
    # 2 records: the controller (MaxJobCount=3) takes no more, and held jobs never leave. One is
    # sent from a script named like submitit's, as a retry that sbatch_once stopped too late would be.
    late = tmp_path / f".submission_file_{uuid.uuid4().hex}.sh"
    late.write_text("#!/bin/sh\ntrue\n")
    held = []
    for script in (late, "--wrap=true"):
        out = subprocess.run(["sbatch", "--hold", "-J", other, "-o", "/dev/null", str(script)], capture_output=True, text=True, timeout=60)
        held.append(out.stdout.split()[-1])
    try:
        name = f"t{uuid.uuid4().hex[:8]}"
        grid = write_grid(tmp_path, name, "epochs: 1", "  seed: [0, 1]\n")
        profile = write_profile(tmp_path, wait=True)
        assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")]) == EXIT_UNSUBMITTED
        err = capsys.readouterr().err
        assert "slurm: 2 trials (2 tasks) wait in the launcher: the SLURM controller is full (MaxJobCount" in err, err
        assert "slurm: stopped waiting for room: 2 tries 0 s apart found none" in err, err
        assert "2 trials (2 tasks) not submitted: run the same command again later to top up" in err
        trials = list((tmp_path / "r" / name / "trials").iterdir())
        assert len(trials) == 2 and not any((t / SUBMITTED).exists() for t in trials)
        assert all(status(t).get("attempts", 0) == 0 for t in trials)
        # The safety net of a late stop: the job sent from that script (and only it) is cancelled.
        from orchestrator.backends.slurm import sbatch_once  # here: the first test also runs on a launcher without it

        sbatch_once.cancel_orphans([str(late)])
        queued = subprocess.run(["squeue", "-h", "--name", other, "-o", "%i"], capture_output=True, text=True, timeout=60).stdout.split()
        assert sorted(queued) == sorted(held[1:]), (held, queued)
    finally:
        subprocess.run(["scancel", "--name", other], capture_output=True, timeout=60)
