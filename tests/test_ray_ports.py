"""The Ray ports of a ray_in_slurm job: from its job id, moved past any that another process holds."""

from __future__ import annotations

import socket
import subprocess
import sys

from orchestrator.backends.ray_ports import FIRST, OFFSETS, SLOTS, STEP, STRIDE, free, pick

from helpers import ROOT


def test_the_job_ids_ports_unless_another_process_holds_one() -> None:
    job = 4242
    first, second = (FIRST + (job + STEP * k) % SLOTS * STRIDE for k in (0, 1))
    if all(free(first + d) for d in OFFSETS):  # (on a shared machine something else might hold one)
        assert pick(job) == first
    for d in (0, 6):  # another user's Ray on this job's GCS port, then on its node manager port
        with socket.socket() as s:
            s.bind(("", first + d))
            s.listen()
            base = pick(job)
        assert base is not None and base != first
        if all(free(second + d) for d in OFFSETS):
            assert base == second  # the next candidate
    out = subprocess.run([sys.executable, "-m", "orchestrator.backends.ray_ports", str(job)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and int(out.stdout) == pick(job)
    bad = subprocess.run([sys.executable, "-m", "orchestrator.backends.ray_ports", "x"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")
