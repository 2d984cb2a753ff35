"""The sweep command end to end on the local backend: plan, run, skip what is done, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.folders import scan
from orchestrator.grid import load_grid
from orchestrator.plan import make_plan
from orchestrator.runner import LOG
from orchestrator.status import main as status_main
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli

GRID = """name: tiny
fixed: {model: resnet20, dataset: digits, epochs: 1, batch_size: 256}
sweep:
  alpha: [-5, 0]
  seed: [0, 1]
"""


def write_grid(tmp_path: Path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def attempts(sweep: Path) -> dict[str, int]:
    return {tid: json.loads((sweep / "trials" / tid / "status.json").read_text())["attempts"] for tid in scan(sweep)}


@pytest.mark.slow
def test_sweep_runs_everything_once_and_again_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path)
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    sweep = results / "tiny"
    states = scan(sweep)
    assert len(states) == 4 and {s.state for s in states.values()} == {"done"}
    ids = {s.trial_id for s in load_grid(grid).specs}
    assert set(states) == ids  # folders are named by trial_id
    assert (sweep / "grid.yaml").read_text() == GRID
    before = attempts(sweep)
    capsys.readouterr()

    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert attempts(sweep) == before == dict.fromkeys(ids, 1)

    # Rows carry the trial's fields: concatenation needs no join.
    frames = pd.concat(pd.read_parquet(sweep / "trials" / tid / "epochs.parquet") for tid in ids)
    assert set(frames.trial_id) == ids and sorted(frames.alpha.unique()) == [-5.0, 0.0]

    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "4 trials: 4 done" in out and out.count("1/1") == 4


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(write_grid(tmp_path)), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "4 to run" in out and "GPU-hours" in out and "estimate:" in out
    assert not results.exists()


def test_dry_run_does_not_import_torch(tmp_path: Path) -> None:
    """torch's import was 3 of the 5 s of CPU of a 10,000-trial SLURM dry run (issue 25); ablation passes counted too."""
    grid = write_grid(tmp_path, GRID.replace("batch_size: 256}", "batch_size: 256, ablation_fractions: [0, 0.5]}"))
    profile = Path(__file__).resolve().parent.parent / "cluster_configs" / "slurm" / "local-test.yaml"
    args = ["--grid", str(grid), "--cluster", str(profile), "--results", str(tmp_path / "r"), "--dry-run"]
    code = f"import sys; from orchestrator.sweep import main; main({args!r}); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "sbatch script of the first job array" in proc.stdout and "test-set passes per trial: 26;" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "False"


def test_imagenet_grid_dry_run_shows_the_papers_design(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    grid = Path(__file__).resolve().parent.parent / "grids" / "imagenet.yaml"
    assert cli(sweep_main, ["--grid", str(grid), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "15 trials (5 duplicates collapsed)" in out
    hours = float(out.split("GPU-hours to run: ")[1].split()[0].rstrip(","))
    assert 50 < hours < 1000  # 15 ResNet50 x 90 epochs of ImageNet on H100s


def test_missing_dataset_is_one_line_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path, f"name: c\nfixed: {{dataset: cifar10, data_root: {tmp_path / 'empty'}}}\n")
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-batches-py" in lines[0] and str(tmp_path / "empty") in lines[0]
    assert not results.exists()


def test_unwritable_results_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = cli(sweep_main, ["--grid", str(write_grid(tmp_path)), "--results", str(blocker / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not writable" in err[0]


def test_status_of_a_folder_that_is_not_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(status_main, [str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


@pytest.mark.slow
def test_worker_processes_backend(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(write_grid(tmp_path)), "--results", str(results), "--max-parallel", "2"]) == 0
    states = scan(results / "tiny")
    assert {s.state for s in states.values()} == {"done"} and len(states) == 4
    assert all((s.folder / "trainer.log").exists() for s in states.values())


@pytest.mark.slow
def test_two_launchers_at_once_share_the_work(tmp_path: Path) -> None:
    """Two real launcher processes on one sweep: every trial done, none run twice."""
    grid = write_grid(tmp_path, GRID.replace("seed: [0, 1]", "seed: [0, 1, 2]").replace("epochs: 1", "epochs: 2"))
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "orchestrator.sweep", "--grid", str(grid), "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    # A launcher that ends while the other still trains some trials says so, and exits 1 (not finished).
    for p, out in zip(procs, outs):
        assert p.returncode == 0 or (p.returncode == 1 and "running in another process" in out), outs
    assert 0 in [p.returncode for p in procs], outs
    sweep = results / "tiny"
    assert set(attempts(sweep).values()) == {1}  # no trial started twice
    assert {s.state for s in scan(sweep).values()} == {"done"}
    for tid in scan(sweep):
        epochs = pd.read_parquet(sweep / "trials" / tid / "epochs.parquet")
        assert list(epochs.epoch) == [0, 1, 2]


def test_interrupted_trial_is_planned_again(tmp_path: Path) -> None:
    """A status left at 'running' with nobody holding the lock is an interrupted trial: it resumes."""
    grid = load_grid(write_grid(tmp_path))
    sweep = tmp_path / "results" / "tiny"
    spec = grid.specs[0]
    folder = sweep / "trials" / spec.trial_id
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": "running", "attempts": 1}))
    plan = make_plan(grid.specs, sweep)
    assert plan.states[spec.trial_id].state == "interrupted"
    assert spec in plan.to_run and len(plan.to_run) == 4


def test_status_shows_why_an_interrupted_trial_stopped_and_its_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = load_grid(write_grid(tmp_path))
    sweep = tmp_path / "results" / "tiny"
    folder = sweep / "trials" / grid.specs[0].trial_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(grid.specs[0].to_dict()))
    why, log = "2026-01-01T00:00:00+00:00: worker killed by SIGKILL in epoch 2", str(folder / "trainer.log")
    (folder / "status.json").write_text(json.dumps({"state": "interrupted", "attempts": 1, "last_interruption": why, "log": log}))
    assert cli(status_main, [str(sweep)]) == 0
    assert why in capsys.readouterr().out
    assert cli(status_main, [str(sweep), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["state"], row["error"], row["log"]) == ("interrupted", why, log)


@pytest.mark.slow
def test_diverged_trial_fails_with_reason_and_the_sweep_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path, "name: div\nfixed: {epochs: 1, batch_size: 256}\nsweep: {lr: [1e6, 0.1]}\n")
    results = tmp_path / "results"
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results)]) == 1  # a trial failed
    states = {s.lr: scan(results / "div")[s.trial_id] for s in load_grid(grid).specs}
    bad, good = states[1e6], states[0.1]
    assert good.state == "done"
    assert bad.state == "failed" and not bad.retryable and bad.attempts == 1
    assert "non-finite" in (bad.error or "") and "epoch 1" in (bad.error or "")
    capsys.readouterr()
    # Not retried: a second launch has nothing to run, even with --retry-failed.
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(results), "--retry-failed"]) == 1  # a trial failed
    assert "nothing to run" in capsys.readouterr().out
    assert cli(status_main, [str(results / "div")]) == 0
    assert "non-finite training loss" in capsys.readouterr().out


