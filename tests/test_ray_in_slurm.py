"""Ray inside a SLURM allocation (scripts/ray_in_slurm.sbatch) on the real local SLURM: start, sweep, stop.

    python -m pytest tests/test_ray_in_slurm.py

The test submits the shipped script with sbatch (one node, two CPUs), as a user would, waits for
the job, and checks that a digits grid ran to done through `--backend ray` against the Ray
cluster the job started, and that every Ray process that cluster started is gone afterwards
(none mentions its temp dir) while the other Rays on the machine (other tests, other users) run on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed")

from orchestrator.backends.slurm import squeue

from helpers import ROOT, status

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.slow]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_ray_cluster_in_an_allocation_runs_a_grid_and_stops_cleanly(slurm: None, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: ray-in-slurm\nfixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256}\nsweep: {alpha: [-1, 0]}\n")
    profile = tmp_path / "ray.yaml"
    profile.write_text("backend: ray\naddress: auto\ncpus_per_trial: 1\ngpus_per_trial: 0\ndevice: cpu\nfuse: 1\nmax_attempts: 2\n")
    results = tmp_path / "results"
    bystander, bystander_temp = start_bystander_ray()  # another Ray of this user on the node: it must outlive the job's
    out = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--time=10", f"--output={out}", f"--chdir={ROOT}",
         f"--export=ALL,SWEEP_PYTHON={sys.executable}", "--job-name=ray-in-slurm-test",
         str(ROOT / "scripts" / "ray_in_slurm.sbatch"), "--grid", str(grid), "--cluster", str(profile), "--results", str(results)],
        capture_output=True, text=True, check=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    temp = f"/tmp/ray-{job}"
    try:
        deadline = time.monotonic() + 400
        saw_ray = False
        while squeue([job]) and time.monotonic() < deadline:
            saw_ray = saw_ray or bool(processes_mentioning(temp))
            time.sleep(0.5)
        assert not squeue([job]), f"the job did not finish in time\n{out.read_text() if out.exists() else ''}"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
        alive = any("raylet" in p for p in processes_mentioning(bystander_temp))
        bystander.terminate()  # `ray start --block` stops its own processes on SIGTERM
        bystander.wait(timeout=60)
        shutil.rmtree(bystander_temp, ignore_errors=True)
    log = out.read_text()
    assert saw_ray, log  # the job's Ray really ran (its processes carried its temp dir)
    assert (results / "ray-in-slurm" / "trials").is_dir(), log  # the sweep wrote its trials
    trials = list((results / "ray-in-slurm" / "trials").iterdir())
    assert len(trials) == 2 and all(status(t)["state"] == "done" for t in trials), log
    assert "ray_in_slurm: 1 node(s) up" in log and "ray: 2 done" in log and "sweep exited with 0" in log, log
    time.sleep(1)
    assert processes_mentioning(temp) == [], "Ray processes of the job outlived it"
    assert not Path(temp).exists()
    assert alive  # only the job's own Ray was stopped (by PID, never `ray stop`)


def start_bystander_ray() -> tuple[subprocess.Popen[bytes], str]:
    """A Ray head of our own (its own ports and short temp dir), blocking in the foreground."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    port = 29000 + os.getpid() % 500 * 10
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", f"--port={port}", f"--dashboard-agent-listen-port={port + 2}",
           f"--dashboard-agent-grpc-port={port + 3}", f"--runtime-env-agent-port={port + 4}", f"--metrics-export-port={port + 5}",
           "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats", "--block", f"--temp-dir={temp}"]  # fmt: skip
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + 60
    while not processes_mentioning(temp) or not any("raylet" in p for p in processes_mentioning(temp)):
        assert proc.poll() is None and time.monotonic() < deadline, "the bystander Ray did not start"
        time.sleep(0.5)
    return proc, temp
