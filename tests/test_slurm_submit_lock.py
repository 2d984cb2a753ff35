"""One launcher at a time submits a sweep's trials (orchestrator/backends/slurm/submit_lock.py).

Without SLURM: the lock itself (waits for its holder, names it, gives up after its bound, is free
once its holder is killed, re-entrant in one process) and the one scancel helper. On the test
SLURM (`scripts/local_slurm.sh start`): two real launchers of one sweep started together submit
each trial once; a top-up of `wait: true` leaves out what another launcher submitted, and submits
nothing after orchestrator.cancel; orchestrator.cancel waits for a submission under way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.backends.slurm.launcher import Submitter
from orchestrator.backends.slurm.sbatch import job_name
from orchestrator.backends.slurm.sbatch_once import scancel
from orchestrator.backends.slurm.submit_lock import LOCK, submitting
from orchestrator.profiles import load_profile
from trainer.errors import UserError

from helpers import ROOT, job_of, wait_until, write_grid, write_profile

HOLD = """import sys, time, pathlib
from orchestrator.backends.slurm.submit_lock import submitting
with submitting(pathlib.Path(sys.argv[1])):
    pathlib.Path(sys.argv[2]).touch()
    while not pathlib.Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


def _holder(sweep: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Another process that holds the sweep's submit lock until `<tmp>/go` exists; returns it and that path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(sweep), str(tmp_path / "held"), str(tmp_path / "go")], env=env)
    wait_until(lambda: (tmp_path / "held").exists(), 60, "the other process holds the lock")
    return proc, tmp_path / "go"


def test_the_submit_lock_waits_for_its_holder_names_it_and_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    proc, go = _holder(sweep, tmp_path)
    try:
        with pytest.raises(UserError) as err, submitting(sweep, wait_s=0.5):
            pass
        assert f"another launcher has held {sweep / LOCK} for over 0.5 s (pid {proc.pid} on " in str(err.value)
        assert "if that process is stuck, stop it and submit again" in str(err.value)
        assert f"another launcher is submitting this sweep's trials (pid {proc.pid} on" in capsys.readouterr().err
        go.touch()  # the holder's round ends while this one waits: it gets the lock then
        start = time.monotonic()
        with submitting(sweep, wait_s=60), submitting(sweep, wait_s=0):  # re-entrant within one process
            assert json.loads((sweep / LOCK).read_text())["pid"] == os.getpid()
        assert time.monotonic() - start < 30
        assert (sweep / LOCK).read_text() == ""  # released: no later waiter names this process as the holder
    finally:
        go.touch()
        proc.wait(timeout=60)
    # A holder killed outright leaves nothing stuck: the kernel drops its flock.
    (tmp_path / "held").unlink()
    go.unlink()
    proc, go = _holder(sweep, tmp_path)
    proc.kill()
    proc.wait(timeout=60)
    with submitting(sweep, wait_s=5):
        pass


def test_scancel_reads_a_job_already_gone_as_cancelled_and_names_any_other_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in scancel on PATH: a controller that refuses on demand is not something the test SLURM gives.
    calls = tmp_path / "calls"
    tool = tmp_path / "scancel"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    def says(text: str, code: int) -> None:
        tool.write_text(f'#!/bin/sh\necho "scancel $*" >> {calls}\nprintf "{text}" >&2\nexit {code}\n')
        tool.chmod(0o755)

    says("", 0)
    assert scancel(["12", "13"]) is None and calls.read_text().splitlines() == ["scancel 12 13"]  # one call for all
    says("scancel: error: Kill job error on job id 12: Invalid job id specified\\n", 1)
    assert scancel(["12", "13"]) is None  # it left the queue meanwhile: nothing to cancel
    says("scancel: error: Kill job error on job id 12: Invalid job id specified\\nscancel: error: Unable to contact slurm controller\\n", 1)
    assert scancel(["12", "13"]) == "scancel: scancel: error: Unable to contact slurm controller"
    says("", 1)
    assert scancel(["12"]) == "scancel: failed (exit code 1)"
    assert scancel([]) is None


def _queue(sweep: Path) -> list[str]:
    """The sweep's tasks in the queue (one id per task)."""
    out = subprocess.run(["squeue", "-h", "--array", "--name", job_name(sweep), "-o", "%i"], capture_output=True, text=True, timeout=60)
    return sorted(out.stdout.split())


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


@pytest.mark.slurm
def test_two_launchers_started_together_submit_each_trial_once(tmp_path: Path, sweep_name: str) -> None:
    # Launcher A stops (SIGSTOP) with its array submitted and still held, before its trials record
    # it: the moment a second launcher would read them as unsubmitted and A's array as one a
    # killed launcher left behind. B must wait for A's round and then submit nothing.
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1, 2]\n")
    profile = write_profile(tmp_path, sbatch_extra=["--begin=now+1hour"])  # nothing runs: the queue is what is checked
    args = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = {k: open(tmp_path / f"{k}.err", "w") for k in "ab"}  # noqa: SIM115 (closed below)
    a = subprocess.Popen(args, env={**env, "SWEEP_FAULT": "slurm-release:1:STOP"}, stdout=subprocess.DEVNULL, stderr=logs["a"])
    b = None
    try:
        wait_until(lambda: _stopped(a.pid), 120, "launcher A stops with its array held")
        b = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=logs["b"])
        said = lambda: (tmp_path / "b.err").read_text()
        wait_until(lambda: "another launcher is submitting this sweep's trials" in said(), 120, "launcher B waits for A")
        time.sleep(1)
        assert b.poll() is None, said()
        os.kill(a.pid, signal.SIGCONT)
        assert a.wait(timeout=120) == 0, (tmp_path / "a.err").read_text()
        assert b.wait(timeout=120) == 0, said()
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
        for log in logs.values():
            log.close()
    err_a, err_b = (tmp_path / "a.err").read_text(), (tmp_path / "b.err").read_text()
    assert "slurm: submitted 3 trials as 1 job array(s)" in err_a, err_a
    assert "submitted" not in err_b.replace("not submitted again", ""), err_b
    assert "slurm: 3 trials already queued or running" in err_b, err_b
    assert "cancelled" not in err_a + err_b, (err_a, err_b)
    trials = sorted((tmp_path / "r" / sweep_name / "trials").iterdir())
    arrays = {job_of(t).split("_")[0] for t in trials}
    queue = _queue(tmp_path / "r" / sweep_name)
    assert len(arrays) == 1 and queue == sorted(job_of(t) for t in trials), (arrays, queue)


