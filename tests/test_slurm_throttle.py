"""The sweep-wide throttle holds across chunked arrays and across launches, on the real local SLURM.

    python -m pytest tests/test_slurm_throttle.py

`max_running_tasks: 1` with `max_array_size: 2`: six one-trial tasks go out as three arrays by
two launches (the second adds two trials while the first's two arrays still wait). The cluster has two
CPUs and each task asks for one, so without the throttle two tasks would run at once; the test
follows the queue (squeue) and the trials' own start and end times, and no two ever overlap.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.backends.slurm.sbatch import job_name
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli

from helpers import status, write_grid, write_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def running_tasks(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "--name", name, "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return len(out.stdout.split())


def queued_tasks(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "--name", name, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return len(out.stdout.split())


def test_at_most_n_tasks_of_the_sweep_run_at_once_across_arrays_and_launches(tmp_path: Path, sweep_name: str) -> None:
    profile = write_profile(tmp_path, max_running_tasks=1, max_array_size=2)
    results = tmp_path / "r"
    first = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1, 2, 3]\n")
    assert cli(sweep_main, ["--grid", str(first), "--cluster", str(profile), "--results", str(results)]) == 0  # 2 arrays
    second = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1, 2, 3, 4, 5]\n")
    assert cli(sweep_main, ["--grid", str(second), "--cluster", str(profile), "--results", str(results)]) == 0  # 2 more trials
    sweep = results / sweep_name
    scripts = sorted(sweep.glob("slurm/*/*_submission.sh"), key=lambda s: int(s.parent.name))
    texts = [s.read_text() for s in scripts]
    assert len(texts) == 3 and all("#SBATCH --array=0-1%1\n" in t for t in texts)  # three arrays of two, one task at a time
    arrays = [s.parent.name for s in scripts]
    assert "--dependency" not in texts[0]
    assert f"#SBATCH --dependency=afterany:{arrays[0]}\n" in texts[1]  # the second array waits for the first
    assert f"#SBATCH --dependency=afterany:{arrays[0]}:{arrays[1]}\n" in texts[2]  # the next launch waits for all queued

    name, most, deadline = job_name(sweep), 0, time.monotonic() + 420
    while queued_tasks(name) and time.monotonic() < deadline:
        most = max(most, running_tasks(name))
        time.sleep(0.3)
    assert not queued_tasks(name), "the sweep did not finish in time"
    assert most == 1  # seen from SLURM's side

    spans = []
    for trial in (sweep / "trials").iterdir():
        st = status(trial)
        assert st["state"] == "done", st
        started = json.loads((trial / "requeues.json").read_text())["started"]  # the task began with it
        spans.append((started, st["ended"]))
    spans.sort()
    assert len(spans) == 6
    for (_, ended), (started, _) in zip(spans, spans[1:]):
        assert started >= ended, spans  # seen from the trials' side: each began after the previous ended
