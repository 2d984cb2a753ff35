"""Shared fixtures. Trainer section: small digits specs and a helper that runs `python -m trainer.run`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import cancel_sweep_jobs, slurm_down_reason

# One intra-op thread unless told otherwise: on a shared 2-core machine, two busy-waiting OpenMP
# threads per process made a 3-epoch digits trial 8x slower (54 s vs 7 s) under load. Set before
# torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Data set manifests (ImageNet) go to a folder of this test session, never the user's ~/.cache.
os.environ["SWEEP_CACHE_DIR"] = tempfile.mkdtemp(prefix="sweep-cache-")
if "torch" in sys.modules:  # imported already (by a plugin): set it directly
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# ---- per-test time bounds (pytest-timeout) ---------------------------------------------------------
# pyproject's `timeout` (600 s) bounds every test; the ones that wait on SLURM's scheduler or start a
# Ray cluster get this instead: their own waits add up to 12 minutes (test_slurm_failures: three
# launches of at most 240 s each; test_ray_in_slurm: a 400 s deadline after the job starts).
LONG_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None and (item.get_closest_marker("slurm") or item.get_closest_marker("ray")):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))


# ---- trainer ----------------------------------------------------------------------------------
def _cli_env(data_root: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"  # stderr must hold only the trainer's own line
    env.pop("SWEEP_DATA_ROOT", None)
    if data_root is not None:
        env["SWEEP_DATA_ROOT"] = str(data_root)
    return env


@pytest.fixture
def trainer_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m trainer.run --spec <path>` to completion; returns the CompletedProcess (text)."""

    def run(spec_path: Path, data_root: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "trainer.run", "--spec", str(spec_path)],
            cwd=spec_path.parent, env=_cli_env(data_root), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    return run


@pytest.fixture
def write_spec() -> Callable[..., Path]:
    """Write a trial spec (TrialSpec fields; digits defaults) as <folder>/spec.json; returns its path."""
    import json

    def write(folder: Path, **fields: Any) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "spec.json"
        path.write_text(json.dumps(fields))
        return path

    return write


# ---- SLURM ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_down_reason()
    if reason:
        pytest.skip(f'SLURM not up ({reason}): run scripts/local_slurm.sh start; eval "$(scripts/local_slurm.sh env)"')


@pytest.fixture
def sweep_name(slurm: None) -> Iterator[str]:
    """A unique sweep name; its jobs (job names sweep-<name>...) are cancelled after the test."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    cancel_sweep_jobs(name)
