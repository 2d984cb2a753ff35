"""A sweep on a real 3-node SLURM with accounting and a preempting partition (scripts/local_slurm.sh).

    LOCAL_SLURM_DIR=/tmp/sweep-slurm-multi LOCAL_SLURM_CTLD_PORT=6917 LOCAL_SLURM_SLURMD_PORT=6918 \\
        LOCAL_SLURM_NODES=3 LOCAL_SLURM_ACCOUNTING=1 scripts/local_slurm.sh start
    LOCAL_SLURM_MULTI_CONF=/tmp/sweep-slurm-multi/conf/slurm.conf python -m pytest tests/test_slurm_multinode.py

Found through LOCAL_SLURM_MULTI_CONF (the single-node cluster of the other SLURM tests keeps
SLURM_CONF); skipped with the reason when it is not up. Each node is a network + UTS namespace
with its own hostname (node1..node3), so the trials' `host` fields tell the nodes apart, and a
node can be killed whole (`local_slurm.sh kill-node`). Tiny digits trials, one CPU each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.backends.slurm.queue import sacct_states

from helpers import FILES, ROOT, assert_same_results, cancel_sweep_jobs, frames, job_of, status, wait_until, write_grid, write_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CONF = os.environ.get("LOCAL_SLURM_MULTI_CONF", "")


def _script_env() -> dict[str, str]:
    """The local_slurm.sh settings of the cluster CONF describes (for kill-node and start)."""
    text = Path(CONF).read_text()
    port = lambda key: re.search(rf"^{key}=(\d+)", text, re.M).group(1)  # type: ignore[union-attr]
    nodes = len(re.findall(r"^NodeName=", text, re.M))
    return {
        **os.environ, "SLURM_CONF": CONF, "LOCAL_SLURM_DIR": str(Path(CONF).parent.parent), "LOCAL_SLURM_NODES": str(nodes),
        "LOCAL_SLURM_CTLD_PORT": port("SlurmctldPort"), "LOCAL_SLURM_SLURMD_PORT": port("SlurmdPort"),
        "LOCAL_SLURM_ACCOUNTING": "1" if "accounting_storage/slurmdbd" in text else "0",
    }  # fmt: skip


def local_slurm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), *args], env=_script_env(), capture_output=True,
                          text=True, timeout=180)  # fmt: skip


@pytest.fixture(scope="module")
def multi() -> Iterator[None]:
    if not CONF or not Path(CONF).is_file():
        pytest.skip("LOCAL_SLURM_MULTI_CONF is not set: start the multi-node cluster (see this module's docstring)")
    up = local_slurm("status")
    if up.returncode != 0:
        pytest.skip(f"the multi-node SLURM at {CONF} is not up: {up.stdout.strip()}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", CONF)  # sbatch, squeue, sacct and the jobs themselves talk to it
        yield


@pytest.fixture
def name(multi: None) -> Iterator[str]:
    sweep = f"m{uuid.uuid4().hex[:8]}"
    yield sweep
    cancel_sweep_jobs(sweep)  # every sweep and job a test made from this name


def sweep(
    tmp_path: Path, name: str, seeds: str, epochs: int = 1, wait: bool = False, **profile: object
) -> subprocess.CompletedProcess[str]:
    grid = write_grid(tmp_path, name, f"epochs: {epochs}", f"  seed: [{seeds}]\n")
    prof = write_profile(tmp_path, **{"wait": wait, "max_running_tasks": 3, **profile})
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--cluster", str(prof), "--results", str(tmp_path / "r")]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def trials(tmp_path: Path, name: str) -> list[Path]:
    return sorted((tmp_path / "r" / name / "trials").iterdir())


def in_queue(job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30).stdout.strip())


def test_a_sweep_spreads_over_the_nodes_and_nodelist_exclude_steer_it(tmp_path: Path, name: str) -> None:
    spread, pinned, avoided = tmp_path / "spread", tmp_path / "pinned", tmp_path / "avoided"
    for folder in (spread, pinned, avoided):
        folder.mkdir()
    # Two CPUs per task and two per node: the three tasks cannot share a node.
    assert sweep(spread, name, "0, 1, 2", cpus_per_trial=2).returncode == 0
    assert sweep(pinned, f"{name}p", "3", nodelist="node3").returncode == 0
    assert sweep(avoided, f"{name}a", "4", exclude="node[2-3]").returncode == 0
    everything = trials(spread, name) + trials(pinned, f"{name}p") + trials(avoided, f"{name}a")
    wait_until(lambda: all(status(t).get("state") == "done" for t in everything), 420, "every trial done")
    hosts = {t: status(t)["host"] for t in everything}
    assert len({hosts[t] for t in trials(spread, name)}) >= 2, hosts
    assert [hosts[t] for t in trials(pinned, f"{name}p")] == ["node3"] and [hosts[t] for t in trials(avoided, f"{name}a")] == ["node1"]
    jobs = [job_of(t) for t in everything]
    wait_until(lambda: not any(in_queue(j) for j in jobs), 120, "the jobs leave the queue")
    # slurmdbd records a job's end a moment after it leaves the queue: wait for the records, bounded.
    wait_until(lambda: all(sacct_states(jobs).get(j, "").startswith("COMPLETED") for j in jobs), 90, "accounting records COMPLETED")


def reference(tmp_path: Path, spec: Path) -> Path:
    """The same trial trained uninterrupted here, one thread like a one-CPU task."""
    folder = tmp_path / "reference" / spec.parent.name  # a trial's folder is named by its id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(spec.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "trainer.run", "--spec", str(folder / "spec.json")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return folder


def assert_same_numbers(a: Path, b: Path) -> None:
    """Bitwise equal results of two trials that differ only in their sweep's name (and so their id)."""
    fa, fb = frames(a), frames(b)
    for name in FILES:
        drop = lambda df: df.drop(columns=[c for c in ("sweep", "trial_id") if c in df.columns])
        pd.testing.assert_frame_equal(drop(fa[name]), drop(fb[name]), check_exact=True, obj=name)


