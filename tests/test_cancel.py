"""`python -m orchestrator.cancel results/<sweep>` on a local launch: the running trial checkpoints
and stops as on a time limit, the rest never start, no attempt is used, and the next launch
finishes every trial. (SLURM's side runs on the multi-node cluster: tests/test_slurm_multinode.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.status import observe

from helpers import ROOT, status, wait_until

EPOCHS = 25  # digits epochs take ~0.4 s here: the cancel (a new Python, ~2 s, more under load) must land mid-trial


@pytest.mark.slow
def test_cancel_a_local_launch_then_relaunch_finishes_everything(tmp_path: Path) -> None:
    epochs = EPOCHS
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"name: cancelme\nfixed: {{model: resnet20, dataset: digits, batch_size: 256, epochs: {epochs}}}\nsweep:\n  seed: [0, 1]\n"
    )
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--results", str(tmp_path / "r"), "--max-parallel", "1"]
    cmd += ["--fuse", "1"]
    sweep = tmp_path / "r" / "cancelme"

    def trials() -> list[Path]:
        return sorted((sweep / "trials").iterdir()) if (sweep / "trials").is_dir() else []

    with open(tmp_path / "launcher.log", "w") as log:  # a file, not a pipe nobody reads while it runs
        launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(status(t).get("epoch", 0) >= 1 for t in trials()), 180, "a trial trained an epoch")
        out = subprocess.run([sys.executable, "-m", "orchestrator.cancel", str(sweep), "--wait-s", "120"], capture_output=True,
                             text=True, cwd=ROOT, timeout=200)  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 1 and "1 trial(s) stopped at a checkpoint, 1 not started; no attempt used" in lines[0], out.stdout
        assert launcher.wait(timeout=120) == 1  # the launcher ended on its own: not every trial is done
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
    states = {t: status(t) for t in trials()}
    (stopped,) = [t for t, st in states.items() if st.get("state") == "interrupted"]
    st = states[stopped]
    assert st["attempts"] == 1 and st["last_interruption"].startswith(tuple("0123456789")), st
    assert "cancelled (orchestrator.cancel)" in st["last_interruption"] and "checkpointed in epoch" in st["last_interruption"]
    assert all(observe(t).state in ("pending", "interrupted") for t in states)
    assert (sweep / "cancel.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr
    assert not (sweep / "cancel.json").exists()
    finals = {t: status(t) for t in trials()}
    assert {s["state"] for s in finals.values()} == {"done"}
    # One start each (the stopped trial's resume is its second start); the cancel itself used none.
    assert {t.name: s["attempts"] for t, s in finals.items()} == {t.name: 2 if t == stopped else 1 for t in finals}
    assert json.loads((stopped / "status.json").read_text())["epoch"] == epochs


def test_job_outcomes_from_accounting_and_stderr() -> None:
    from orchestrator.backends.slurm.queue import CANCELLED, FAILED, REQUEUE, _expand, outcome, parse_sacct, summarize

    assert outcome("CANCELLED by 0, exit code 0:0", None, False) == CANCELLED
    assert outcome("PREEMPTED, exit code 0:0", None, False) == outcome("NODE_FAIL, exit code 0:0", None, False) == REQUEUE
    assert outcome("OUT_OF_MEMORY, exit code 0:125", None, False) == outcome("FAILED, exit code 1:0", None, False) == FAILED
    assert outcome("TIMEOUT, exit code 0:0", None, False) is None and outcome("COMPLETED, exit code 0:0", None, False) is None
    assert outcome(None, None, True) == CANCELLED  # orchestrator.cancel's mark, no accounting
    cancelled_line = "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 ***"
    assert outcome(None, cancelled_line, False) == CANCELLED
    assert outcome(None, cancelled_line.replace(" ***", " DUE TO TIME LIMIT ***"), False) is None
    assert _expand("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"] and _expand("12_3") == ["12_3"]
    # As the test SLURM's slurmdbd listed an array whose running task ended on its own after its two
    # waiting tasks were cancelled: the array's row kept its range as submitted, the task's own row wins.
    rows = "146_0|COMPLETED|0:0\n146_0.batch|COMPLETED|0:0\n146_[0-2%1]|CANCELLED by 0|0:0\n"
    assert parse_sacct(rows) == {"146_0": "COMPLETED, exit code 0:0", "146_1": "CANCELLED by 0, exit code 0:0",
                                 "146_2": "CANCELLED by 0, exit code 0:0"}  # fmt: skip
    notes = [f"t{i}: cancelled: job 1_{i} cancelled" for i in range(995)] + [f"f{i}: failed: job 2_{i} ended" for i in range(5)]
    lines = summarize(notes)
    assert len(lines) == 5 and lines[0].startswith("recorded what 1000 trials' jobs could not: 995 cancelled (no attempt used), 5 failed")
    assert lines[-1] == "  ... and 2 more (orchestrator.status --json shows each)"


@pytest.mark.parametrize("wait", ["-5", "nan", "inf"])
def test_a_wait_that_is_not_a_bounded_number_of_seconds_is_refused_before_anything_is_written(
    wait: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cancel import main
    from trainer.cli import cli

    (tmp_path / "trials").mkdir()
    assert cli(main, [str(tmp_path), "--wait-s", wait]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --wait-s {float(wait)}: allowed: seconds from 0 to "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials"]  # no cancel request, no lock


def test_a_finished_sweep_has_nothing_to_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.synthetic import write_trial
    from orchestrator.cancel import main
    from orchestrator.grid import load_grid
    from trainer.cli import cli

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: fin\nfixed: {epochs: 2}\nsweep: {alpha: [0, 1]}\n")
    sweep = tmp_path / "fin"
    for spec in load_grid(grid).specs:
        write_trial(sweep, spec, units=False)
    assert cli(main, [str(sweep), "--wait-s", "0"]) == 0
    assert capsys.readouterr().out.strip() == "fin: nothing to cancel: no launcher, trial or SLURM job of the sweep is running or queued"
    assert all(observe(f).state == "done" for f in (sweep / "trials").iterdir())
    assert not (sweep / "cancel.json").exists()  # the request is withdrawn


def test_an_idle_unfinished_sweep_has_nothing_to_cancel_and_keeps_its_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep stopped earlier (Ctrl-C): interrupted and pending trials, no launcher. The cancel said
    "3 trial(s) stopped at a checkpoint" and wrote "cancelled" into trials it never stopped."""
    from benchmarks.synthetic import write_trial
    from orchestrator.cancel import main
    from orchestrator.grid import load_grid
    from orchestrator.sweep_lock import launching
    from trainer.cli import cli
    from trainer.status import read_status, write_status

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: idle\nfixed: {epochs: 2}\nsweep: {alpha: [0, 1, 2]}\n")
    sweep = tmp_path / "idle"
    specs = load_grid(grid).specs
    for spec in specs:
        write_trial(sweep, spec, units=False)
    stopped, pending = (sweep / "trials" / specs[0].trial_id), (sweep / "trials" / specs[1].trial_id)
    status = read_status(stopped)
    status.update(state="interrupted", last_interruption="2026-12-07T10:00:00: interrupted by SIGINT")
    write_status(stopped, status)
    (pending / "status.json").unlink()
    before = {f: (f / "status.json").read_bytes() for f in (stopped,)}
    assert cli(main, [str(sweep), "--wait-s", "0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "idle: nothing to cancel: no launcher, trial or SLURM job of the sweep is running or queued " \
        "(2 unfinished trial(s) wait for the next python -m orchestrator.sweep of its grid)"  # fmt: skip
    assert before == {f: (f / "status.json").read_bytes() for f in (stopped,)} and not (sweep / "cancel.json").exists()
    # With a live launcher of the sweep (its trials waiting for a worker) the cancel goes ahead.
    with launching(sweep):
        assert cli(main, [str(sweep), "--wait-s", "0"]) == 0
    assert "cancelled: 1 trial(s) stopped at a checkpoint, 1 not started" in capsys.readouterr().out


def test_a_launch_that_begins_while_the_cancel_waits_is_left_alone(tmp_path: Path) -> None:
    """Seen on SLURM: a relaunch while the cancel still waited for a running trial; at its deadline the
    cancel scancelled the new launch's jobs (their trials failed, attempts used) and said "no attempt used"."""
    import subprocess
    import sys
    import time

    from benchmarks.synthetic import write_trial
    from orchestrator.grid import load_grid
    from trainer.status import read_status, write_status

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: race\nfixed: {epochs: 2}\nsweep: {alpha: [0, 1]}\n")
    sweep = tmp_path / "race"
    specs = load_grid(grid).specs
    for spec in specs:
        write_trial(sweep, spec, units=False)
    running = sweep / "trials" / specs[0].trial_id
    status = read_status(running)
    status.update(state="running")
    write_status(running, status)
    before = (running / "status.json").read_bytes()
    # A trial that keeps running (its process holds its lock and ignores the request, as a new launch's would)
    hold = "import sys, time; from pathlib import Path; from trainer.lock import TrialLock\n" \
        "with TrialLock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(running)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cancel = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cancel", str(sweep), "--wait-s", "45"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not (sweep / "cancel.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the cancel is in its wait now
        (sweep / "cancel.json").unlink()  # what a new `orchestrator.sweep` of the grid does first (clear_request)
        out, err = cancel.communicate(timeout=30)  # it ends at once, not at its 45 s deadline
        assert cancel.returncode == 1, err
        assert out.strip() == "race: a new launch of the sweep began while the cancel waited: it runs now, and is left alone"
        assert (running / "status.json").read_bytes() == before  # no "cancelled" note in the new launch's trial
    finally:
        holder.kill()
        holder.wait()


def test_a_time_limit_before_slurms_warning_is_recorded_as_a_time_limit(tmp_path: Path) -> None:
    """slurmctld checks limits about every 30 s, so a short time_min's USR2 window can be missed: the
    job then ends at its limit with SIGTERM, and the trial said "SIGTERM (preempted, requeued or cancelled)"."""
    from benchmarks.synthetic import write_trial
    from orchestrator.backends.slurm.queue import SUBMITTED, JobView, settle
    from orchestrator.grid import load_grid
    from trainer.results import write_json
    from trainer.status import read_status, write_status

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: tl\nfixed: {epochs: 50}\n")
    sweep = tmp_path / "tl"
    (spec,) = load_grid(grid).specs
    write_trial(sweep, spec, units=False)
    folder = sweep / "trials" / spec.trial_id
    status = read_status(folder)
    stopped = "2026-12-07T19:58:52: SIGTERM (preempted, requeued or cancelled); checkpointed in epoch 5 at step 3"
    status.update(state="interrupted", last_interruption=stopped)
    write_status(folder, status)
    logs = tmp_path / "logs"
    logs.mkdir()
    killed = "slurmstepd: error: *** JOB 987654321 ON vm CANCELLED AT 2026-12-07T19:58:52 DUE TO TIME LIMIT ***\n"
    (logs / "987654321_0_log.err").write_text(killed)
    (logs / "987654321_started.json").write_text("{}")
    write_json({"job_id": "987654321", "log_folder": str(logs), "submitted": "2026-12-07T19:50:00"}, folder / SUBMITTED)
    (note,) = settle([folder], {folder: JobView("987654321", None)})
    after = read_status(folder)
    assert after.state == "interrupted" and "reached its time limit before SLURM's warning (USR2) came" in (after.last_interruption or "")
    assert (after.last_interruption or "").endswith(stopped)  # the checkpoint note stays: progress is measured from it
    assert note.startswith(f"{spec.trial_id}: interrupted: ")
