"""The Ray Tune backend against a real local Ray (no mocks): `python -m pytest -m ray`.

Each sweep runs `python -m orchestrator.sweep --backend ray` in a subprocess (its own session),
which starts a private Ray in a short temp dir of its own and stops it on exit; a subprocess that
overruns is killed with its whole process group. Nothing here runs `ray stop`.

Faults are real: a trial's worker process is SIGKILLed mid-training (as an OOM kill or a lost
node would), and a trial with lr 1e6 really produces a non-finite loss in its first epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[tune]'); the Ray backend tests need it")

from orchestrator.grid import load_grid
from trainer.errors import ProfileError
from trainer.status import observe

from helpers import wait_until

pytestmark = pytest.mark.ray
CLI_TIMEOUT_S = 150


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def ray_profile(tmp_path: Path) -> Iterator[Path]:
    """A ray profile for this test: 2 CPUs, 1 per trial, its own short temp dir (AF_UNIX paths <= 107 bytes)."""
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    yield _write(
        tmp_path / "ray.yaml",
        f"backend: ray\nnum_cpus: 2\ncpus_per_trial: 1\nmax_attempts: 3\ndevice: cpu\ntemp_dir: {temp}\n",
    )
    shutil.rmtree(temp, ignore_errors=True)


def _start_sweep(grid: Path, profile: Path, results: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--backend", "ray",
           "--cluster", str(profile), "--results", str(results)]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        cmd, cwd=results.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # so an overrun can be killed with everything it started
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float = CLI_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"sweep overran {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


def _status(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "status.json").read_text())


def _epochs(folder: Path) -> list[int]:
    return pq.read_table(folder / "epochs.parquet", columns=["epoch"]).column("epoch").to_pylist()


def test_ray_sweep_lands_in_the_trial_folders_and_never_runs_a_done_trial_twice(tmp_path: Path, ray_profile: Path) -> None:
    grid = _write(
        tmp_path / "grid.yaml",
        "name: ray-digits\n"
        "fixed: {model: resnet20, dataset: digits, epochs: 2, batch_size: 128, lr: 0.1}\n"
        "sweep: {alpha: [-3, 0], seed: [0]}\n",
    )
    results = tmp_path / "results"
    code, out, err = _finish(_start_sweep(grid, ray_profile, results))
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"

    # The same trial ids (hence folders) as the local backend: both come from the grid's specs.
    expected = {spec.trial_id for spec in load_grid(grid).specs}
    trials = results / "ray-digits" / "trials"
    assert {p.name for p in trials.iterdir()} == expected
    for tid in expected:
        status = _status(trials / tid)
        assert (status["state"], status["attempts"], status["epoch"]) == ("done", 1, 2), status
        assert status["fused"] == 2  # the two alphas trained as one fused network, in one Tune trial
        assert _epochs(trials / tid) == [0, 1, 2]
    # Tune's own files sit apart, one folder per Tune trial (group) named by its first trial_id.
    launches = list((results / "ray-digits" / ".ray").iterdir())
    first = next(s.trial_id for s in load_grid(grid).specs)
    assert len(launches) == 1 and {p.name for p in launches[0].iterdir() if p.is_dir()} == {f"{first}+1"}
    assert "ray: 2 done" in out
    assert "epochs 4/4" in err  # the progress line counts the trials' epochs (2 trials x 2), from their status.json

    before = {tid: (trials / tid / "status.json").read_bytes() for tid in expected}
    code, out, err = _finish(_start_sweep(grid, ray_profile, results))
    assert code == 0, err
    assert "nothing to run" in out
    assert {tid: (trials / tid / "status.json").read_bytes() for tid in expected} == before
    assert len(list((results / "ray-digits" / ".ray").iterdir())) == 1  # no second launch happened


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@pytest.fixture(scope="module")
def fault_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One sweep of two trials: lr 0.1 (its worker is SIGKILLed after epoch 1) and lr 1e6 (diverges)."""
    tmp = tmp_path_factory.mktemp("faults")
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    profile = _write(tmp / "ray.yaml", f"backend: ray\nnum_cpus: 2\ncpus_per_trial: 1\nmax_attempts: 3\ndevice: cpu\ntemp_dir: {temp}\n")
    grid = _write(
        tmp / "grid.yaml",
        "name: ray-faults\nfixed: {model: resnet20, dataset: digits, epochs: 6, batch_size: 128}\nsweep: {lr: [0.1, 1e6]}\n",
    )
    healthy, diverging = (s.trial_id for s in sorted(load_grid(grid).specs, key=lambda s: s.lr))
    trials = tmp / "results" / "ray-faults" / "trials"
    proc = _start_sweep(grid, profile, tmp / "results")
    killed_after: int | None = None
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        while killed_after is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                status = _status(trials / healthy)
                holder = json.loads((trials / healthy / ".lock").read_text())
            except (OSError, ValueError):
                continue  # not started yet
            # Only a Ray worker under our sweep process: never anything we did not start.
            trained = status.get("state") == "running" and (status.get("epoch") or 0) >= 1
            if trained and holder["pid"] != proc.pid and _descends_from(holder["pid"], proc.pid):
                os.kill(holder["pid"], signal.SIGKILL)
                killed_after = status["epoch"]
        code, out, err = _finish(proc, max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    yield {"trials": trials, "healthy": healthy, "diverging": diverging, "killed_after": killed_after,
           "code": code, "out": out, "err": err}  # fmt: skip


def test_a_killed_trial_is_retried_by_tune_and_resumes_from_its_checkpoint(fault_sweep: dict[str, Any]) -> None:
    f = fault_sweep
    log = f"stdout:\n{f['out']}\nstderr:\n{f['err']}"
    assert f["killed_after"] is not None and f["killed_after"] < 6, "the trial ended before it could be killed\n" + log
    folder = f["trials"] / f["healthy"]
    status = _status(folder)
    assert (status["state"], status["attempts"], status["epoch"]) == ("done", 2, 6), status
    assert _epochs(folder) == list(range(7))  # resumed: one row per epoch, none twice
    assert "restarting from its checkpoint" in f["err"], log


def test_a_diverged_trial_fails_once_and_is_not_retried(fault_sweep: dict[str, Any]) -> None:
    f = fault_sweep
    status = _status(f["trials"] / f["diverging"])
    assert (status["state"], status["error_kind"], status["attempts"], status["retryable"]) == ("failed", "diverged", 1, False), status
    assert "non-finite" in status["error"]
    assert f["code"] == 1, f["err"]  # not every trial is done; the launcher itself did not crash
    assert f"{f['diverging']} failed after 1 attempt(s)" in f["out"]


# ---- a trial that no node can hold --------------------------------------------------------------------
GRID = "name: ray-fit\nfixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256}\nsweep: {alpha: [0]}\n"


@pytest.mark.parametrize(
    ("profile", "env", "said"),
    [
        ("cpus_per_trial: 64\n", {}, "key 'cpus_per_trial' is 64: more CPUs than the local Ray has ({cpus}, what this machine has)"),
        ("num_cpus: 1\ncpus_per_trial: 2\n", {}, "key 'cpus_per_trial' is 2: more CPUs than the local Ray has (1, key 'num_cpus')"),
        ("gpus_per_trial: 1\n", {"CUDA_VISIBLE_DEVICES": ""}, "key 'gpus_per_trial' is 1: more GPUs than the local Ray has (0, "),
        (
            "num_gpus: 2\n",
            {"CUDA_VISIBLE_DEVICES": "0"},
            "key 'num_gpus' is 2: more GPUs than CUDA_VISIBLE_DEVICES shows (1)",
        ),
        ("address: auto\nnum_cpus: 2\n", {}, "key(s) 'num_cpus' apply to a local Ray only, and key 'address' joins a cluster"),
        ("device: cuda\n", {}, "key 'gpus_per_trial' is 0 but the trials' device is cuda"),
    ],
)
def test_a_trial_no_local_ray_could_hold_is_one_line_before_anything_is_written(
    tmp_path: Path, profile: str, env: dict[str, str], said: str
) -> None:
    # Before, such a trial was refused only after its folders were written and Ray started (or, for
    # num_gpus, ray.init failed with a traceback): now the preflight asks what the local Ray would get.
    from ray._private.utils import get_num_cpus

    grid, path = _write(tmp_path / "grid.yaml", GRID), _write(tmp_path / "ray.yaml", "backend: ray\n" + profile)
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(path), "--results", str(tmp_path / "r")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=tmp_path,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore", **env})  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"error: {path}: {said.format(cpus=get_num_cpus())}"), run.stderr
    assert "allowed: " in run.stderr and not (tmp_path / "r").exists()


def test_an_address_with_no_ray_behind_it_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    # `auto` with no cluster and a ray:// with nothing there were refused only after the trial folders
    # were written, naming no key; a port where something else listens hung ray.init for minutes.
    grid = _write(tmp_path / "grid.yaml", GRID)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    for address, said in (
        ("auto", "cannot join it (ConnectionError: Could not find any running Ray instance"),
        (f"127.0.0.1:{port}", "nothing answers there ("),
        (f"ray://127.0.0.1:{port}", "cannot join it ("),
    ):
        path = _write(tmp_path / "ray.yaml", f"backend: ray\naddress: {address}\ncpus_per_trial: 1\ndevice: cpu\n")
        cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(path), "--results", str(tmp_path / "r")]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=tmp_path, env=env)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith(f"error: {path}: key 'address' is {address!r}: {said}"), run.stderr
        assert "allowed: the address of a running Ray cluster" in run.stderr and not (tmp_path / "r").exists()