def test_a_killed_node_and_a_preemption_requeue_the_trials_and_they_finish_equal(tmp_path: Path, name: str) -> None:
    killed, preempted = tmp_path / "killed", tmp_path / "preempted"
    for folder in (killed, preempted):
        folder.mkdir()
    epochs = 8  # long enough to be caught running after its first epoch
    # The preempted one on node3, the killed one elsewhere: the kill never takes the other down.
    # Each is caught running right after its submission (a digits epoch takes seconds).
    assert sweep(killed, f"{name}k", "0", epochs=epochs, max_requeues=3, exclude="node3").returncode == 0
    (k,) = trials(killed, f"{name}k")

    def running(t: Path) -> bool:
        st = status(t)
        return st.get("state") == "running" and (st.get("epoch") or 0) >= 1

    try:
        wait_until(lambda: running(k), 300, "the trial to kill trained an epoch")
        victim = status(k)["host"]
        assert local_slurm("kill-node", victim).returncode == 0  # slurmd, the job step, the worker: the node is gone
        assert sweep(preempted, name, "0", epochs=epochs, max_requeues=3, nodelist="node3").returncode == 0
        (p,) = trials(preempted, name)
        wait_until(lambda: running(p), 300, "the trial to preempt trained an epoch")
        # A job of the high partition that needs both CPUs of node3 preempts the sweep's task there.
        subprocess.run(["sbatch", "-p", "high", "-w", "node3", "-c", "2", "-o", "/dev/null", f"--job-name=sweep-{name}-hi",
                        "--wrap", "sleep 5"], check=True, capture_output=True, timeout=60)  # fmt: skip
        wait_until(lambda: status(k).get("state") == "done" and status(p).get("state") == "done", 600, "both trials done")
    finally:
        subprocess.run(["scancel", f"--name=sweep-{name}-hi"], capture_output=True, timeout=60)
        assert local_slurm("start").returncode == 0  # the killed node comes back
    assert status(k)["host"] != victim
    for t in (k, p):
        rec = json.loads((t / "requeues.json").read_text())
        assert rec["requeues"] >= 1 and status(t)["attempts"] >= 2, rec
    kj, pj = job_of(k), job_of(p)
    history = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-j", f"{kj},{pj}", "-o", "JobID,State"], capture_output=True, text=True, timeout=60
    )
    assert "NODE_FAIL" in history.stdout and "PREEMPTED" in history.stdout, history.stdout
    ref = reference(tmp_path, k / "spec.json")
    assert_same_results(ref, k)
    assert_same_numbers(ref, p)  # the same trial in a sweep of another name


def sacctmgr(*args: str) -> None:
    out = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sacctmgr {' '.join(args)}: {out.stderr or out.stdout}"


