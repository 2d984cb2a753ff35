"""The SLURM backend on a real single-node SLURM (scripts/local_slurm.sh), no mocks.

CI starts the cluster and exports SLURM_CONF before pytest; without it the `slurm` tests skip.
Locally:  bash scripts/local_slurm.sh start && eval "$(bash scripts/local_slurm.sh env)"

Faults are injected for real: `scontrol requeue` (what a preemption does: SIGTERM, then SLURM
requeues the job), a time limit cut short at run time with `scontrol update TimeLimit=1` (SLURM
itself sends the USR2 warning and submitit requeues), and a stale job held back while another
launcher finishes its trial. The golden sbatch script and the chunking tests need no SLURM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.backends.slurm import REQUEUES, TrialJob, render_sbatch, squeue, submit
from orchestrator.backends.slurm.queue import sweep_arrays, unreleased
from orchestrator.backends.slurm.sbatch import chunked, job_name, parse_max_array_size, sbatch_parameters, signal_delay_s, sweep_tag
from orchestrator.folders import scan
from orchestrator.grid import load_grid
from orchestrator.profiles import load_profile
from orchestrator.status import main as status_main
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.errors import UserError
from trainer.lock import TrialLock
from trainer.status import observe

from helpers import (
    ROOT,
    assert_resumed,
    job_log,
    job_of,
    job_state,
    requeues,
    scontrol,
    snapshot_checkpointed_rows,
    status,
    submit_long_trial,
    trial_by_epochs,
    wait_until,
    write_grid,
    write_profile,
)

GOLDEN = Path(__file__).resolve().parent / "golden" / "slurm_example_site.sbatch"


# ---- no SLURM needed ----------------------------------------------------------------------------------
def test_golden_sbatch_script_of_example_site() -> None:
    profile = load_profile(ROOT / "cluster_configs" / "slurm" / "example-site.yaml")
    text = render_sbatch(profile, Path("/results/imagenet"), Path("/results/imagenet/slurm/%j"), n_tasks=15)
    text = text.replace(sys.executable, "<PYTHON>")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch script changed; review, then rerun with UPDATE_GOLDEN=1"


def test_sbatch_parameters_only_what_the_profile_sets(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path, gpus_per_task=2, time_min=1, setup=["module load x"]))
    params = sbatch_parameters(profile, tmp_path / "digits")
    assert {"account", "qos", "constraint"}.isdisjoint(params) and params["gpus_per_node"] == 2
    text = render_sbatch(profile, tmp_path / "digits", tmp_path / "%j", n_tasks=1)
    assert "--array" not in text and "#SBATCH --signal=USR2@7\n" in text and "\nmodule load x\n" in text
    assert "#SBATCH --job-name=sweep-digits\n" in text and "wckey" not in text
    assert job_name(tmp_path / "digits") == job_name("digits") == "sweep-digits"
    assert [signal_delay_s(m) for m in (1, 2, 10, 60, 600)] == [7, 15, 75, 90, 90]
    with pytest.raises(UserError, match="line break"):
        render_sbatch(profile, tmp_path / "digits", tmp_path / "a\nrm -rf x", n_tasks=2)
    with pytest.raises(UserError, match="cannot name a SLURM job"):
        job_name(tmp_path / "x; rm -rf ~")


def test_chunks_stay_within_max_array_size() -> None:
    assert [len(c) for c in chunked(list(range(23)), 11)] == [11, 11, 1]
    assert chunked(list(range(11)), 11) == [list(range(11))]
    assert chunked([], 11) == [] and chunked([1, 2], 1) == [[1], [2]]
    with pytest.raises(UserError):
        chunked([1], 0)
    config = "Configuration data as of 2026-11-21T20:00:00\nMaxArraySize            = 11\nMaxJobCount = 10000\n"
    assert parse_max_array_size(config) == 11 and parse_max_array_size("nothing") == 1001


def test_job_callable_pickles_without_run_state() -> None:
    import pickle

    job = TrialJob(max_requeues=2, max_attempts=3)
    job._why = "requeued"
    clone = pickle.loads(pickle.dumps(job))
    assert (clone.max_requeues, clone.max_attempts, clone._why) == (2, 3, None)


# ---- real SLURM -----------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_in_two_arrays_lands_in_trial_folders_and_runs_once(tmp_path: Path, sweep_name: str) -> None:
    # 12 trials > MaxArraySize 11: two submissions. data_root (a resource field, not in the trial id)
    # holds shell syntax: it must reach spec.json only, never the sbatch script.
    hostile = f"x$(touch {tmp_path}/pwned)`touch {tmp_path}/pwned2`;touch {tmp_path}/pwned3"
    grid = write_grid(tmp_path, sweep_name, f"epochs: 1, data_root: {json.dumps(hostile)}", "  seed: [0,1,2,3,4,5,6,7,8,9,10,11]\n")
    profile = write_profile(tmp_path, wait=True)  # fuse 1: one trial per task (fused groups: the test below)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(profile), "--results", str(results)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "12 trials as 2 job array(s)" in first.stderr and "12 done, 0 failed of 12" in first.stdout

    sweep = tmp_path / "results" / sweep_name
    states = scan(sweep)
    assert set(states) == {s.trial_id for s in load_grid(grid).specs}  # the local backend's folders
    assert {s.state for s in states.values()} == {"done"} and {s.attempts for s in states.values()} == {1}
    scripts = sorted(sweep.glob("slurm/*/*_submission.sh"))
    assert len(scripts) == 2
    texts = [s.read_text() for s in scripts]
    assert all(f"#SBATCH --job-name={job_name(sweep)}\n" in t for t in texts)
    assert sum("#SBATCH --array=0-10%2\n" in t for t in texts) == 1  # 11 tasks, 2 at a time
    assert all("pwned" not in t and "seed" not in t for t in texts)
    assert not list(tmp_path.glob("pwned*"))
    assert json.loads(next(iter(states.values())).folder.joinpath("spec.json").read_text())["data_root"] == hostile

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout and "submitted" not in again.stderr
    assert len(list(sweep.glob("slurm/*/*_submission.sh"))) == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_trial_resumes_and_requeue_cap_fails_the_other(
    tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # max_requeues 1: trial A is requeued once (resumes, finishes), trial B twice (failed).
    grid = write_grid(tmp_path, sweep_name, "seed: 0", "  epochs: [4, 40]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path, max_requeues=1)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 0  # submits and exits: the launcher is gone from here on
    sweep = tmp_path / "r" / sweep_name
    trials = trial_by_epochs(sweep)
    a, b = trials[4], trials[40]
    job_a, job_b = job_of(a), job_of(b)

    wait_until(lambda: status(a).get("epoch", 0) >= 1 and observe(a).state == "running", 120, "A trains an epoch")
    before = snapshot_checkpointed_rows(a)
    scontrol("requeue", job_a)
    wait_until(lambda: observe(b).state == "running", 60, "B running")
    scontrol("requeue", job_b)
    wait_until(lambda: requeues(b) == 1 and observe(b).state == "running", 120, "B running again after a requeue")
    scontrol("requeue", job_b)
    wait_until(lambda: not squeue([job_a, job_b]), 180, "both jobs leave the queue")

    st_a = status(a)
    assert st_a["state"] == "done" and st_a["attempts"] == 2 and requeues(a) == 1
    assert st_a["last_interruption"].startswith("SIGTERM (preempted, requeued or cancelled)")
    assert_resumed(a, before, epochs=4)
    assert re.search(r"requeues so far 1 \(max 1\), resuming after epoch [1-9]", job_log(sweep, job_a))
    st_b = status(b)
    assert st_b["state"] == "failed" and st_b["error_kind"] == "requeues"
    assert st_b["error"].startswith("requeued 2 times (time limit / preemption)")

    capsys.readouterr()
    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "2 trials: 1 done" in out and "1 failed" in out and "requeued 2 times" in out


@pytest.mark.slurm
@pytest.mark.slow
def test_fused_groups_are_array_tasks_and_a_preempted_group_resumes(tmp_path: Path, sweep_name: str) -> None:
    # 4 trials that differ in seed only, fuse 2: two array tasks of two fused trials each.
    grid = write_grid(tmp_path, sweep_name, "epochs: 8", "  seed: [0, 1, 2, 3]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path, fuse=2)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 0
    sweep = tmp_path / "r" / sweep_name
    specs = load_grid(grid).specs
    folders = [sweep / "trials" / s.trial_id for s in specs]
    jobs = [job_of(f) for f in folders]
    assert jobs[0] == jobs[1] and jobs[2] == jobs[3] and jobs[0] != jobs[2]  # the groups keep plan order
    first = folders[:2]

    wait_until(lambda: all(status(f).get("epoch", 0) >= 1 and observe(f).state == "running" for f in first), 120, "group 1 trains")
    before = [snapshot_checkpointed_rows(f) for f in first]
    scontrol("requeue", jobs[0])
    wait_until(lambda: not squeue(jobs), 240, "both tasks leave the queue")

    for f, rows in zip(first, before):
        st = status(f)
        assert (st["state"], st["attempts"], st["fused"]) == ("done", 2, 2), st
        assert st["last_interruption"].startswith("SIGTERM (preempted, requeued or cancelled)")
        assert_resumed(f, rows, epochs=8)
    for f in folders[2:]:
        st = status(f)
        assert (st["state"], st["attempts"], st["fused"]) == ("done", 1, 2), st
    log = job_log(sweep, jobs[0])
    assert all(f"{f.name}: job {jobs[0]}" in log for f in first) and "requeues so far 1" in log


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_requeues_and_resumes(tmp_path: Path, sweep_name: str) -> None:
    # The job starts with a 10-minute limit. Once the trial has a checkpoint the test cuts the limit
    # to 1 minute, so slurmctld's next time-limit check (every 30 s) finds the job inside its warning
    # window (USR2 75 s before the end) and signals it; submitit requeues it through
    # TrialJob.checkpoint. The trial is sized to outlast that check by a margin on this machine.
    sweep, trial, job, epochs = submit_long_trial(tmp_path, sweep_name, 45, time_min=10)

    wait_until(lambda: status(trial).get("epoch", 0) >= 1 and observe(trial).state == "running", 120, "an epoch")
    before = snapshot_checkpointed_rows(trial)
    scontrol("update", f"JobId={job}", "TimeLimit=1")
    wait_until(lambda: job_state(job) == "PENDING" or status(trial)["state"] == "done", 120, "the time-limit signal")
    assert status(trial)["state"] != "done", f"{epochs} epochs ended before the time-limit signal: make the trial longer"
    scontrol("update", f"JobId={job}", "TimeLimit=10")  # so the next run is not cut short as well
    interrupted = status(trial)
    assert interrupted["state"] == "interrupted" and interrupted["last_interruption"].startswith("time limit: requeued")
    wait_until(lambda: not squeue([job]), 240, "the job leaves the queue")

    st = status(trial)
    assert st["state"] == "done" and st["attempts"] == 2 and requeues(trial) == 1
    assert_resumed(trial, before, epochs=epochs)
    log = job_log(sweep, job)
    assert "Caught signal SIGUSR2" in log and "timed-out" in log and "time limit ahead; requeueing" in log


@pytest.mark.slurm
@pytest.mark.slow
def test_stale_jobs_never_rerun_a_trial(tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path, sweep_name, "seed: 0", "  epochs: [1]\n")
    results = tmp_path / "r"
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path)), "--results", str(results)]
    # A job holding both CPUs keeps ours pending until the test lets it go.
    blocker = subprocess.run(
        ["sbatch", "--parsable", "-c", "2", f"--job-name={job_name(results / sweep_name)}", "-o", "/dev/null", "--wrap", "sleep 300"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert cli(sweep_main, args) == 0
    sweep = results / sweep_name
    (trial,) = (sweep / "trials").iterdir()
    first = job_of(trial)
    capsys.readouterr()
    assert cli(sweep_main, args) == 0  # its job is still queued: not submitted twice
    assert "already queued or running" in capsys.readouterr().err and job_of(trial) == first
    # A stale duplicate (e.g. from a launcher that lost track), held back for now.
    (stale,) = submit([[trial]], load_profile(tmp_path / "profile.yaml"), sweep)
    scontrol("hold", stale)

    # 1. While another live process holds the trial, the job leaves it alone.
    with TrialLock(trial):
        subprocess.run(["scancel", blocker], check=True, timeout=60)
        wait_until(lambda: not squeue([first]), 120, "the first job runs and leaves")
    assert "leaving it to that process" in job_log(sweep, first)
    assert observe(trial).state == "pending" and not (trial / REQUEUES).exists()

    # 2. Another launcher (local) runs the trial to the end.
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert status(trial)["state"] == "done" and status(trial)["attempts"] == 1
    rows = (trial / "epochs.parquet").read_bytes()

    # 3. The stale job finally runs: it finds the trial done and does not train it again.
    scontrol("release", stale)
    wait_until(lambda: not squeue([stale]), 120, "the stale job runs and leaves")
    assert "already done; nothing to do" in job_log(sweep, stale)
    assert status(trial)["attempts"] == 1 and (trial / "epochs.parquet").read_bytes() == rows


@pytest.mark.slurm
def test_preflight_names_a_missing_partition(slurm: None, tmp_path: Path) -> None:
    from orchestrator.backends.slurm.preflight import preflight

    preflight(load_profile(write_profile(tmp_path)))
    with pytest.raises(UserError, match="partition 'nope': Partition nope not found"):
        preflight(load_profile(write_profile(tmp_path, partition="nope")))


@pytest.mark.slurm
def test_a_setting_slurm_refuses_is_one_line_naming_the_profile_before_anything_is_written(
    slurm: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Asked of the controller with `sbatch --test-only` (nothing is queued), not left to the submission.
    from orchestrator.backends.slurm.preflight import preflight

    grid = write_grid(tmp_path, "refused", "epochs: 1", "  seed: [0]\n")
    for key, value, said in (
        ("reservation", "nosuch", "key 'reservation' is 'nosuch': SLURM refuses it (Requested reservation is invalid); allowed: "),
        ("constraint", "nosuchfeature", "key 'constraint' is 'nosuchfeature': SLURM refuses it (Invalid feature specification); allowed: "),
        # Raw sbatch options: sbatch refused these only after the trial folders were written.
        ("sbatch_extra", ["--licenses=nosuch:1"], "key 'sbatch_extra' (--licenses=nosuch:1): sbatch refuses it (Invalid license"),
        ("sbatch_extra", ["--mem-bind=bogus"], "key 'sbatch_extra' (--mem-bind=bogus): sbatch refuses it (unrecognized --mem-bind"),
        ("sbatch_extra", ["--begin=notatime"], "key 'sbatch_extra' (--begin=notatime): sbatch refuses it (Invalid --begin specification)"),
        # the controller's refusal ("allocation failure") of an option only sbatch_extra sets: final too
        ("sbatch_extra", ["--batch=x"], "key 'sbatch_extra' (--batch=x): sbatch refuses it (Job --batch option is invalid"),
        # more than any node has: queued, it would pend for ever (BadConstraints); the plain task is accepted
        ("sbatch_extra", ["--mincpus=4096"], "key 'sbatch_extra' (--mincpus=4096): no node of the cluster can take a task with it"),
    ):
        profile = write_profile(tmp_path, **{key: value})
        results = tmp_path / "r"
        assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {profile}: {said}"), err
        assert not results.exists()
    # Its other refusals are not final: with every node drained it says "Requested node configuration
    # is not available", while a real submission queues and waits for a node. No refusal then. (An
    # account makes the preflight ask; this SLURM keeps no accounting, so any name is accepted.)
    nodes = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, timeout=60).stdout.split()
    scontrol("update", f"nodename={','.join(nodes)}", "state=drain", "reason=test-preflight")
    try:
        preflight(load_profile(write_profile(tmp_path, account="anyone")))
        preflight(load_profile(write_profile(tmp_path, sbatch_extra=["--begin=now+1hour"])))  # valid options: no refusal either
        preflight(load_profile(write_profile(tmp_path, sbatch_extra=["--mincpus=4096"])))  # the plain task is refused too: not final
    finally:
        scontrol("update", f"nodename={','.join(nodes)}", "state=resume")


@pytest.mark.slurm
def test_a_profile_over_the_partitions_time_or_memory_limit_is_one_line_before_anything_is_written(
    tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # With EnforcePartLimits=NO (SLURM's default, and this cluster's) sbatch takes such jobs and they
    # pend for ever (PartitionTimeLimit, MaxMemPerLimit): the whole sweep queued, never started.
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0]\n")
    (part,) = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60).stdout.split()
    part = part.rstrip("*")
    scontrol("update", f"PartitionName={part}", "MaxTime=5", "MaxMemPerNode=1000")
    try:
        cases = [
            ({"time_min": 10}, f"key 'time_min' is 10: over partition {part}'s MaxTime (00:05:00)", "allowed: 1 to 5"),
            ({"time_min": 5, "mem_gb": 2}, f"key 'mem_gb' asks for 2048 MB per node: over partition {part}'s MaxMemPerNode (1000 MB)",
             "allowed: at most 0.976562 GB per task"),
            ({"time_min": 5, "mem_gb": None, "mem_per_cpu_gb": 0.5, "cpus_per_trial": 2}, "key 'mem_per_cpu_gb' asks for 1024 MB", ""),
            ({"time_min": 10, "partition": None}, f"key 'time_min' is 10: over partition {part}'s MaxTime", ""),  # the default one
            ({"time_min": 5, "mem_gb": None, "partition": None}, "key 'mem_gb' asks for 4096 MB", ""),  # the default, 4 GB
        ]  # fmt: skip
        for i, (keys, said, allowed) in enumerate(cases):
            (tmp_path / str(i)).mkdir()
            profile = write_profile(tmp_path / str(i), **keys)
            results = tmp_path / str(i) / "r"
            assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: {profile}: {said}") and allowed in err[0], err
            assert not results.exists()
        # Within the limits the sweep goes out as before.
        (tmp_path / "ok").mkdir()
        profile = write_profile(tmp_path / "ok", time_min=5, mem_gb=0.9, sbatch_extra=["--begin=now+1hour"])
        assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "ok" / "r")]) == 0
    finally:
        scontrol("reconfigure")  # the partition as slurm.conf has it


@pytest.mark.slurm
def test_a_task_bigger_than_every_node_or_on_no_node_is_one_line_before_anything_is_written(
    slurm: None, tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # This SLURM takes `--mem=500G` on a 21 GB node and the job pends for ever (BadConstraints), and a
    # site that checks at submission refuses it there: the preflight reads the partition's nodes
    # (sinfo: CPUs, RealMemory, GPUs) and names the key before anything is written or queued.
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0]\n")
    line = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%c %m"], capture_output=True, text=True, timeout=60).stdout
    cpus, mem_mb = (max(int(v) for v in column) for column in zip(*(row.split() for row in line.splitlines())))
    names = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N"], capture_output=True, text=True, timeout=60).stdout.split()
    for i, (keys, said) in enumerate((
        ({"mem_gb": mem_mb // 1024 + 2}, f"key 'mem_gb' asks for {(mem_mb // 1024 + 2) * 1024} MB per task, more than any node of "
         f"partition debug has (the most: {mem_mb} MB"),
        ({"cpus_per_trial": cpus + 1}, f"key 'cpus_per_trial' asks for {cpus + 1} CPUs per task"),
        ({"gpus_per_task": 3}, "key 'gpus_per_task' asks for 3 GPUs per task, more than any node of partition debug has (the most: 2 GPUs"),
        ({"gres": "gpu:a100:1"}, "key 'gres' asks for 1 a100 GPUs per task"),
        # The nodes named in nodelist / exclude: sbatch refused "Invalid node name specified" after the
        # trial folders were written, and an exclude of every node queued jobs that never start.
        ({"nodelist": "nosuch[1-2]"}, "key 'nodelist' names nosuch1, nosuch2: not a node of partition debug; allowed: nodes of"),
        ({"exclude": "nosuch7"}, "key 'exclude' names nosuch7: no node of this cluster"),
        ({"exclude": ",".join(names)}, f"key 'exclude' is '{','.join(names)}': it leaves no node of partition debug"),
    )):  # fmt: skip
        (tmp_path / str(i)).mkdir()
        profile = write_profile(tmp_path / str(i), **keys)
        results = tmp_path / str(i) / "r"
        assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {profile}: {said}") and "allowed: " in err[0], err
        assert not results.exists()
    queued = subprocess.run(["squeue", "-h", "--me", "-o", "%j"], capture_output=True, text=True, timeout=60).stdout
    assert f"sweep-{sweep_name}" not in queued


@pytest.mark.slurm
def test_status_says_why_a_queued_trial_waits_and_when_its_job_cannot_start_as_it_is(
    tmp_path: Path, sweep_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A partition limit lowered under a queued sweep (an administrator, or a profile written for another
    # cluster under EnforcePartLimits=NO): the jobs pend for ever. `status` and `status --watch` say so.
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    profile = write_profile(tmp_path, time_min=10, sbatch_extra=["--begin=now+1hour"])
    results = tmp_path / "r"
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 0
    sweep = results / sweep_name
    (array,) = {job_of(t).split("_")[0] for t in (sweep / "trials").iterdir()}
    wait_until(lambda: "BeginTime" in job_state_reason(array), 60, "the scheduler gives the reason")
    capsys.readouterr()
    assert cli(status_main, [str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert out.count("SLURM: BeginTime") == 2 and "cannot start" not in out + err, out + err  # it clears by waiting
    scontrol("update", "PartitionName=debug", "MaxTime=5")
    try:
        scontrol("update", f"jobid={array}", "StartTime=now")
        wait_until(lambda: "PartitionTimeLimit" in job_state_reason(array), 60, "the scheduler gives the reason")
        assert cli(status_main, [str(sweep)]) == 0
        out, err = capsys.readouterr()
        assert out.count("SLURM: PartitionTimeLimit, cannot start as it is: its time limit is over the partition's MaxTime") == 2, out
        assert "slurm: 2 queued trial(s) cannot start as they are: PartitionTimeLimit" in err, err
        assert cli(status_main, [str(sweep), "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["queue_reason"] for r in rows] == ["PartitionTimeLimit"] * 2 and {r["queue"] for r in rows} == {"PENDING"}
    finally:
        scontrol("reconfigure")


def job_state_reason(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True, timeout=60).stdout


@pytest.mark.slurm
@pytest.mark.parametrize("shared_log_dir", [False, True])
def test_two_sweeps_of_one_grid_in_different_results_folders_do_not_wait_for_each_other(
    tmp_path: Path, sweep_name: str, shared_log_dir: bool
) -> None:
    # One grid run into two results folders is two sweeps of one job name (sweep-<grid name>): each
    # chains (afterany) and throttles only its own arrays, told apart by their job comment (the
    # sweep's tag), also when a profile's log_dir puts both sweeps' scripts in one folder. Before,
    # the second waited for every array of the first (with a shared log_dir until this change).
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    logs = tmp_path / "logs"
    extra = {"log_dir": f"{logs}/%j"} if shared_log_dir else {}
    profile = write_profile(tmp_path, sbatch_extra=["--begin=now+1hour"], **extra)  # nothing runs: the scripts are what is checked

    def launch(results: Path, grid: Path = grid) -> str:
        assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 0
        arrays = sorted({int(job_of(t).split("_")[0]) for t in (results / sweep_name / "trials").iterdir()})
        folder = logs if shared_log_dir else results / sweep_name / "slurm"
        (script,) = folder.glob(f"{arrays[-1]}/*_submission.sh")
        text = script.read_text()
        assert f"#SBATCH --comment={sweep_tag(results / sweep_name)}\n" in text, text
        return text

    first, second = launch(tmp_path / "a"), launch(tmp_path / "b")
    assert "--dependency" not in first and "--dependency" not in second, second
    # The same sweep launched again (a trial added) still waits for its own queued array.
    (array_a,) = {job_of(t).split("_")[0] for t in (tmp_path / "a" / sweep_name / "trials").iterdir()}
    (tmp_path / "more").mkdir()
    more = write_grid(tmp_path / "more", sweep_name, "epochs: 1", "  seed: [0, 1, 2]\n")
    assert f"#SBATCH --dependency=afterany:{array_a}\n" in launch(tmp_path / "a", more)


@pytest.mark.slurm
def test_a_task_that_starts_at_once_finds_its_log_folder(tmp_path: Path, sweep_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # submitit makes each task's log folder (slurm/<array>_<i>) only after sbatch answers; a task an
    # idle node takes first cannot open its stdout and fails to launch (JobLaunchFailure, 0:53). Here
    # submitit is slowed to make that certain: the array must wait, held, until its folders exist.
    from submitit.core.utils import JobPaths

    reasons: list[str] = []
    make = JobPaths.move_temporary_file

    def slowly(self: JobPaths, tmp_path: Path | str, name: str, keep_as_symlink: bool = False) -> None:
        time.sleep(4)  # the scheduler runs every 2 s on the test SLURM, and at once on a submission
        out = subprocess.run(["squeue", "-h", "-j", self.job_id, "-o", "%T %r"], capture_output=True, text=True, timeout=30)
        reasons.append(out.stdout.strip())
        make(self, tmp_path, name, keep_as_symlink)

    monkeypatch.setattr(JobPaths, "move_temporary_file", slowly)
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path, max_running_tasks=2)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 0
    trials = sorted((tmp_path / "r" / sweep_name / "trials").iterdir())
    assert reasons and all(r == "PENDING JobHeldUser" for r in reasons), reasons  # held while submitit made the folders
    jobs = [job_of(t) for t in trials]
    wait_until(lambda: not squeue(jobs), 240, "both tasks run and leave the queue")
    assert [status(t).get("state") for t in trials] == ["done", "done"], [status(t) for t in trials]
    assert [status(t)["attempts"] for t in trials] == [1, 1]


def test_a_release_slurm_keeps_refusing_cancels_the_array_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault no real controller gives on demand: scontrol refuses the release (a stand-in on PATH
    # that records its calls). The held array must not be left in the queue.
    from orchestrator.backends.slurm.launcher import release

    calls = tmp_path / "calls"
    for name, said in (("scontrol", "scontrol: error: Unable to contact slurm controller (connect failure)"), ("scancel", "")):
        tool = tmp_path / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n' + (f'echo "{said}" >&2; exit 1\n' if said else "exit 0\n"))
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(UserError) as err:
        release("4242", ["4241 (3 trials in 3 tasks)"], tries=2)
    said = str(err.value)
    assert "job array 4242 was submitted held, but `scontrol release 4242` failed 2 times" in said
    assert "Unable to contact slurm controller" in said and "cancelled it; already submitted: 4241" in said
    assert calls.read_text().splitlines() == ["scontrol release 4242", "scontrol release 4242", "scancel 4242"]
    # A job gone meanwhile (cancelled between submit and release) needs no release and is no error.
    (tmp_path / "scontrol").write_text('#!/bin/sh\necho "Invalid job id specified for job 4243" >&2; exit 1\n')
    assert release("4243", [], tries=2) is False


@pytest.mark.slurm
def test_a_submission_that_fails_after_sbatch_leaves_no_job_behind(
    tmp_path: Path, sweep_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # submitit writes a task's folder only after sbatch took the array (held): if it cannot (a full
    # disk, a quota), the array would wait in the queue for ever, the sweep's later arrays behind it.
    from submitit.core.utils import JobPaths

    def full_disk(self: JobPaths, tmp_path: Path | str, name: str, keep_as_symlink: bool = False) -> None:
        raise OSError(28, "No space left on device", str(self.folder))

    monkeypatch.setattr(JobPaths, "move_temporary_file", full_disk)
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 2
    err = capsys.readouterr().err
    assert "went out, but its submission did not finish; cancelled" in err, err
    assert "cannot write submitit's files in " in err and "No space left on device" in err, err
    name = job_name(tmp_path / "r" / sweep_name)
    queued = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    assert queued.stdout.strip() == "", queued.stdout
    trials = list((tmp_path / "r" / sweep_name / "trials").iterdir())
    assert len(trials) == 2 and not any((t / "slurm_job.json").exists() for t in trials)
    assert all(status(t).get("attempts", 0) == 0 for t in trials)


class _Killed(BaseException):
    """The launcher's death at the worst moment (SIGKILL, a hang-up): nothing of it runs after."""