def test_a_port_that_is_not_rays_is_refused_within_its_bound() -> None:
    from orchestrator.backends.ray import _check_connects

    server = socket.socket()  # accepts and never answers, as a web server on the wrong port would to Ray's gRPC
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(ProfileError, match=r"no Ray cluster answered there within 15 s \(a port that is not Ray's\?\)"):
            _check_connects(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=15)
        assert time.monotonic() - start < 40
    finally:
        server.close()


def test_the_trackers_settings_go_with_the_job_to_a_clusters_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A node's processes have the environment of its `ray start`: MLFLOW_TRACKING_URI, WANDB_MODE set
    # for the launcher never reached the trials on a cluster (their MLflow runs went elsewhere).
    from orchestrator.backends.ray import _PACKAGES, _runtime_env

    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "WANDB_")) or k == "SWEEP_TRACKERS_WAIT_S"]:
        monkeypatch.delenv(key)
    assert _runtime_env(ship_code=False) is None  # nothing to send: the job as before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/mlflow.db")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("SWEEP_TRACKERS_WAIT_S", "60")
    monkeypatch.setenv("HOME_OF_SOMETHING_ELSE", "x")
    want = {"MLFLOW_TRACKING_URI": "sqlite:////shared/mlflow.db", "WANDB_MODE": "offline", "SWEEP_TRACKERS_WAIT_S": "60"}
    assert _runtime_env(ship_code=False) == {"env_vars": want}
    assert _runtime_env(ship_code=True) == {"py_modules": [str(p) for p in _PACKAGES], "env_vars": want}