def test_a_profile_over_its_qos_or_association_limits_is_one_line_before_anything_is_written(tmp_path: Path, name: str) -> None:
    # The cluster enforces QOS limits (AccountingStorageEnforce=...,limits): a job over its QOS's MaxWall
    # or MaxTRESPerJob would pend for ever, and `sbatch --test-only` takes it.
    qos = f"q{uuid.uuid4().hex[:8]}"
    sacctmgr("add", "qos", qos, "MaxWall=00:05:00", "MaxTRESPerJob=cpu=1,mem=2G")
    try:
        sacctmgr("modify", "user", "root", "set", f"qos+={qos}")
        over = {
            "key 'time_min' is 10: over QOS {q}'s MaxWall (00:05:00), where its jobs would pend for ever (QOSMaxWallDurationPerJobLimit)": {
                "qos": qos,
                "time_min": 10,
            },
            "key 'cpus_per_trial' asks for 2 per job: over QOS {q}'s MaxTRESPerJob (cpu=1)": {
                "qos": qos,
                "time_min": 5,
                "cpus_per_trial": 2,
            },
            "key 'mem_gb' asks for 3 GB per job: over QOS {q}'s MaxTRESPerJob (mem=2G)": {"qos": qos, "time_min": 5, "mem_gb": 3},
        }
        for said, profile in over.items():
            run = sweep(tmp_path, name, "0", **profile)
            assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
            assert run.stderr.startswith(f"error: {tmp_path / 'profile.yaml'}: {said.format(q=qos)}"), run.stderr
            assert not (tmp_path / "r").exists()
        # A profile that names no qos runs under the association's default QOS: the same limits hold.
        sacctmgr("modify", "user", "root", "set", f"defaultqos={qos}")
        run = sweep(tmp_path, name, "0", time_min=10)
        assert run.returncode == 2 and f"over QOS {qos}'s MaxWall" in run.stderr and not (tmp_path / "r").exists(), run.stderr
        sacctmgr("modify", "user", "root", "set", "defaultqos=-1")
        # Within the limits the job goes out, starts and runs the trial.
        run = sweep(tmp_path, name, "0", wait=True, qos=qos, time_min=5, mem_gb=1)
        assert run.returncode == 0, run.stderr
        assert [status(t)["state"] for t in trials(tmp_path, name)] == ["done"]
    finally:
        cancel_sweep_jobs(name)
        sacctmgr("modify", "user", "root", "set", "defaultqos=-1")
        sacctmgr("modify", "user", "root", "set", f"qos-={qos}")
        sacctmgr("delete", "qos", qos)


def test_a_limit_inherited_from_a_parent_account_holds_too(tmp_path: Path, name: str) -> None:
    # Limits set on an account hold for its sub-accounts and their users, however deep; sacctmgr prints
    # them on the user's association (the effective value, updated when the parent's changes), so the
    # preflight refuses a profile over them as over the user's own.
    lab, sub = f"l{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    sacctmgr("add", "account", lab, "parent=root", "MaxWall=00:05:00")
    try:
        sacctmgr("add", "account", sub, f"parent={lab}")
        sacctmgr("add", "user", "root", f"account={sub}")
        sacctmgr("modify", "account", "where", f"name={lab}", "set", "MaxWall=00:07:00", "MaxTRES=cpu=1")  # after the user was added
        for profile, said in (
            ({"account": sub, "time_min": 10}, f"key 'time_min' is 10: over your association (account {sub})'s MaxWall (00:07:00)"),
            ({"account": sub, "time_min": 7, "cpus_per_trial": 2}, "key 'cpus_per_trial' asks for 2 per job: over your association"),
        ):
            run = sweep(tmp_path, name, "0", **profile)
            assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
            assert run.stderr.startswith(f"error: {tmp_path / 'profile.yaml'}: {said}"), run.stderr
            assert not (tmp_path / "r").exists()
    finally:
        sacctmgr("delete", "user", "root", f"account={sub}")
        sacctmgr("delete", "account", sub)
        sacctmgr("delete", "account", lab)


