"""A per-user submit limit: the launcher submits what fits, says what is left, and tops up.

    python -m pytest tests/test_slurm_limits.py

The local SLURM keeps no accounting, so QOS limits cannot be configured on it; an `sbatch` placed
first on PATH emulates one (MaxSubmitJobsPerUser = 2 tasks of the sweep in the queue) with SLURM's
own refusal text, and hands everything it lets through to the real sbatch. Four one-trial tasks:
the first launch (no wait) submits two and says two are left; the second (`wait: true`)
submits more as tasks leave the queue until all four are done.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, status, write_grid, write_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LIMIT = 2
WRAPPER = """#!/bin/bash
# sbatch with a QOS submit limit of {limit} queued tasks per job name, as SLURM refuses beyond it.
script="${{@: -1}}"
name=$(sed -n 's/^#SBATCH --job-name=//p' "$script")
last=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' "$script")
n=$(( ${{last:-0}} + 1 ))
queued=$(squeue -h -r --name="$name" -o %i | wc -l)
if (( queued + n > {limit} )); then
    echo "refused $n with $queued queued" >> {log}
    echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2
    echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" \\
        "(job submit limit, user's size and/or time limits)" >&2
    exit 1
fi
echo "accepted $n with $queued queued" >> {log}
exec {sbatch} "$@"
"""


def test_a_submit_limit_is_topped_up_until_every_trial_is_done(tmp_path: Path, sweep_name: str) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(WRAPPER.format(limit=LIMIT, log=log, sbatch=shutil.which("sbatch")))
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1, 2, 3]\n")
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--results", str(tmp_path / "r"), "--cluster"]
    sweep = tmp_path / "r" / sweep_name

    first = subprocess.run([*cmd, str(write_profile(tmp_path))], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert first.returncode == 3, first.stderr  # not finished: trials wait for room (sweep.EXIT_UNSUBMITTED)
    assert "slurm: submitted 2 trials as 1 job array(s)" in first.stderr
    assert "slurm: 2 trials (2 tasks) not submitted: the cluster's submit limit is reached (QOSMaxSubmitJobPerUserLimit" in first.stderr
    assert "run the same command again later to top up" in first.stderr
    assert sum((t / "slurm_job.json").exists() for t in (sweep / "trials").iterdir()) == 2
    assert log.read_text().splitlines()[:2] == ["refused 4 with 0 queued", "accepted 2 with 0 queued"]

    waiting = tmp_path / "waiting"
    waiting.mkdir()
    second = subprocess.run(
        [*cmd, str(write_profile(waiting, wait=True))], capture_output=True, text=True, cwd=ROOT, env=env, timeout=420
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "4 done, 0 failed of 4" in second.stdout
    # This launch runs the trials not done when it starts: the 2 left out, and those of the first
    # launch's 2 still queued or running then (1 epoch each); its line counts them all.
    lines = re.findall(r"(\d)/(\d) done, 0 failed, 0 running, epochs (\d)/(\d)", second.stderr)
    assert lines, second.stderr
    done, total, epochs, of = lines[-1]  # the last line: every trial of this launch done, every epoch counted
    assert done == total == epochs == of and 2 <= int(total) <= 4, second.stderr
    for trial in (sweep / "trials").iterdir():
        assert status(trial)["state"] == "done"
    said = log.read_text().splitlines()
    assert any(line.startswith("refused") for line in said[2:])  # the second launch met the limit too
    assert sum(int(line.split()[1]) for line in said if line.startswith("accepted")) == 4  # every task went out once
    assert all(int(line.split()[3]) + int(line.split()[1]) <= LIMIT for line in said if line.startswith("accepted"))
