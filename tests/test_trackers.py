"""Trackers with the real packages, offline: TensorBoard event files read back with its own reader,
W&B in offline mode (its run file read back), MLflow with a local SQLite store (searched with its
client). A kill and resume logs no step twice; a tracker failing on every call changes no result."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainer import results as R
from trainer.spec import SpecError, TrialSpec

from helpers import assert_same_results

ROOT = Path(__file__).resolve().parents[1]
# Two epochs; early dynamics in epoch 1 (a mid-epoch evaluation every 2 steps): the fractional points.
FIELDS = {"sweep": "tk", "epochs": 2, "batch_size": 256, "alpha": -5.0, "eval_every_steps": 2, "eval_until_epoch": 1}


def make_trial(root: Path, **fields: Any) -> Path:
    spec = TrialSpec.from_dict({**FIELDS, **fields})
    folder = root / "trials" / spec.trial_id
    folder.mkdir(parents=True)
    R.write_json(spec.to_dict(), folder / R.SPEC)
    return folder


def run_trial(folder: Path, env: dict[str, str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env, **({"SWEEP_FAULT": fault} if fault else {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer.run", "--spec", str(folder / R.SPEC)], env=env, capture_output=True, text=True, timeout=600
    )


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SWEEP_TRACKERS_WAIT_S": "600",  # a loaded test machine starts W&B and MLflow slowly; wait for them here
    }  # fmt: skip


def wandb_records(folder: Path, latest: bool = False) -> list[Any]:
    """The records of the trial's offline W&B runs (the last one only if `latest`): a LevelDB-style log of protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    paths = sorted(glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb")))
    for path in paths[-1:] if latest else paths:
        data, block, pos, partial = Path(path).read_bytes(), 32768, 7, b""  # 7: the file header
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block  # a block's tail too short for a header is padding
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if length == 0 and kind == 0:
                pos += block - pos % block
                continue
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            partial = chunk if kind in (1, 2) else partial + chunk
            if kind in (1, 4):  # full, or last piece
                record = pb.Record()
                record.ParseFromString(partial)
                records.append(record)
    return records


@pytest.mark.slow
def test_three_trackers_offline_and_a_kill_logs_no_step_twice(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the trackers extra is not installed")
    pytest.importorskip("wandb", reason="the trackers extra is not installed")
    pytest.importorskip("mlflow", reason="the trackers extra is not installed")
    folder = make_trial(tmp_path, trackers=["tensorboard", "wandb", "mlflow"])
    env = offline_env(tmp_path)
    from mlflow.tracking import MlflowClient

    # The store exists before the trial, as a team's store would: a kill during MLflow's creation
    # of a new SQLite store's tables leaves a store MLflow itself cannot open again.
    MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).search_experiments()
    killed = run_trial(folder, env, fault="rows-written:2")  # epoch 2's rows written, its checkpoint not: SIGKILL
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = run_trial(folder, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: tracker" not in done.stdout + done.stderr, done.stdout
    assert "still busy" not in done.stdout, done.stdout
    assert "epoch 2/2 | train" in done.stdout  # the per-epoch log line
    tid = folder.name

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    events.Reload()
    assert [e.step for e in events.Scalars("test/acc")] == [0, 1, 2]  # epoch 2 replayed after the kill, logged once
    assert [e.step for e in events.Scalars("csi/mean")] == [0, 1, 2] and "csi/stage1.block1" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("early/test/acc")] == [2, 4]  # optimizer steps inside epoch 1 (5 per epoch)
    assert events.PluginTagToContent("hparams")  # the trial's fields, for TensorBoard's hparams panel

    # W&B's points count as logged once its run finished: the resumed attempt's run holds them all.
    records = wandb_records(folder, latest=True)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {(r.run_id, r.run_group) for r in runs} == {(tid, "tk")}
    assert {u.key: u.value_json for u in runs[0].config.update}["alpha"] == "-5.0"
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert sorted(h["epoch"] for h in history if "test/acc" in h) == [0, 1, 2]
    assert sorted(h["epoch"] for h in history if "early/test/acc" in h) == [0.4, 0.8]  # fractional epochs

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tk")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == tid and run.data.params["alpha"] == "-5.0" and run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test/acc")) == [0, 1, 2]