def test_cancel_midway_then_relaunch_uses_no_attempt(tmp_path: Path, name: str) -> None:
    # 20 epochs (~0.4 s each here): the cancel, a new Python and squeue, must land while the first trial trains.
    assert sweep(tmp_path, name, "0, 1, 2", epochs=20, max_running_tasks=1).returncode == 0  # one runs, two wait
    everything = trials(tmp_path, name)
    wait_until(lambda: any(status(t).get("epoch", 0) >= 1 for t in everything), 300, "a trial trained an epoch")
    jobs = [job_of(t) for t in everything]
    out = subprocess.run([sys.executable, "-m", "orchestrator.cancel", str(tmp_path / "r" / name), "--wait-s", "180"],
                         capture_output=True, text=True, cwd=ROOT, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "2 queued and 1 running SLURM job(s) cancelled; 1 trial(s) stopped" in out.stdout, out.stdout
    assert all(status(t).get("attempts", 0) <= 1 and status(t).get("state", "pending") in ("pending", "interrupted") for t in everything)
    # slurmdbd records a cancel a moment after it happens: wait for the two records, bounded.
    wait_until(lambda: sum(s.startswith("CANCELLED") for s in sacct_states(jobs).values()) >= 2, 90, "accounting records 2 CANCELLED")
    said = sacct_states(jobs)
    assert sum(s.startswith("CANCELLED") for s in said.values()) == 2, said
    stat = subprocess.run([sys.executable, "-m", "orchestrator.status", str(tmp_path / "r" / name)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert stat.returncode == 0 and len(stat.stderr.strip().splitlines()) <= 4, stat.stderr

    again = sweep(tmp_path, name, "0, 1, 2", epochs=20, max_running_tasks=3, wait=True)
    assert again.returncode == 0, again.stderr
    finals = [status(t) for t in everything]
    assert {s["state"] for s in finals} == {"done"}
    assert sorted(s["attempts"] for s in finals) == [1, 1, 2]  # a start each, the stopped one's resume: the cancel used none


@pytest.mark.ray
def test_ray_inside_a_three_node_allocation(multi: None, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed")
    from orchestrator.grid import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: ray-3\nfixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256}\nsweep: {seed: [0, 1, 2]}\n")
    profile = tmp_path / "ray.yaml"
    profile.write_text("backend: ray\naddress: auto\ncpus_per_trial: 1\ngpus_per_trial: 0\ndevice: cpu\nfuse: 1\nmax_attempts: 2\n")
    out = tmp_path / "job.out"
    # 100 MB object stores: three raylets share this machine's memory, and the trials pass nothing big.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SWEEP_RAY_OBJECT_STORE_BYTES": str(100 * 1024**2)}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=3", "--cpus-per-task=1", "--time=10", f"--output={out}", f"--chdir={ROOT}",
         f"--export=ALL,SWEEP_PYTHON={sys.executable}", "--job-name=ray-3-nodes-test",
         str(ROOT / "scripts" / "ray_in_slurm.sbatch"), "--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r")],
        capture_output=True, text=True, check=True, timeout=60, env=env,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 300
        while in_queue(job) and time.monotonic() < deadline:
            time.sleep(1)
        log = out.read_text() if out.exists() else ""
        assert not in_queue(job), f"the job did not end in time:\n{log[-3000:]}"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
    assert "ray_in_slurm: 3 node(s) up" in log and "sweep exited with 0" in log, log[-3000:]
    # The local backend's trial ids (both come from the grid's specs), every trial done, on >= 2 nodes.
    folders = {t.name: t for t in (tmp_path / "r" / "ray-3" / "trials").iterdir()}
    assert set(folders) == {spec.trial_id for spec in load_grid(grid).specs}
    done = [status(t) for t in folders.values()]
    assert [s.get("state") for s in done] == ["done"] * 3, log[-3000:]
    assert len({s["host"] for s in done}) >= 2, [s["host"] for s in done]
    # Nothing of Ray outlives the job on any node, nor its temp dirs (/tmp is shared by the nodes here).
    wait_until(lambda: not ray_processes_on_nodes(), 30, f"no Ray process left on the nodes: {ray_processes_on_nodes()}")
    assert not Path(f"/tmp/ray-{job}").exists()
    wait_until(lambda: sacct_states([job]).get(job, "").startswith("COMPLETED"), 90, "accounting records COMPLETED")


def ray_processes_on_nodes() -> list[str]:
    """The Ray processes (raylet, gcs_server, agents, workers) in the nodes' network namespaces."""
    run = Path(CONF).parent.parent / "run"
    nets = {os.readlink(f"/proc/{f.read_text().strip()}/ns/net") for f in run.glob("ns-node*.pid")}
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "ns" / "net") in nets:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "ray" in cmd.lower():
                    found.append(f"{proc.name}: {cmd[:120]}")
        except OSError:
            continue
    return found
