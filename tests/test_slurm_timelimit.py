"""Time limits are not failures: requeues after progress are not capped, requeues without progress are.

    python -m pytest tests/test_slurm_timelimit.py

On the real local SLURM: a trial much longer than its jobs' time limit (cut to one minute at run
time, twice, with `scontrol update TimeLimit=1`: SLURM itself sends the USR2 warning) with
`max_requeues: 0` still finishes, because each run trained further; the task stopped its worker
at an optimizer step (SIGUSR1, a mid-epoch checkpoint) before each requeue. The accounting
itself (progress or not, the cap) is checked on real trial folders without a cluster.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import submitit

from orchestrator.backends.slurm import squeue
from orchestrator.backends.slurm.job import REQUEUES, TrialJob
from trainer.status import Status, read_status, write_status

from helpers import job_log, job_state, scontrol, status, submit_long_trial, wait_until


def requeue_record(trial: Path) -> dict:
    return json.loads((trial / REQUEUES).read_text())


def set_status(trial: Path, **fields: object) -> None:
    status = read_status(trial)
    status.update(**fields)
    write_status(trial, status)


def test_requeues_count_against_the_cap_only_without_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    trial = tmp_path / "trial"
    trial.mkdir()
    write_status(trial, Status(state="interrupted", epoch=2))
    job = TrialJob(max_requeues=1, max_attempts=3)

    def start(restarts: int) -> str | None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
        job.__setstate__(pickle.loads(pickle.dumps(job)).__getstate__())  # a requeued run: the pickle's settings, fresh state
        return job._count_start(trial)

    assert start(0) is None and requeue_record(trial)["position"] == [2, 0]
    set_status(trial, epoch=4)  # this run trained two epochs
    assert isinstance(job.checkpoint([[str(trial)]]), submitit.helpers.DelayedSubmission)
    assert start(1) is None
    assert {k: requeue_record(trial)[k] for k in ("requeues", "progress_requeues", "counted_requeues")} == {
        "requeues": 1, "progress_requeues": 1, "counted_requeues": 0,
    }  # fmt: skip
    # A mid-epoch stop further into the next epoch is progress too.
    set_status(trial, last_interruption="2026-01-01T00:00:00+00:00: time limit: checkpointed in epoch 5 at step 3 of 7")
    assert isinstance(job.checkpoint([[str(trial)]]), submitit.helpers.DelayedSubmission)
    assert start(2) is None and requeue_record(trial)["counted_requeues"] == 0 and requeue_record(trial)["position"] == [4, 3]
    # No progress (the time ran out before a step): requeued once more, and that one counts.
    assert isinstance(job.checkpoint([[str(trial)]]), submitit.helpers.DelayedSubmission)
    assert start(3) is None and requeue_record(trial)["counted_requeues"] == 1
    # No progress again with the cap used: no requeue, the trial ends failed saying why.
    assert job.checkpoint([[str(trial)]]) is None and job._why == "cap"
    with pytest.raises(RuntimeError, match="requeued 1 times"):
        job._stop([trial])
    st = read_status(trial)
    assert (st.state, st.error_kind) == ("failed", "requeues")
    assert st.error is not None
    assert st.error.startswith("requeued 1 times (time limit / preemption) and hit the time limit again without progress")


def test_a_first_stop_without_progress_says_so_without_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "8")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    trial = tmp_path / "trial"
    trial.mkdir()
    write_status(trial, Status(state="interrupted", epoch=2))
    job = TrialJob(max_requeues=0, max_attempts=3)
    assert job._count_start(trial) is None
    assert job.checkpoint([[str(trial)]]) is None and job._why == "cap"
    assert job._message == "hit the time limit without progress; max_requeues is 0"


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_requeues_beyond_max_requeues_finish_a_long_trial(tmp_path: Path, sweep_name: str) -> None:
    sweep, trial, job, epochs = submit_long_trial(tmp_path, sweep_name, 80, max_requeues=0)

    trained = [-1]  # epochs done before the last cut
    for cut in (1, 2):
        wait_until(lambda: status(trial).get("state") == "running" and status(trial).get("epoch", -1) > trained[0], 180, f"training {cut}")
        scontrol("update", f"JobId={job}", "TimeLimit=1")
        wait_until(lambda: job_state(job) == "PENDING" or status(trial)["state"] == "done", 150, f"time limit {cut}")
        assert status(trial)["state"] != "done", f"{epochs} epochs ended before time limit {cut}: make the trial longer"
        scontrol("update", f"JobId={job}", "TimeLimit=10")  # the next run is not cut short as well
        assert requeue_record(trial)["last_stop"] == "time limit, after progress"
        trained[0] = status(trial)["epoch"]
    wait_until(lambda: not squeue([job]), 300, "the job finishes")

    st, rec = status(trial), requeue_record(trial)
    assert st["state"] == "done", st  # max_requeues 0, yet two time-limit requeues: each after progress
    assert (rec["requeues"], rec["progress_requeues"], rec["counted_requeues"]) == (2, 2, 0), rec
    log = job_log(sweep, job) + (trial / "trainer.log").read_text()
    assert log.count("time limit ahead; requeueing") == 2 and "stopped: time limit: checkpointed in epoch" in log