@pytest.mark.slurm
def test_a_launch_killed_before_its_release_leaves_nothing_that_blocks_the_next(
    tmp_path: Path, sweep_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Killed between sbatch and `scontrol release`, a launcher leaves a held array that no trial
    # records; the next launch's arrays would wait on it (afterany) for ever.
    from orchestrator.backends.slurm import launcher

    def killed(array: str, submitted: list[str], tries: int = 3) -> bool:
        raise _Killed

    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path)), "--results", str(tmp_path / "r")]
    monkeypatch.setattr(launcher, "release", killed)
    with pytest.raises(_Killed):
        cli(sweep_main, args)
    monkeypatch.undo()
    sweep = tmp_path / "r" / sweep_name
    left = subprocess.run(["squeue", "-h", "--name", job_name(sweep), "-o", "%F %r"], capture_output=True, text=True, timeout=60)
    (orphan,) = {line.split()[0] for line in left.stdout.splitlines() if line.endswith(" JobHeldUser")}
    trials = sorted((sweep / "trials").iterdir())
    assert not any((t / "slurm_job.json").exists() for t in trials)
    assert unreleased(sweep_arrays(job_name(sweep)), sweep / "slurm", sweep / "trials") == [orphan]
    capsys.readouterr()

    assert cli(sweep_main, args) == 0
    err = capsys.readouterr().err
    assert f"slurm: cancelled job array {orphan}: held since a launch that stopped before releasing it (no trial records it)" in err, err
    jobs = [job_of(t) for t in trials]
    assert orphan not in {j.split("_")[0] for j in jobs}
    wait_until(lambda: not squeue(jobs), 240, "the new array runs, chained after nothing that never ends")
    assert [status(t).get("state") for t in trials] == ["done", "done"] and [status(t)["attempts"] for t in trials] == [1, 1]
    assert not squeue([orphan])
    # A held array that a trial records (the user held it) is not an orphan.
    (tmp_path / "later").mkdir()
    later = load_profile(write_profile(tmp_path / "later", sbatch_extra=["--begin=now+1hour"]))  # pending, so the hold holds it
    (held,) = submit([[trials[0]]], later, sweep)
    scontrol("hold", held)
    assert unreleased(sweep_arrays(job_name(sweep)), sweep / "slurm", sweep / "trials") == []


@pytest.mark.slurm
def test_an_array_cancelled_while_held_uses_no_attempt(tmp_path: Path, sweep_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cancelled before its release (by another launch that took it for an orphan, or by hand):
    # its trials never ran, so they are recorded as cancelled and the next launch runs them.
    from orchestrator.backends.slurm import launcher

    release = launcher.release

    def cancelled_first(array: str, submitted: list[str], tries: int = 3) -> bool:
        subprocess.run(["scancel", array], check=True, timeout=60)
        return release(array, submitted, tries)

    monkeypatch.setattr(launcher, "release", cancelled_first)
    grid = write_grid(tmp_path, sweep_name, "epochs: 1", "  seed: [0, 1]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 0
    monkeypatch.undo()
    trials = sorted((tmp_path / "r" / sweep_name / "trials").iterdir())
    assert all("cancelled" in json.loads((t / "slurm_job.json").read_text()) for t in trials)
    args[3] = str(write_profile(tmp_path, wait=True))
    assert cli(sweep_main, args) == 0
    assert [status(t).get("state") for t in trials] == ["done", "done"] and [status(t)["attempts"] for t in trials] == [1, 1]
