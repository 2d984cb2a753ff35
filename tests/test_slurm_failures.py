"""Every outcome lands in the trial folder: failures before a trial starts, and kills inside a job.

    bash scripts/local_slurm.sh start && eval "$(bash scripts/local_slurm.sh env)"
    python -m pytest tests/test_slurm_failures.py

On the real local SLURM, no mocks: a `python:` that does not exist and a setup line that fails
(both end the job before its code runs: only the launcher and orchestrator.status can record
them, from SLURM's queue and the job's stderr), and a trial's worker SIGKILLed inside its job
(the job records it). And the options of a GPU site, as the real sbatch parses them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.status import main as status_main
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.status import observe

from helpers import ROOT, job_of, scontrol, status, wait_until, write_grid, write_profile

pytestmark = pytest.mark.slurm


def sweep_cmd(grid: Path, profile: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(profile), "--results", str(results)]


@pytest.mark.slow
def test_wrong_python_fails_the_trials_with_the_reason_and_a_rerun_stops_at_max_attempts(tmp_path: Path, sweep_name: str) -> None:
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    profile = write_profile(tmp_path, wait=True, python="/nonexistent/bin/python3", max_attempts=2)
    cmd = sweep_cmd(grid, profile, tmp_path / "r")
    sweep = tmp_path / "r" / sweep_name

    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert first.returncode == 1, first.stderr  # not every trial is done: non-zero
    trials = sorted((sweep / "trials").iterdir())
    for t in trials:
        st = status(t)
        assert (st["state"], st["error_kind"], st["attempts"], st["retryable"]) == ("failed", "setup", 1, True), st
        assert st["error"].startswith(f"job {job_of(t)} ended before its trials started: ")
        assert "execve(): /nonexistent/bin/python3: No such file or directory" in st["error"]
        log = st["error"].rsplit("(log: ", 1)[1].rstrip(")")
        assert Path(log).is_file() and log == st["log"] and "/nonexistent/bin/python3" in Path(log).read_text()
        assert f"{t.name} failed after 1 attempt(s): job " in first.stderr

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)  # one more attempt each
    assert second.returncode == 1 and {status(t)["attempts"] for t in trials} == {2}
    scripts = len(list(sweep.glob("slurm/*/*_submission.sh")))
    third = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert third.returncode == 1 and "nothing to run" in third.stdout and "submitted" not in third.stderr
    assert len(list(sweep.glob("slurm/*/*_submission.sh"))) == scripts  # no job submitted: the rerun does not loop


@pytest.mark.slow
def test_a_failing_setup_line_is_recorded_by_status_and_queued_trials_show_their_job(
    tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0]\n")
    # --begin (a site option through sbatch_extra) keeps the job queued until the test lets it go.
    setup = ["echo preparing", "source /nonexistent/venv/bin/activate", "echo never"]
    profile = write_profile(tmp_path, setup=setup, sbatch_extra=["--begin=now+3600"])
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")]) == 0  # submits, exits
    sweep = tmp_path / "r" / sweep_name
    (trial,) = (sweep / "trials").iterdir()
    job = job_of(trial)
    capsys.readouterr()
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "1 trials: 0 done, 0 running, 0 interrupted, 0 pending, 1 queued, 0 failed" in out, out
    assert f"queued (job {job})" in out
    rows = [json.loads(line) for line in _status_json(sweep).splitlines()]
    assert (rows[0]["state"], rows[0]["job"], rows[0]["queue"]) == ("pending", job, "PENDING")
    scontrol("update", f"JobId={job}", "StartTime=now")
    wait_until(lambda: not _in_queue(job), 120, "the job runs and leaves the queue")

    capsys.readouterr()
    assert cli(status_main, [str(sweep)]) == 0  # status sees the job gone, the trial never started: records it
    out = capsys.readouterr()
    st = status(trial)
    assert (st["state"], st["error_kind"], st["attempts"]) == ("failed", "setup", 1), st
    assert "sweep: setup failed (exit code 1): source /nonexistent/venv/bin/activate" in st["error"]
    assert f"(log: {sweep}/slurm/{job}/{job}_0_log.err)" in st["error"]
    assert "1 failed" in out.out and "setup failed" in out.err  # what was recorded is said once, on stderr
    assert json.loads((trial / "slurm_job.json").read_text())["settled"]
    assert cli(status_main, [str(sweep)]) == 0 and status(trial)["attempts"] == 1  # settled once: no second attempt counted


def _status_json(sweep: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.status", str(sweep), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120
    ).stdout  # fmt: skip


def _in_queue(job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30).stdout.strip())


@pytest.mark.slow
def test_a_worker_sigkilled_inside_its_job_is_recorded_and_resumed(tmp_path: Path, sweep_name: str) -> None:
    grid = write_grid(tmp_path, sweep_name, "seed: 0", "  epochs: [12]\n")
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(write_profile(tmp_path)), "--results", str(tmp_path / "r")]) == 0
    sweep = tmp_path / "r" / sweep_name
    (trial,) = (sweep / "trials").iterdir()
    job = job_of(trial)
    wait_until(lambda: status(trial).get("epoch", 0) >= 1 and observe(trial).state == "running", 180, "an epoch trained")
    holder = json.loads((trial / ".lock").read_text())["pid"]  # the worker process (trainer.group) in the job
    assert "trainer.group" in Path(f"/proc/{holder}/cmdline").read_text().replace("\0", " ")
    os.kill(holder, signal.SIGKILL)  # what the OOM killer does
    wait_until(lambda: not _in_queue(job), 240, "the job finishes")

    st = status(trial)
    assert st["state"] == "done" and st["attempts"] == 2, st  # restarted from its checkpoint inside the same job
    said = st["last_interruption"]
    assert "worker killed by SIGKILL (out of memory? the kernel's OOM killer sends SIGKILL) in epoch" in said, said
    assert f"(log: {trial}/trainer.log) (job {job}, job log {sweep}/slurm/{job}/{job}_0_log.err)" in said, said


def test_site_options_are_accepted_by_sbatch(slurm: None, tmp_path: Path) -> None:
    # The options of a GPU site, adapted to this cluster (its node, its two fake GPUs): sbatch --test-only parses them all.
    from orchestrator.backends.slurm import render_sbatch
    from orchestrator.profiles import load_profile

    profile = write_profile(
        tmp_path, gres="gpu:2", cpus_per_trial=None, cpus_per_gpu=1, mem_gb=None, mem_per_gpu_gb=0.25, exclusive=True,
        nodelist=_node(), comment="selectivity sweep (alpha x seed)", mail_type="FAIL,TIME_LIMIT_80", mail_user="me@example.org",
        sbatch_extra=["--gpu-bind=closest", "--nice=10"], constraint=None, setup=["echo ready"],
    )  # fmt: skip
    script = tmp_path / "site.sbatch"
    script.write_text(render_sbatch(load_profile(profile), tmp_path / "site", tmp_path / "%j", 3))
    out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "to start at" in out.stderr, out.stderr


def _node() -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30).stdout.split()[0]
