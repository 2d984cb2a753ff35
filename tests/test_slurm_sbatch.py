"""Profiles and sbatch scripts without a cluster: site options, validation, whole-node tasks.

    python -m pytest tests/test_slurm_sbatch.py

The golden file pins the sbatch script of a typical GPU site (typed gres, memory per GPU,
exclusive nodes, constraint operators, extra sbatch lines, mail); every profile mistake of every
backend is one line naming the file, the key and what is allowed, before anything is written.
`--dry-run` with a SLURM profile prints the script (it asks `scontrol` for MaxArraySize when a
cluster answers, and says what it assumed when none does). `orchestrator.status | head -1` ends
quietly on a real pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.slurm import TrialJob, partition, render_sbatch
from orchestrator.backends.slurm.job import _groups, position, task_slots
from orchestrator.backends.slurm.nodes import parse as parse_nodes
from orchestrator.backends.slurm.nodes import refusal as node_refusal
from orchestrator.backends.slurm.sbatch import chunked, parse_min_job_age, sbatch_parameters, submit_refusal, sweep_tag
from orchestrator.profiles import SlurmProfile, check_constraint, load_profile
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.errors import UserError
from trainer.status import Status

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- golden scripts -------------------------------------------------------------------------------
def test_golden_sbatch_script_of_a_gpu_site_with_whole_nodes() -> None:
    profile = load_profile(GOLDEN / "slurm_gpu_site.yaml")
    assert isinstance(profile, SlurmProfile)
    # gres gpu:a100:4: a task holds 4 GPUs and trains 4 groups (packing makes at least 4); max_gpus 64 -> 16 tasks at once.
    assert (profile.gpus_per_task_, profile.groups_per_task, profile.running_tasks, profile.workers()) == (4, 4, 16, 4)
    text = render_sbatch(profile, Path("/results/imagenet"), Path("/results/imagenet/slurm/%j"), n_tasks=40, dependency="afterany:1001")
    golden = GOLDEN / "slurm_gpu_site.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "sbatch script changed; review, then rerun with UPDATE_GOLDEN=1"
    for line in (
        "#SBATCH --gres=gpu:a100:4\n", "#SBATCH --mem-per-gpu=80GB\n", "#SBATCH --cpus-per-gpu=12\n", "#SBATCH --exclusive\n",
        "#SBATCH --constraint='(a100|h100)&ib'\n", "#SBATCH --gpu-bind=closest\n", "#SBATCH --mail-type=FAIL,TIME_LIMIT_80\n",
        "#SBATCH --array=0-39%16\n", "#SBATCH --dependency=afterany:1001\n", "#SBATCH --reservation=sweep-week\n",
    ):  # fmt: skip
        assert line in text, line
    # One GPU option only (the gres), and SLURM's exclusive pairs are never both set.
    assert "--gpus-per-node" not in text and "--cpus-per-task" not in text and "--mem=" not in text


def test_the_example_site_shows_every_site_option_commented_and_loads() -> None:
    text = (ROOT / "cluster_configs" / "slurm" / "example-site.yaml").read_text()
    for key in ("gres", "gpus_per_task", "cpus_per_gpu", "mem_per_gpu_gb", "exclusive", "exclude", "nodelist", "reservation",
                "comment", "mail_type", "mail_user", "sbatch_extra", "max_running_tasks", "constraint"):  # fmt: skip
        assert f"{key}:" in text, key
    load_profile(ROOT / "cluster_configs" / "slurm" / "example-site.yaml")


def test_a_setup_line_that_fails_ends_the_job(tmp_path: Path) -> None:
    # The rendered setup block, run by bash as sbatch would: the failing line stops it, with its text on stderr.
    profile = load_profile(write(tmp_path, "backend: slurm\nsetup: ['echo one', 'false', 'echo never']\n"))
    setup = sbatch_parameters(profile, tmp_path / "x")["setup"]
    out = subprocess.run(["bash", "-c", "\n".join([*setup, "echo command"])], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stdout == "one\n"
    assert out.stderr.strip() == "sweep: setup failed (exit code 1): false"


def test_dry_run_prints_the_sbatch_script_and_the_throttle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, "name: dry\nfixed: {model: resnet20, dataset: digits, epochs: 1}\nsweep: {seed: [0, 1, 2, 3, 4]}\n", "grid.yaml")
    profile = write(tmp_path, "backend: slurm\ngpus_per_task: 2\nmax_running_tasks: 1\nmax_array_size: 2\nfuse: 1\ndevice: cpu\n")
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "slurm: 5 groups in 3 tasks (2 group(s) per task, one per GPU, 2 GPU(s) per task), 2 job array(s)" in out
    assert "at most 1 tasks (2 GPUs) of the sweep at once" in out and "#SBATCH --array=0-1%1\n" in out
    assert "#SBATCH --gpus-per-node=2\n" in out and "#SBATCH --cpus-per-task=2\n" in out
    assert not (tmp_path / "r").exists()


# ---- validation: one line, file + key + what is allowed -----------------------------------------------
BAD = {
    # every backend: finite numbers only, within range
    "slurm mem 0": ("backend: slurm\nmem_gb: 0\n", "key 'mem_gb' is 0.0; allowed: from 0.001 (1 MB) to 1048576 (GB per task)"),
    "slurm time 1e11": ("backend: slurm\ntime_min: 1e11\n", "key 'time_min' is 100000000000; allowed: a whole number of minutes from 1 to"),
    "slurm time nan": ("backend: slurm\ntime_min: .nan\n", "key 'time_min' is nan; allowed: a whole number of minutes"),
    "slurm mem inf": ("backend: slurm\nmem_gb: .inf\n", "key 'mem_gb' is inf; allowed: from 0.001"),
    "local max_parallel 0": ("backend: local\nmax_parallel: 0\n", "key 'max_parallel' is 0; allowed: a whole number of worker processes"),
    "ray cpus nan": ("backend: ray\ncpus_per_trial: .nan\n", "key 'cpus_per_trial' is nan; allowed: >= 0.0001"),
    "ray cpus 0": ("backend: ray\ncpus_per_trial: 0\n", "key 'cpus_per_trial' is 0.0; allowed: >= 0.0001"),
    "ray gpus 2": ("backend: ray\ngpus_per_trial: 2\n", "key 'gpus_per_trial' is 2.0; allowed: from 0 to 1"),
    "ray gpus -inf": ("backend: ray\ngpus_per_trial: -.inf\n", "key 'gpus_per_trial' is -inf; allowed: from 0 to 1"),
    "attempts 0": ("backend: local\nmax_attempts: 0\n", "key 'max_attempts' is 0; allowed: >= 1"),
    "array size": ("backend: slurm\nmax_array_size: 5000000\n", "key 'max_array_size' is 5000000; allowed: a whole number from 1 to"),
    # SLURM's semantics
    "gpus per trial 4": ("backend: slurm\ngpus_per_trial: 4\n", "key 'gpus_per_trial' is 4; allowed: 0 or 1 (a group trains on one GPU"),
    "two memories": ("backend: slurm\nmem_gb: 8\nmem_per_cpu_gb: 2\n", "keys 'mem_gb', 'mem_per_cpu_gb': set one"),
    "cpus twice": ("backend: slurm\ngpus_per_task: 2\ncpus_per_trial: 2\ncpus_per_gpu: 4\n", "and 'cpus_per_gpu': set one"),
    "mem per gpu, no gpu": ("backend: slurm\nmem_per_gpu_gb: 8\n", "key 'mem_per_gpu_gb' needs GPUs"),
    "gres vs gpus": ("backend: slurm\ngres: gpu:a100:4\ngpus_per_task: 2\n", "keys 'gres' (gpu:a100:4) and 'gpus_per_task' (2) disagree"),
    "gres syntax": ("backend: slurm\ngres: 'gpu:a100:4 --wrap=x'\n", "key 'gres' is 'gpu:a100:4 --wrap=x'; allowed: name[:type][:count]"),
    "gres zero": ("backend: slurm\ngres: gpu:0\n", "key 'gres' is 'gpu:0'; allowed"),
    "constraint": ("backend: slurm\nconstraint: 'a100|'\n", "key 'constraint' is 'a100|'; allowed: features"),
    "constraint shell": ("backend: slurm\nconstraint: 'a$(id)'\n", "key 'constraint' is 'a$(id)'; allowed: features"),
    # a newline passed and ended the script's #SBATCH lines (every option after it dropped)
    "constraint newline": ('backend: slurm\nconstraint: "a100&\\nreboot"\n', "key 'constraint' is 'a100&\\nreboot'; allowed: features"),
    "constraint trailing newline": ("backend: slurm\nconstraint: |\n  a100\n", "key 'constraint' is 'a100\\n'; allowed: features"),
    # YAML 1.1 read SLURM's H:MM:SS as sexagesimal minutes (1:00:00 -> --time=3600, 60 hours)
    "time as H:MM:SS": ("backend: slurm\ntime_min: 1:00:00\n", "key 'time_min' is '1:00:00'; allowed: a whole number of minutes"),
    "time as M:SS": ("backend: slurm\ntime_min: 2:30\n", "(SLURM reads 2:30 as 3)"),
    "time as D-H": ("backend: slurm\ntime_min: 1-12\n", "(SLURM reads 1-12 as 2160)"),
    # 25 nodes and a stray ';': the old pattern backtracked exponentially (12 nodes: 410 s), a hang
    "hostlist stray character": ("backend: slurm\nexclude: '" + ",".join(f"n{i:02d}" for i in range(25)) + ";'\n", "'exclude' is 'n00,"),
    "hostlist": ("backend: slurm\nexclude: 'node1 node2'\n", "key 'exclude' is 'node1 node2'; allowed: a hostlist"),
    "mail type": ("backend: slurm\nmail_type: SOMETIMES\n", "key 'mail_type' is 'SOMETIMES'; allowed: a comma list of NONE, BEGIN"),
    "mail user": ("backend: slurm\nmail_user: 'a b@c'\n", "key 'mail_user' is 'a b@c'; allowed"),
    "comment quote": ("backend: slurm\ncomment: \"it's\"\n", "key 'comment' is \"it's\"; allowed"),
    "exclusive": ("backend: slurm\nexclusive: always\n", "key 'exclusive' is 'always'; allowed: true, false, user, mcs"),
    "extra reserved": ("backend: slurm\nsbatch_extra: ['--time=5']\n", "sets --time; not allowed there: use the profile key 'time_min'"),
    "extra array": ("backend: slurm\nsbatch_extra: ['--array=0-3']\n", "entry 1 sets --array; not allowed there: the backend sets it"),
    "extra two options": ("backend: slurm\nsbatch_extra: ['--a=1 --b=2']\n", "entry 1 is '--a=1 --b=2'; allowed: one long option"),
    "extra short": ("backend: slurm\nsbatch_extra: ['-p gpu']\n", "key 'sbatch_extra' entry 1 is '-p gpu'; allowed"),
    "extra dollar": ("backend: slurm\nsbatch_extra: ['--x=$HOME']\n", "key 'sbatch_extra' entry 1 is '--x=$HOME'"),
    "two throttles": ("backend: slurm\nmax_running_tasks: 4\nmax_gpus: 8\n", "'max_gpus', 'array_parallelism': set one"),
    "throttle below a task": ("backend: slurm\ngpus_per_task: 8\nmax_gpus: 4\n", "key 'max_gpus' is 4; allowed: >= the GPUs of one task"),
    "reservation": ("backend: slurm\nreservation: 'a;b'\n", "key 'reservation' is 'a;b'; allowed"),
    "python two lines": ('backend: slurm\npython: "python\\necho hi"\n', "key 'python' is 'python\\necho hi'; allowed: one non-empty line"),
    "setup continued": ("backend: slurm\nsetup: ['module load x \\\\']\n", "ends with a backslash; allowed: complete lines"),
    "ray temp dir": ("backend: ray\ntemp_dir: /tmp/" + "r" * 40 + "\n", "(45 characters); allowed: at most 40 (Ray's socket paths"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_profile_values_are_one_line_before_anything_is_written(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD[case]
    profile = write(tmp_path, text)
    grid = write(tmp_path, "name: g\nfixed: {model: resnet20, dataset: digits, epochs: 1}\nsweep: {seed: [0]}\n", "grid.yaml")
    results = tmp_path / "results"
    code = cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {profile}: ") and expected in lines[0], lines[0]
    assert not results.exists()


def test_constraint_syntax() -> None:
    for good in ("a100", "a100|h100", "a100&ib", "[a100|h100]", "[a100*2&ib*4]", "[(knl&snc4)*4&haswell*1]", "(a100|h100)&ib"):
        check_constraint(good)
    for bad in ("", "a100||h100", "(a100", "a100)", "[a]]", "a b", "*2", "&a", "a&", "a,b", "a'b"):
        with pytest.raises(UserError):
            check_constraint(bad)


def test_site_options_reach_sbatch_only_when_set(tmp_path: Path) -> None:
    plain = load_profile(write(tmp_path, "backend: slurm\n"))
    params = sbatch_parameters(plain, tmp_path / "x")
    assert params["mem"] == "4GB" and params["cpus_per_task"] == 1 and params["additional_parameters"] == {"requeue": True, "hold": True}
    assert {"gres", "gpus_per_node", "exclusive", "exclude", "mail_type", "setup", "dependency"}.isdisjoint(params)
    assert params["comment"] == sweep_tag(tmp_path / "x")  # no comment of the profile's own: the sweep's tag
    assert params["array_parallelism"] == 64  # the default sweep-wide throttle
    old = load_profile(write(tmp_path, "backend: slurm\narray_parallelism: 5\n"))
    assert old.running_tasks == 5 and sbatch_parameters(old, tmp_path / "x")["array_parallelism"] == 5  # the old name still works


def test_a_sweeps_arrays_are_told_apart_by_their_tag_even_in_a_shared_log_folder(tmp_path: Path) -> None:
    # One grid run into two results folders with a profile's log_dir: both sweeps' scripts live in one
    # folder. Before, each took the other's arrays for its own (afterany chains, a shared throttle, and
    # the other's array held mid-submission cancelled as left behind by a killed launcher).
    from orchestrator.backends.slurm.queue import _ours, parse_arrays

    logs = tmp_path / "logs"
    a, b = sweep_tag(tmp_path / "a" / "g"), sweep_tag(tmp_path / "b" / "g")
    assert a != b and a == sweep_tag(tmp_path / "a" / "." / "g") and len(a) == len("sweep:") + 12
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert sweep_tag(tmp_path / "link" / "g") == sweep_tag(tmp_path / "real" / "g")  # the same folder by any path
    script = f"{logs}/.submission_file_0123456789abcdef0123456789abcdef.sh"
    text = "".join(f"{array}|{state}|{reason}|{comment}\t{script}\n" for array, state, reason, comment in [
        ("11", "RUNNING", "None", a), ("12", "PENDING", "JobHeldUser", b), ("13", "PENDING", "Dependency", "lab|project x"),
        ("14", "PENDING", "Priority", "(null)"), ("15", "PENDING", "Priority", b),
    ])  # fmt: skip
    arrays = parse_arrays(text)
    assert [(q.array, q.never_released, q.script, q.comment) for q in arrays][:3] == [
        ("11", False, script, a), ("12", True, script, b), ("13", False, script, "lab|project x")
    ]  # fmt: skip
    # Its own tag, or no sweep's tag and its script folder (a comment of the profile's own, an older launch).
    assert [q.array for q in _ours(arrays, logs, a)] == ["11", "13", "14"]
    assert [q.array for q in _ours(arrays, logs, b)] == ["12", "13", "14", "15"]
    assert [q.array for q in _ours(arrays, logs, None)] == ["13", "14"]  # this sweep set a comment: by folder only
    assert [q.array for q in _ours(arrays, tmp_path / "elsewhere", a)] == ["11"]


# ---- how sbatch refusals are read ---------------------------------------------------------------------
def test_submit_limit_refusals_are_told_from_other_refusals() -> None:
    generic = (
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
    )
    assert submit_refusal(f"sbatch: error: QOSMaxSubmitJobPerUserLimit\n{generic}") == "limit"
    assert submit_refusal(f"sbatch: error: AssocMaxSubmitJobLimit\n{generic}") == "limit"
    assert submit_refusal(f"sbatch: error: QOSGrpSubmitJobsLimit\n{generic}") == "limit"
    assert submit_refusal(generic) == "maybe"  # no reason code: only trying smaller arrays can tell
    assert submit_refusal(f"sbatch: error: QOSMaxWallDurationPerJobLimit\n{generic}") is None  # a time limit: no array fits
    assert submit_refusal(f"sbatch: error: QOSGrpGRES\n{generic}") is None
    assert submit_refusal("sbatch: error: Batch job submission failed: Invalid partition name specified") is None


def test_a_full_controller_is_a_count_limit_and_sbatch_does_not_retry_for_minutes(tmp_path: Path) -> None:
    # MaxJobCount reached: SLURM 22.05's text (from a real cluster with MaxJobCount=5), and the older "queue full".
    full = "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n"
    assert submit_refusal(f"{full}sbatch: error: Batch job submission failed: Resource temporarily unavailable") == "full"
    assert submit_refusal("sbatch: error: Slurm job queue full, sleeping and retrying.") == "full"
    assert parse_min_job_age("MaxJobCount             = 5\nMinJobAge               = 2 sec\n") == 2
    assert parse_min_job_age("nothing") == 300
    # An sbatch that would sleep and retry is stopped at its first retry line, and says SLURM's final refusal.
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\nprintf '{full}' >&2\nexec sleep 60\n")
    fake.chmod(0o755)
    once = [sys.executable, str(ROOT / "orchestrator" / "backends" / "slurm" / "sbatch_once.py")]
    out = subprocess.run([*once, str(fake), "job.sh"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and submit_refusal(out.stderr) == "full", out.stderr
    assert out.stderr.splitlines()[-1].startswith("sbatch: error: Batch job submission failed: Resource temporarily unavailable")
    # Anything else passes through as sbatch said it.
    fake.write_text("#!/bin/sh\necho 'Submitted batch job 7'\necho 'sbatch: warning: x' >&2\n")
    out = subprocess.run([*once, str(fake), "job.sh"], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, "Submitted batch job 7\n", "sbatch: warning: x\n")


# ---- orchestrator.status ------------------------------------------------------------------------------
def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # Enough trials that the output outgrows the pipe's buffer after `head` has gone.
    trials = tmp_path / "sweep" / "trials"
    for i in range(3000):
        (trials / f"{i:012x}").mkdir(parents=True)
    out = subprocess.run(
        f"{sys.executable} -m orchestrator.status {tmp_path / 'sweep'} 2>{tmp_path / 'err'} | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.stdout == f"{tmp_path / 'sweep'}: 3000 trials: 0 done, 0 running, 0 interrupted, 3000 pending, 0 failed\n"
    assert out.returncode == 0 and (tmp_path / "err").read_text() == ""  # no traceback


# ---- what a task runs ---------------------------------------------------------------------------------
def test_task_payloads_old_and_new(tmp_path: Path) -> None:
    assert _groups("/r/t/a") == [[Path("/r/t/a")]]  # jobs queued before groups: one trial
    assert _groups(["/r/t/a", "/r/t/b"]) == [[Path("/r/t/a"), Path("/r/t/b")]]  # before whole nodes: one group
    assert _groups([["/r/t/a", "/r/t/b"], ["/r/t/c"]]) == [[Path("/r/t/a"), Path("/r/t/b")], [Path("/r/t/c")]]
    assert chunked([[1], [2], [3], [4], [5]], 2) == [[[1], [2]], [[3], [4]], [[5]]]  # groups -> tasks of 2


def test_a_task_gets_a_slot_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_CPUS_PER_GPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    slots = task_slots(4)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"], s.env["OMP_NUM_THREADS"]) for s in slots] == [("gpu2", "2", "4"), ("gpu3", "3", "4")]
    assert len(task_slots(1)) == 1  # fewer groups than GPUs: a slot per group
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (cpu,) = task_slots(3)  # no GPU: the groups take turns on the task's CPUs
    assert "CUDA_VISIBLE_DEVICES" not in cpu.env and cpu.env["OMP_NUM_THREADS"] == "8"


def test_position_reads_the_trainers_mid_epoch_note() -> None:
    assert position(Status()) == (-1, 0)
    assert position(Status(epoch=3)) == (3, 0)
    mid = Status(epoch=3, last_interruption="2026-01-01T00:00:00+00:00: time limit: checkpointed in epoch 4 at step 17 of 40")
    assert position(mid) == (3, 17)
    kept = Status(epoch=3, last_interruption="time limit: requeued (checkpointed in epoch 4 at step 17 of 40; job 5_1, ...)")
    assert position(kept) == (3, 17)
    stale = Status(epoch=5, last_interruption="time limit: checkpointed in epoch 4 at step 17 of 40")
    assert position(stale) == (5, 0)  # that stop is older than the epochs done since


def test_job_callable_still_pickles_without_run_state() -> None:
    import pickle

    job = TrialJob(max_requeues=2, max_attempts=3)
    job._start_positions[Path("x")] = (1, 2)
    clone = pickle.loads(pickle.dumps(job))
    assert clone._start_positions == {} and (clone.max_requeues, clone.max_attempts) == (2, 3)


def test_python_command_of_the_launcher_by_default(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, "backend: slurm\n"))
    text = render_sbatch(profile, tmp_path / "x", tmp_path / "%j", 1)
    assert f"{sys.executable} -u -m submitit.core._submit" in text


SHOW_PARTITION = """PartitionName=gpu
   AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL
   AllocNodes=ALL Default=NO QoS=N/A
   MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
   DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED

PartitionName=short
   AllocNodes=ALL Default=YES QoS=N/A
   MaxNodes=UNLIMITED MaxTime=00:30:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
   DefMemPerNode=UNLIMITED MaxMemPerNode=8192
"""


def test_the_partitions_limits_are_read_from_scontrol_and_rule_out_a_profile_over_them(tmp_path: Path) -> None:
    parts = partition.records(SHOW_PARTITION)
    assert [p["PartitionName"] for p in parts] == ["gpu", "short"]
    assert partition.pick(parts, None) is parts[1] and partition.pick(parts, "gpu") is parts[0] and partition.pick(parts, "x") is None
    assert [partition.minutes(v) for v in ("UNLIMITED", "INFINITE", "2-00:00:00", "00:30:00", "45", "1:30", "1-2", "1-2:30", "?")] == [
        None, None, 2880, 30, 45, 1.5, 1560, 1590, None,
    ]  # fmt: skip
    short, gpu = parts[1], parts[0]
    ok = load_profile(write(tmp_path, "backend: slurm\ntime_min: 30\nmem_gb: 8\n"))
    assert partition.refusal(short, ok) is None
    long = load_profile(write(tmp_path, "backend: slurm\ntime_min: 31\n"))
    assert (why := partition.refusal(short, long)) and why.startswith("key 'time_min' is 31: over partition short's MaxTime (00:30:00)")
    assert partition.refusal(gpu, long) is None
    lifted = load_profile(write(tmp_path, "backend: slurm\ntime_min: 31\nqos: long\n"))
    assert partition.refusal(short, lifted) is None  # a QOS may lift the partition's limits (OverPartQOS)
    big = load_profile(write(tmp_path, "backend: slurm\ntime_min: 30\nmem_gb: 8.5\n"))
    assert (why := partition.refusal(short, big)) and "key 'mem_gb' asks for 8704 MB per node" in why and "at most 8 GB" in why
    per_cpu = load_profile(write(tmp_path, "backend: slurm\ntime_min: 30\nmem_per_cpu_gb: 3\ncpus_per_trial: 3\n"))
    assert (why := partition.refusal(short, per_cpu)) and "key 'mem_per_cpu_gb' asks for 9216 MB per node" in why
    # The job QOS's flags, where sacctmgr told them: PartitionTimeLimit lifts MaxTime, nothing lifts MaxMemPerNode.
    assert partition.refusal(short, lifted, frozenset({"PartitionTimeLimit"})) is None
    assert (why := partition.refusal(short, lifted, frozenset())) and why.startswith("key 'time_min' is 31")
    big_qos = load_profile(write(tmp_path, "backend: slurm\ntime_min: 30\nmem_gb: 8.5\nqos: long\n"))
    assert partition.refusal(short, big_qos) is None and partition.refusal(short, big_qos, frozenset({"PartitionTimeLimit"}))


SINFO_NODES = """gpu01|64|515000|gpu:a100:4(S:0-1)
gpu02|64|515000|gpu:a100:4(S:0-1)
big01|128|1030000|gpu:h100:8(S:0,1),shard:16
cpu01|32|190000|(null)
bad line
"""


def test_a_task_no_node_of_the_partition_could_hold_is_refused_naming_the_key(tmp_path: Path) -> None:
    # sinfo -N -o '%N|%c|%m|%G': CPUs, RealMemory (MB) and GPUs per node, each node once.
    nodes = parse_nodes(SINFO_NODES + "gpu01|64|515000|gpu:a100:4\n")
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in nodes] == [
        ("gpu01", 64, 515000, {"": 4, "a100": 4}), ("gpu02", 64, 515000, {"": 4, "a100": 4}),
        ("big01", 128, 1030000, {"": 8, "h100": 8}), ("cpu01", 32, 190000, {}),
    ]  # fmt: skip

    def why(text: str) -> str | None:
        return node_refusal(nodes, load_profile(write(tmp_path, "backend: slurm\n" + text)), "main")

    # What some node holds: no refusal, whether the request is typed, per GPU, per CPU or whole-node.
    for fits in (
        "mem_gb: 180\ncpus_per_trial: 32\n",
        "gres: gpu:h100:8\ncpus_per_gpu: 16\nmem_per_gpu_gb: 120\n",
        "gpus_per_task: 4\ncpus_per_trial: 16\nmem_gb: 500\n",
        "mem_per_cpu_gb: 7.5\ncpus_per_trial: 128\n",
        "gpus_per_task: 4\ncpus_per_trial: 32\nmem_gb: 600\n",  # only big01 holds it
        "mem_gb: 1005.8\n",
        "gres: gpu:h100:8\nmem_per_gpu_gb: 125.7\n",
    ):  # fmt: skip  (the allowed values below)
        assert why(fits) is None, fits
    # One key over every node: that key, the most a node has, and the allowed value in the key's own unit.
    for text, said, allowed in (
        ("mem_gb: 1024\n", "key 'mem_gb' asks for 1048576 MB per task, more than any node of partition main has (the most: 1030000 MB",
         "allowed: at most 1005.8 GB, or another partition"),
        ("cpus_per_trial: 129\n", "key 'cpus_per_trial' asks for 129 CPUs per task", "allowed: at most 128, or"),
        ("gpus_per_task: 4\ncpus_per_trial: 40\n", "key 'cpus_per_trial' asks for 160 CPUs per task", "at most 32 (a task has 4 groups)"),
        ("gpus_per_task: 16\n", "key 'gpus_per_task' asks for 16 GPUs per task", "at most 8 (the nodes have gpu:4, gpu:8, gpu:a100:4"),
        ("gres: gpu:v100:1\n", "key 'gres' asks for 1 v100 GPUs per task", "allowed: GPUs the nodes have (the nodes have gpu:4"),
        ("gres: gpu:v100\n", "key 'gres' asks for 1 v100 GPUs per task", "allowed: GPUs the nodes have (the nodes have gpu:4"),
        ("gres: gpu:a100:8\n", "key 'gres' asks for 8 a100 GPUs per task", "allowed: at most 4 ("),
        ("gres: gpu:h100:8\ncpus_per_gpu: 17\n", "key 'cpus_per_gpu' asks for 136 CPUs per task", "at most 16 (a task has 8 GPUs)"),
        ("gres: gpu:h100:8\nmem_per_gpu_gb: 126\n", "key 'mem_per_gpu_gb' asks for 1032192 MB per task",
         "at most 125.7 GB (a task has 8 GPUs)"),
        ("mem_per_cpu_gb: 16\ncpus_per_trial: 64\n", "key 'mem_per_cpu_gb' asks for 1048576 MB per task", "(a task has 64 CPUs)"),
    ):  # fmt: skip
        got = why(text)
        assert got is not None and got.startswith(said) and allowed in got and "\n" not in got, (text, got)
    # Each within some node, but no node holds all of it: every key named.
    got = why("gres: gpu:a100:4\nmem_gb: 600\n")
    both = "keys 'gres' (4 a100 GPUs) and 'cpus_per_trial' (4 CPUs) and 'mem_gb' (614400 MB): no single node"
    assert got is not None and got.startswith(both), got
    # Nothing known (sinfo did not answer), or memory not configured (RealMemory=1): no refusal on that ground.
    assert node_refusal([], load_profile(write(tmp_path, "backend: slurm\nmem_gb: 9999\n")), "main") is None
    unset = parse_nodes("n1|8|1|(null)\n")
    assert node_refusal(unset, load_profile(write(tmp_path, "backend: slurm\nmem_gb: 9999\n")), "main") is None
    assert node_refusal(unset, load_profile(write(tmp_path, "backend: slurm\ncpus_per_trial: 9\n")), "main") is not None


def test_qos_and_association_limits_hold_as_slurmctld_picks_them_and_rule_out_a_profile_over_them(tmp_path: Path) -> None:
    from orchestrator.backends.slurm import qos

    assert qos.enforced("AccountingStorageEnforce = associations,limits,qos\n")
    assert qos.enforced("AccountingStorageEnforce = safe\n") and not qos.enforced("AccountingStorageEnforce = associations,qos\n")
    assert not qos.enforced("AccountingStorageEnforce = none\n") and not qos.enforced("")
    assert qos.tres("cpu=4,mem=2G,gres/gpu=1,node=1") == {"cpu": (4, "4"), "mem": (2048, "2G"), "gres/gpu": (1, "1"), "node": (1, "1")}
    assert qos.tres("mem=3000M") == {"mem": (3000, "3000M")} and qos.tres("") == {}
    plain = load_profile(write(tmp_path, "backend: slurm\n"))
    named = load_profile(write(tmp_path, "backend: slurm\nqos: long\n"))
    # The job's QOS: the profile's, else the association's default, else its only one, else normal.
    assert qos.job_qos(named, "def", "a,b") == "long" and qos.job_qos(plain, "def", "a,b") == "def"
    assert qos.job_qos(plain, "", "only") == "only" and qos.job_qos(plain, "", "a,b") == "normal"
    job = qos.limits("QOS long", "QOS", "2-00:00:00", "cpu=8")
    part = qos.limits("partition p's QOS pq", "QOS", "01:00:00", "")
    assoc = qos.limits("your association (account a)", "Assoc", "00:30:00", "cpu=2,mem=4G")
    held = {key: whose.owner for key, whose in qos.effective(job, part, assoc)}
    # A partition QOS overrides the job's limit by limit; the association's hold where no QOS sets one.
    assert held == {"wall": "partition p's QOS pq", "cpu": "QOS long", "mem": "your association (account a)"}
    over = qos.limits("QOS long", "QOS", "2-00:00:00", "cpu=8", "OverPartQOS")
    assert {key: w.owner for key, w in qos.effective(over, part, assoc)}["wall"] == "QOS long"  # OverPartQOS: the other way
    short = [("wall", qos.limits("QOS short", "QOS", "00:05:00", "cpu=1,mem=3000M,gres/gpu=1"))]
    short += [(k, short[0][1]) for k in ("cpu", "mem", "gres/gpu")]
    ok = load_profile(write(tmp_path, "backend: slurm\ntime_min: 5\nmem_gb: 2\n"))
    assert qos.refusal(short, ok) is None
    cases = {
        "time_min: 6\nmem_gb: 2\n": "key 'time_min' is 6: over QOS short's MaxWall (00:05:00), where its jobs would pend for ever "
        "(QOSMaxWallDurationPerJobLimit); allowed: 1 to 5, or another qos",
        "time_min: 5\nmem_gb: 2\ncpus_per_trial: 2\n": "key 'cpus_per_trial' asks for 2 per job: over QOS short's MaxTRESPerJob "
        "(cpu=1), where its jobs would pend for ever (QOSMaxCpuPerJobLimit); allowed: at most 1, or another qos",
        "time_min: 5\n": "key 'mem_gb' (its default) asks for 4 GB per job: over QOS short's MaxTRESPerJob (mem=3000M), where its "
        "jobs would pend for ever (QOSMaxMemoryPerJob); allowed: at most 2.92969 GB",
    }
    for text, said in cases.items():
        assert (why := qos.refusal(short, load_profile(write(tmp_path, f"backend: slurm\n{text}")))) and why.startswith(said), why
    gpus = [("gres/gpu", qos.limits("QOS gpu", "QOS", "", "gres/gpu=1"))]
    two = load_profile(write(tmp_path, "backend: slurm\ngpus_per_task: 2\n"))
    assert (why := qos.refusal(gpus, two)) and why.startswith(
        "key 'gpus_per_task' asks for 2 per job: over QOS gpu's MaxTRESPerJob (gres/gpu=1), where its jobs would pend for ever "
        "(QOSMaxGRESPerJob)"
    )
    assert qos.refusal(gpus, load_profile(write(tmp_path, "backend: slurm\ngpus_per_trial: 1\n"))) is None
    whole = load_profile(write(tmp_path, "backend: slurm\ntime_min: 5\nexclusive: true\ncpus_per_trial: 4\n"))
    assert qos.refusal(short, whole) is None  # a whole node's CPUs and memory: its size is not known here
    wall = [("wall", assoc)]
    assert (why := qos.refusal(wall, plain)) and "over your association (account a)'s MaxWall (00:30:00)" in why
    assert "(AssocMaxWallDurationPerJobLimit)" in why


def test_pending_reasons_that_do_not_clear_by_waiting_are_said_once_each(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.backends.slurm.queue import stuck
    from orchestrator.backends.slurm.wait import _say_stuck

    clears = ("Priority", "Resources", "Dependency", "BeginTime", "JobArrayTaskLimit", "QOSGrpCpuLimit", None)
    assert [stuck(r) for r in clears] == [None] * 7
    assert all(stuck(r) for r in ("PartitionTimeLimit", "MaxMemPerLimit", "QOSMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit"))
    assert all(stuck(r) for r in ("QOSMaxMemoryPerJob", "QOSMaxGRESPerJob", "AssocMaxMemPerJob", "QOSMaxCpuPerNode", "QOSMinGRES"))
    assert stuck("QOSMaxJobsPerUserLimit") is None  # a count: clears as the user's other jobs end
    assert stuck("job requeued in held state") == "it was requeued and held (scontrol release <job> lets it go)"  # requeuehold
    assert stuck("QOSMaxSubmitJobPerUserLimit") is None and stuck("QOSMaxNodePerUserLimit") is None
    live = {"1_0": ("n", "PENDING", "PartitionTimeLimit"), "1_1": ("n", "PENDING", "PartitionTimeLimit"), "2": ("n", "RUNNING", "None")}
    said = _say_stuck(live, frozenset(), Path("/r/s"))
    err = capsys.readouterr().err
    assert err.startswith("slurm: 2 queued job(s) of the sweep cannot start as they are: PartitionTimeLimit: its time limit")
    assert "python -m orchestrator.cancel /r/s" in err and err.count("\n") == 1
    assert _say_stuck(live, said, Path("/r/s")) == said and capsys.readouterr().err == ""  # once
    live["3"] = ("n", "PENDING", "Priority")
    _say_stuck(live, said, Path("/r/s"))
    assert capsys.readouterr().err == ""


def test_a_log_dir_the_launcher_cannot_write_is_refused_naming_the_key(tmp_path: Path) -> None:
    """It was refused only after the trial folders were written ("cannot write submitit's files in ..."), naming no key."""
    from orchestrator.backends.slurm.preflight import _check_log_dir
    from trainer.errors import ProfileError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for bad in (f"{blocker}/slurm/%j", "/proc/nope/%j"):
        with pytest.raises(ProfileError, match=r"key 'log_dir' is '.*': the launcher cannot write there \(.*\); allowed: a folder"):
            _check_log_dir(bad)
    _check_log_dir(f"{tmp_path}/logs/%u/%j")  # not there yet, under a folder it may write: fine, and nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_log_dir_under_home_is_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`log_dir: ~/sweep-logs` made a folder named "~" in the launcher's current folder."""
    from orchestrator.backends.slurm.script import log_folder
    from orchestrator.profiles import SlurmProfile

    monkeypatch.setenv("HOME", str(tmp_path))
    assert log_folder(SlurmProfile(log_dir="~/sweep-logs/%j"), tmp_path / "sweep") == tmp_path / "sweep-logs" / "%j"
