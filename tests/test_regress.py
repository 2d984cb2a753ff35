"""The performance regression guard (benchmarks.regress) catches a slowed collector, and passes an unslowed one.

Self-calibrating: the figures it compares with are recorded in the test itself, on this machine, a
moment before; so a slower CI box cannot make it fail, and the slowdown injected (CPU burnt in the
collector's file scans, BENCH_REGRESS_SLOW_SCAN) is several times the recorded figure, far beyond
any noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--trials", "20", "--epochs", "3", "--only", "collect", "--repeat", "1"]


def regress(tmp_path: Path, *extra: str, slow: float = 0.0) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BENCH_REGRESS_SLOW_SCAN": str(slow)}
    cmd = [sys.executable, "-m", "benchmarks.regress", *SMALL, "--records", str(tmp_path / "rec.json"), "--work", str(tmp_path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_machine_kind_names_the_cpu_count():
    from benchmarks.regress import machine_kind

    assert machine_kind().endswith(f" x {len(os.sched_getaffinity(0))}")


@pytest.mark.slow
def test_guard_fails_on_a_slowed_collector_and_passes_an_unslowed_one(tmp_path):
    out = regress(tmp_path)
    assert out.returncode == 0 and "no figures recorded for machine kind" in out.stdout, out.stdout + out.stderr
    assert regress(tmp_path, "--record").returncode == 0
    recorded = json.loads((tmp_path / "rec.json").read_text())
    (figures,) = (k["figures"] for k in recorded["kinds"].values())
    # Two scans (epochs, layers), each burning the whole recorded CPU time: at least 3x in all.
    slowed = regress(tmp_path, "--margin", "1.0", slow=figures["collect"])
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    assert "regression: collect (+" in slowed.stderr and "margin +100%) slower than recorded" in slowed.stderr
    unslowed = regress(tmp_path, "--margin", "1.0")
    assert unslowed.returncode == 0 and "ok" in unslowed.stdout, unslowed.stdout + unslowed.stderr
