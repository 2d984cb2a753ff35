"""Trial results do not depend on how a trial was launched (trainer/threads.py).

One digits trial, trained alone (`--fuse 1`: the dense engine), run with `--max-parallel 1`,
`--max-parallel 2` and under Ray gets its worker 2, 1 and 2 threads from the launchers (on a
2-core machine); before the trial fixed its own count, the runs differed in every CSI and loss
column after one epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trainer.spec import SpecError, TrialSpec

GRID = """name: thr
fixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256, device: cpu, keep_checkpoints: []}
sweep: {alpha: [-5]}
"""
TIMING = {"seconds", "eval_seconds", "images_per_s"}  # wall-clock columns: never equal between runs


def _sweep(tmp: Path, name: str, *args: str) -> Path:
    results = tmp / name
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(tmp / "grid.yaml"), "--results", str(results), *args]
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert done.returncode == 0, f"{name}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    (trial,) = (results / "thr" / "trials").iterdir()
    return trial


@pytest.mark.slow
@pytest.mark.ray
def test_one_trial_gives_bitwise_the_same_parquet_however_it_was_launched(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    (tmp_path / "grid.yaml").write_text(GRID)
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's sockets need a short path
    try:
        (tmp_path / "ray.yaml").write_text(f"backend: ray\nnum_cpus: 2\ncpus_per_trial: 2\ndevice: cpu\ntemp_dir: {temp}\n")
        runs = {
            "one": _sweep(tmp_path, "one", "--max-parallel", "1", "--fuse", "1"),
            "two": _sweep(tmp_path, "two", "--max-parallel", "2", "--fuse", "1"),
            "ray": _sweep(tmp_path, "ray", "--backend", "ray", "--cluster", str(tmp_path / "ray.yaml"), "--fuse", "1"),
        }
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    for name, folder in runs.items():
        assert json.loads((folder / "status.json").read_text())["threads"] == 1, name  # recorded in provenance
    base = runs["one"]
    for name in ("two", "ray"):
        for table in ("epochs.parquet", "layers.parquet", "units.parquet"):
            a, b = pq.read_table(base / table), pq.read_table(runs[name] / table)
            differ = [c for c in a.column_names if c not in TIMING and not a.column(c).equals(b.column(c))]
            assert not differ, f"{name} vs --max-parallel 1: {table} differs in {differ}"


def test_threads_is_a_resource_out_of_the_trial_id() -> None:
    assert TrialSpec(threads=4).trial_id == TrialSpec().trial_id
    with pytest.raises(SpecError, match="field 'threads' is 0; allowed: 1 to"):
        TrialSpec(threads=0)


def test_trial_threads_fixed_on_cpu_left_on_gpu() -> None:
    import torch

    from trainer.threads import trial_threads

    assert trial_threads(None, torch.device("cpu")) == 1
    assert trial_threads(3, torch.device("cpu")) == 3
    assert trial_threads(None, torch.device("cuda")) is None