def test_a_group_out_of_device_memory_goes_again_with_each_trial_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch.OutOfMemoryError at the first step of every worker (SWEEP_FAULT ...:OOM; no GPU here): the
    # fused group of two fails, then each trial goes again alone, not the same group (which would run
    # out again); a relaunch packs them alone too, and the trial records say what to do.
    grid = write_grid(tmp_path, "name: oom\nfixed: {epochs: 1}\nsweep: {alpha: [0, 3]}\n")
    profile = tmp_path / "p.yaml"
    profile.write_text("backend: local\nfuse: 2\nmax_parallel: 1\nmax_attempts: 2\n")
    results = tmp_path / "results"
    monkeypatch.setenv("SWEEP_FAULT", "train-step:1:OOM")
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results)]) == 1
    first, second = (results / "oom" / "trials" / s.trial_id for s in load_grid(grid).specs)
    started = [line.split("trainer.group ")[1].split() for line in (first / LOG).read_text().splitlines() if "trainer.group " in line]
    assert started == [[first.name, second.name], [first.name]]  # the group, then the first trial alone
    assert [line.split("trainer.group ")[1].split() for line in (second / LOG).read_text().splitlines() if "trainer.group " in line] == [
        [second.name]
    ]  # its own start, alone
    for folder in (first, second):  # alone and unfused: the fused engine's twin would need as much memory as the group of two
        assert (folder / LOG).read_text().count("unfused: it ran out of device memory fused") == 1
    for folder in (first, second):
        st = scan(results / "oom")[folder.name]
        assert st.state == "failed" and st.attempts == 2 and st.retryable and st.status.error_kind == "out_of_memory"
        assert (st.error or "").startswith(
            "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.06 GiB is free. (out of device memory: a fused group goes again with each trial alone"
        ), st.error
        assert "--retry-failed" in (st.error or "") and "Including non-PyTorch" not in (st.error or "")
    capsys.readouterr()
    # The next launch (a bigger GPU, say) packs them alone as well, and they finish.
    monkeypatch.delenv("SWEEP_FAULT")
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results), "--retry-failed", "--dry-run"]) == 0
    assert "packing: 0 of 2 trials train fused" in (out := capsys.readouterr().out) and "twin" not in out
    assert cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results), "--retry-failed"]) == 0
    assert all(scan(results / "oom")[f.name].state == "done" for f in (first, second))


def test_grid_values_never_reach_a_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Shell metacharacters in a grid value are taken literally (a path), never executed."""
    marker = tmp_path / "pwned"
    root = f"{tmp_path}/x; touch {marker}; $(touch {marker})"
    grid = write_grid(tmp_path, f"name: inj\nfixed: {{dataset: cifar10, data_root: '{root}'}}\n")
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 2
    assert f"{root}/cifar-10-batches-py" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.slow
def test_backend_overhead_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.backends` (local only, one trial): the launcher API it drives still fits."""
    from benchmarks import backends as bench_backends

    assert bench_backends.main(["--trials", "1", "--backends", "local", "--cpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "bare" in out and "local" in out and "over/trial" in out