@pytest.mark.slurm
def test_a_top_up_leaves_out_what_another_launcher_submitted_and_nothing_goes_out_after_a_cancel(
    tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.sweep import main as sweep_main
    from trainer.cli import cli

    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1, 2]\n")
    profile = write_profile(tmp_path, sbatch_extra=["--begin=now+1hour"])
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")]) == 0
    sweep = tmp_path / "r" / sweep_name
    trials = sorted((sweep / "trials").iterdir())
    jobs = sorted(job_of(t) for t in trials)
    capsys.readouterr()
    # A launcher that waited for room with these three trials: another launcher has submitted them since.
    submitter = Submitter(load_profile(profile), sweep)
    assert submitter.top_up([[[t]] for t in trials]) == []
    err = capsys.readouterr().err
    assert "slurm: 3 of the trials waiting for room were submitted or run by another launcher meanwhile" in err, err
    assert _queue(sweep) == jobs and submitter.job_ids == []

    # orchestrator.cancel waits for a submission under way (it would miss its jobs), then cancels.
    proc, go = _holder(sweep, tmp_path)
    command = [sys.executable, "-m", "orchestrator.cancel", str(sweep), "--wait-s", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cancel = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert cancel.poll() is None and _queue(sweep) == jobs
    finally:
        go.touch()
        proc.wait(timeout=60)
    out, errs = cancel.communicate(timeout=120)
    assert cancel.returncode == 0, errs
    assert "another launcher is submitting this sweep's trials" in errs and "3 queued and 0 running SLURM job(s) cancelled" in out, out
    wait_until(lambda: not _queue(sweep), 60, "the jobs leave the queue")
    # Waiting for room when the cancel came: the launcher submits nothing more.
    capsys.readouterr()
    assert submitter.top_up([[[t]] for t in trials]) == []
    assert "slurm: the sweep was cancelled (orchestrator.cancel); 3 trials not submitted" in capsys.readouterr().err
    assert submitter.job_ids == []