def test_too_small_names_what_a_trial_needs_and_what_the_nodes_have() -> None:
    from orchestrator.backends.ray import too_small

    nodes = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}]
    assert too_small({"CPU": 1, "GPU": 1}, nodes) is None and too_small({"CPU": 1, "GPU": 0.25}, nodes) is None
    assert (
        too_small({"CPU": 2, "GPU": 0}, nodes)
        == "no live node has 2 CPU and 0 GPU for one trial (the nodes: 2 x 1 CPU and 0 GPU; 1 x 1 CPU and 1 GPU)"
    )
    assert too_small({"CPU": 1, "GPU": 0}, []) == "no live node has 1 CPU and 0 GPU for one trial (the nodes: none)"


def test_on_a_cluster_whose_nodes_are_all_too_small_the_launch_says_so_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # A cluster may grow (an autoscaler adds nodes for waiting trials), so the launch is not refused:
    # it says in one line why nothing starts, and Ctrl-C ends it with every trial still to run.
    head, temp, port = _start_head(num_cpus=1)
    try:
        grid = _write(tmp_path / "grid.yaml", GRID)
        profile = _write(tmp_path / "ray.yaml", f"backend: ray\naddress: 127.0.0.1:{port}\ncpus_per_trial: 2\ndevice: cpu\n")
        proc = _start_sweep(grid, profile, tmp_path / "results")
        lines: list[str] = []
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        wait_until(lambda: any("no live node has" in line for line in lines) or proc.poll() is not None, 120, "the launcher's line")
        said = next((line for line in lines if "no live node has" in line), "".join(lines))
        why = "no live node has 2 CPU and 0 GPU for one trial (the nodes: 1 x 1 CPU and 0 GPU)"
        assert said.startswith(f"ray: cluster 127.0.0.1:{port}: {why}") and "Ctrl-C" in said, said
        time.sleep(3)  # Tune is waiting for room
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.read()  # drained: the launcher never blocked on it
        reader.join(timeout=10)
        # Ctrl-C: exit 130 once no trial runs (none could start here), not a crash
        assert code == 130 and "Traceback" not in "".join(lines), "".join(lines)
        trial = next((tmp_path / "results" / "ray-fit" / "trials").iterdir())
        assert observe(trial).state == "pending" and not (trial / "status.json").exists()  # never started, no attempt used
        # its one line ("interrupted: each trial checkpoints ..."), then trainer.cli's for exit 130
        assert [line.strip() for line in lines if line.startswith("interrupted")][-1] == "interrupted", "".join(lines)
    finally:
        head.terminate()  # `ray start --block` stops its own processes on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def _start_head(num_cpus: int) -> tuple[subprocess.Popen[bytes], str, int]:
    """A Ray head of this test's own (own ports, short temp dir), blocking in the foreground; never `ray stop`."""
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
    port = 28000 + os.getpid() % 100 * 10
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", f"--port={port}", f"--dashboard-agent-listen-port={port + 2}",
           f"--dashboard-agent-grpc-port={port + 3}", f"--runtime-env-agent-port={port + 4}", f"--metrics-export-port={port + 5}",
           f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", "--block",
           f"--temp-dir={temp}"]  # fmt: skip
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + 60
    while not any((Path(temp) / "session_latest" / "sockets").glob("raylet*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
        time.sleep(0.5)
    return proc, temp, port


def test_ctrl_c_checkpoints_and_records_the_trials_then_exits_130(tmp_path: Path, ray_profile: Path) -> None:
    # Tune's own Ctrl-C handling let the trials train on for seconds, then killed them without a
    # record ("ended without a word"), exited 1 and advised `Tuner.restore(...)`. Now the trials stop
    # at their next step as on `orchestrator.cancel`, recorded, and a relaunch resumes them.
    grid = _write(tmp_path / "grid.yaml", "name: ray-int\nfixed: {epochs: 40, batch_size: 256}\nsweep: {seed: [0, 1]}\n")
    results = tmp_path / "results"
    proc = _start_sweep(grid, ray_profile, results)
    trials = results / "ray-int" / "trials"
    wait_until(lambda: any(observe(t).state == "running" and (observe(t).epoch or 0) >= 2 for t in trials.iterdir())
               if trials.is_dir() else False, 240, "a trial trains")  # fmt: skip
    proc.send_signal(signal.SIGINT)  # the launcher only: on a cluster the trials are out of the terminal's reach
    code, out, err = _finish(proc)
    assert code == 130, err
    assert "interrupted: each trial checkpoints at its next step and stops" in err and "Tuner.restore" not in err, err
    assert "finish on their own" not in out + err, out
    states = [observe(t) for t in trials.iterdir()]
    assert {s.state for s in states} <= {"interrupted", "pending"} and any(s.state == "interrupted" for s in states), states
    for s in states:
        if s.state == "interrupted":
            assert "checkpointed in epoch" in (s.status.last_interruption or ""), s.status
    assert not (results / "ray-int" / "cancel.json").exists()  # withdrawn: the next launch runs