@pytest.mark.slow
def test_a_tracker_failing_on_every_call_changes_no_result(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the trackers extra is not installed")
    plain = make_trial(tmp_path / "plain", epochs=1, eval_every_steps=0, eval_until_epoch=0)
    tracked = make_trial(tmp_path / "tracked", epochs=1, eval_every_steps=0, eval_until_epoch=0, trackers=["mlflow"])
    assert run_trial(plain, {}).returncode == 0
    out = run_trial(tracked, {"MLFLOW_TRACKING_URI": "nosuchscheme://nowhere"})  # MLflow raises on every call
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("warning: tracker mlflow for trial") == 1, out.stdout
    assert json.loads((tracked / R.STATUS).read_text())["state"] == "done"
    assert_same_results(plain, tracked)  # every column but the wall-clock ones, exactly


def test_trackers_field_is_checked_and_never_in_the_trial_id() -> None:
    base = TrialSpec.from_dict(FIELDS)
    assert TrialSpec.from_dict({**FIELDS, "trackers": ["tensorboard", "mlflow"]}).trial_id == base.trial_id
    assert "trackers" not in base.row_fields()
    with pytest.raises(SpecError, match="field 'trackers' has 'neptune'; allowed: tensorboard, wandb, mlflow"):
        TrialSpec.from_dict({**FIELDS, "trackers": ["neptune"]})
    with pytest.raises(SpecError, match="'wandb' twice"):
        TrialSpec.from_dict({**FIELDS, "trackers": ["wandb", "wandb"]})


OPEN_MLFLOW = """
import sys, time
from pathlib import Path
from trainer.spec import TrialSpec
from trainer.trackers import MLflow
spec = TrialSpec.from_dict({"sweep": "race", "seed": int(sys.argv[2])})
folder = Path(sys.argv[1]) / spec.trial_id
folder.mkdir(parents=True)
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # every process at once
tracker = MLflow()
tracker.open(spec, folder, first=True)
tracker.close()
"""


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_store_at_once_all_get_their_run(tmp_path: Path) -> None:
    # Two workers creating a new store's tables at once lost their runs (CommandError: "Online
    # migration expected to match one row", "table _alembic_tmp_params already exists"), and once
    # left a store MLflow could not open again; with a store made, two creating the sweep's
    # experiment at once raced too. MLflow's default store is such a new SQLite file.
    pytest.importorskip("mlflow", reason="the trackers extra is not installed")
    import time

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    start = time.time() + 8  # after every interpreter has imported MLflow
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_MLFLOW, str(tmp_path / "trials"), str(seed), str(start)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in outs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("race")
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 4


def test_a_trial_folder_keeps_its_own_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs were found by sweep and trial id alone: the same grid run into a second results folder,
    # or a damaged trial set aside and trained anew, logged into the first folder's run (every step
    # twice, then three times).
    pytest.importorskip("mlflow", reason="the trackers extra is not installed")
    from mlflow.tracking import MlflowClient

    from trainer.trackers import MLflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = TrialSpec.from_dict(FIELDS)
    a, b = tmp_path / "a" / spec.trial_id, tmp_path / "b" / spec.trial_id
    ids = []
    for folder, first in ((a, True), (b, True), (a, False)):  # A, then B (another results folder), then A resumed
        folder.mkdir(parents=True, exist_ok=True)
        tracker = MLflow()
        tracker.open(spec, folder, first=first)
        tracker.log(0, {"test/acc": 0.5}, 0.0, 0)
        tracker.close()
        ids.append(tracker.run_id)
    assert ids[0] != ids[1] and ids[2] == ids[0], ids
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tk").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(ids[:2]) and {r.info.run_name for r in runs} == {spec.trial_id}


def test_a_trackers_warning_is_one_line() -> None:
    from trainer.trackers import Feed

    said: list[str] = []
    feed = Feed([], 1, said.append)

    def fail() -> None:
        raise RuntimeError("(sqlite3.DatabaseError) file is not a database\n[SQL: SELECT name]\n(Background on this error at: x)")

    assert feed._call(TrialSpec.from_dict(FIELDS), "mlflow", fail) is False
    assert len(said) == 1 and "\n" not in said[0] and "file is not a database [SQL: SELECT name] (Background" in said[0], said


@pytest.mark.slow
def test_a_tracker_left_behind_does_not_hold_the_worker_past_its_bound(tmp_path: Path) -> None:
    # W&B online against a server that accepts and never answers (no network, a wrong WANDB_BASE_URL):
    # its run was left behind at the bound, then W&B's exit hooks held the process ~80 s more.
    pytest.importorskip("wandb", reason="the trackers extra is not installed")
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        folder = make_trial(tmp_path, epochs=1, eval_every_steps=0, eval_until_epoch=0, trackers=["wandb"])
        env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
        env.update({"WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}", "WANDB_API_KEY": "0" * 40,
                    "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "SWEEP_TRACKERS_WAIT_S": "20"})  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "trainer.run", "--spec", str(folder / R.SPEC)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert proc.stdout is not None
        lines, done_at = [], None
        for line in proc.stdout:
            lines.append(line)
            if done_at is None and ": done" in line:
                done_at = time.monotonic()
        assert proc.wait(timeout=300) == 0, "".join(lines)
        ended = time.monotonic()
    finally:
        server.close()
    said = "".join(lines)
    assert done_at is not None and "still busy after 20 s; left behind" in said, said
    assert ended - done_at < 10, f"{ended - done_at:.0f} s from done to exit:\n{said}"
    assert json.loads((folder / R.STATUS).read_text())["state"] == "done"
