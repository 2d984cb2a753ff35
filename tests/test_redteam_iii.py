"""Red-team regressions, third round (issue 21): the newer surfaces.

sbatch_extra abbreviations, special files and pixel bombs in an ImageNet tree, damaged mid-epoch
checkpoints, signals to launchers and groups, ablate / represent / collect on damaged trials, and
three older weak spots. Each case drives the real component (CPU, real FIFOs and symlinks); the
few that train are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from benchmarks.synthetic import write_trial
from orchestrator.collect import core as C
from orchestrator.folders import scan
from orchestrator.grid import load_grid
from orchestrator.profiles import RESERVED_OPTIONS, SBATCH_OPTIONS, load_profile, sbatch_option
from orchestrator.sweep import main as sweep_main
from trainer import results as R
from trainer.attempt import StopRequest
from trainer.checkpoint import MID, load_mid_checkpoint
from trainer.cli import cli
from trainer.errors import Checkpointed, UserError
from trainer.imagenet.decode import MAX_PIXELS, BadImage, decode_rgb, image_size
from trainer.imagenet.manifest import ensure_manifest, manifest_dir
from trainer.imagenet.manifest import main as manifest_main
from trainer.spec import TrialSpec
from trainer.trial import run_trial

from imagenet_tree import encode, make_imagenet_tree

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop("SWEEP_FAULT", None)
CPU = torch.device("cpu")


def write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- 1. sbatch_extra: sbatch's getopt_long takes any unambiguous prefix of a long option ---------


def shortest_prefix(option: str) -> str:
    """The shortest prefix sbatch reads as `option` (the full name when every shorter one is ambiguous)."""
    for n in range(1, len(option) + 1):
        if [name for name in SBATCH_OPTIONS if name.startswith(option[:n])] == [option]:
            return option[:n]
    return option


@pytest.mark.parametrize("option", sorted(RESERVED_OPTIONS))
def test_every_reserved_sbatch_option_is_refused_by_its_shortest_prefix(option: str, tmp_path: Path) -> None:
    prefix = shortest_prefix(option)
    assert sbatch_option(prefix) == option
    profile = write(tmp_path, f"backend: slurm\nsbatch_extra: ['--nice=5', '--{prefix}=1']\n", "p.yaml")
    with pytest.raises(UserError, match=f"entry 2 sets --{prefix}.*--{option}[;,]|entry 2 sets --{option};") as err:
        load_profile(profile)
    assert f"--{option}" in str(err.value) and "\n" not in str(err.value)


def test_the_red_teams_abbreviations_are_one_line_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write(tmp_path, "name: g\nfixed: {model: resnet20, dataset: digits, epochs: 1}\nsweep: {seed: [0]}\n", "grid.yaml")
    cases = {"--hol": "--hold", "--dep=afterok:1": "--dependency", "--arr=0-9999": "--array", "--wra=hostname": "--wrap",
             "--test": "--test-only", "--no-req": "--no-requeue", "--tasks=2": "--tasks-per-node"}  # fmt: skip
    for line, full in cases.items():
        profile = write(tmp_path, f"backend: slurm\nsbatch_extra: ['{line}']\n", "p.yaml")
        results = tmp_path / "results"
        code = cli(sweep_main, ["--grid", str(grid), "--cluster", str(profile), "--results", str(results), "--dry-run"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {profile}: ") and f"which sbatch reads as {full};" in err[0], err[0]
        assert not results.exists()


def test_ambiguous_and_foreign_sbatch_options(tmp_path: Path) -> None:
    profile = write(tmp_path, "backend: slurm\nsbatch_extra: ['--tim=5']\n", "p.yaml")
    with pytest.raises(UserError, match=r"sets --tim, which sbatch finds ambiguous \(--time, --time-min\); allowed: the full option"):
        load_profile(profile)
    # Exact names and a newer sbatch's options pass (sbatch judges the latter); --wait would block the submission.
    assert load_profile(
        write(tmp_path, "backend: slurm\nsbatch_extra: ['--nice=5', '--time-min=10', '--tres-per-task=gres/gpu:1']\n", "q.yaml")
    )
    with pytest.raises(UserError, match="sets --wait; not allowed there: sbatch would block"):
        load_profile(write(tmp_path, "backend: slurm\nsbatch_extra: ['--wait']\n", "r.yaml"))


# --- 2. special files, dangling links, link loops and pixel bombs in an ImageNet tree ----------------


def pixel_bomb(height: int = 65500, width: int = 65500) -> bytes:
    """A tiny real JPEG whose frame header (SOF0) is rewritten to promise height x width pixels."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_special_files_links_and_loops_are_bad_entries_never_opened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False, per_class=2, val_per_class=1)
    folder = tree.root / "imagenet"
    cls = folder / "train" / tree.classes[0]
    os.mkfifo(cls / "fifo.JPEG")  # opened for reading, it would wait for a writer forever
    os.symlink(cls / "gone.JPEG", cls / "dangling.JPEG")
    os.symlink("self.JPEG", cls / "self.JPEG")  # a file linked to itself: ELOOP
    os.symlink("..", cls / "up")  # a folder linked to the one above it: the scan would never end
    (cls / "bomb.JPEG").write_bytes(pixel_bomb())
    os.mkfifo(folder / "train" / "stray-fifo")  # in train/ itself: no class, no image
    os.symlink("nowhere", folder / "val" / "dangling-class")
    bad_rows = {f"train/{tree.classes[0]}/{name}" for name in ("fifo.JPEG", "dangling.JPEG", "self.JPEG", "up", "bomb.JPEG")}

    cache = tmp_path / "cache"
    m = ensure_manifest(tree.root, cache)  # the launcher's preflight: a listing, no decoding
    assert m.classes == tree.classes and sorted(m.train.table.column("path").to_pylist()) == sorted([*tree.train, *bad_rows])
    assert dict(m.train.bad_files()) == {
        f"train/{tree.classes[0]}/fifo.JPEG": "not a regular file (a FIFO)",
        f"train/{tree.classes[0]}/dangling.JPEG": "dangling symlink",
        f"train/{tree.classes[0]}/self.JPEG": "symlink loop",
        f"train/{tree.classes[0]}/up": "symlink loop (links to a folder above it)",
    }
    assert sorted(m.bad_entries) == [("train/stray-fifo", "not a regular file (a FIFO)"), ("val/dangling-class", "dangling symlink")]

    assert manifest_main(["--data-root", str(tree.root), "--cache-dir", str(cache), "--check", "--workers", "1", "--rebuild"]) == 0
    out, err = capsys.readouterr()
    assert "2 bad entries skipped" in out and "train/stray-fifo: not a regular file (a FIFO)" in out
    assert "train: 5 unreadable" in out and "val: 0 unreadable" in out, out
    assert "Traceback" not in err and "terminate called" not in err
    rows = {r["path"]: r for r in pq.read_table(manifest_dir(tree.root, cache) / "train.parquet").to_pylist()}
    assert {p for p, r in rows.items() if r["ok"] is False} == bad_rows
    assert rows[f"train/{tree.classes[0]}/bomb.JPEG"]["error"].startswith("header says 4290250000 pixels, over the cap")
    assert rows[f"train/{tree.classes[0]}/fifo.JPEG"]["error"] == "not a regular file"


def test_a_pixel_bomb_is_a_bad_image_without_decoding() -> None:
    bomb = pixel_bomb()
    assert len(bomb) < 1000
    for read in (decode_rgb, image_size):
        with pytest.raises(BadImage, match=f"header says 4290250000 pixels, over the cap of {MAX_PIXELS}"):
            read(bomb)
    # Under PIL's own bomb error (179 M) but over the cap: still refused from the header.
    with pytest.raises(BadImage, match="header says 12000 x 9000 = 108000000 pixels"):
        decode_rgb(pixel_bomb(9000, 12000))
    assert decode_rgb(encode(np.zeros((8, 8, 3), np.uint8))).shape == torch.Size([3, 8, 8])


# --- 3. a damaged mid-epoch checkpoint is set aside; the trial resumes from its epoch checkpoint ------


def new_trial(root: Path, spec: TrialSpec) -> Path:
    folder = root / spec.trial_id
    folder.mkdir(parents=True)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    return folder


@pytest.mark.slow
def test_a_truncated_mid_epoch_checkpoint_is_set_aside_and_the_trial_resumes_from_its_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = TrialSpec(sweep="mid", epochs=1, device="cpu", batch_size=256)
    folder = new_trial(tmp_path, spec)
    stop = StopRequest()
    stop.requested = True  # a time limit ahead from the start: a mid-epoch checkpoint at step 1 of epoch 1
    with pytest.raises(Checkpointed):
        run_trial(spec, folder, stop)
    mid = folder / MID
    mid.write_bytes(mid.read_bytes()[:1000])  # truncated (a full disk, a copy cut short)
    capsys.readouterr()

    assert run_trial(spec, folder) == "done"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    aside = [p.name for p in folder.glob(f"{MID}.damaged-*")]
    assert len(aside) == 1 and not mid.exists()
    line = next(x for x in err.splitlines() if "set aside" in x)
    assert (
        f"checkpoint {mid} is unreadable (" in line and f"set aside as {aside[0]}; the trial resumes from checkpoint.pt (epoch 0)" in line
    )
    status = json.loads((folder / R.STATUS).read_text())
    assert status["state"] == "done" and status["attempts"] == 2 and status["epoch"] == 1
    assert len(status["set_aside"]) == 1 and aside[0] in status["set_aside"][0]
    assert list(pd.read_parquet(folder / R.EPOCHS)["epoch"]) == [0, 1]  # each epoch once: nothing lost, nothing twice


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip", "not a checkpoint"])
def test_a_damaged_mid_checkpoint_is_renamed_never_loaded(damage: bytes | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if isinstance(damage, str):
        torch.save([1, 2], tmp_path / MID)  # loads, but is no checkpoint
    else:
        (tmp_path / MID).write_bytes(damage)
    seen: list[str] = []
    assert load_mid_checkpoint(tmp_path, CPU, 3, on_damaged=seen.append) is None
    assert not (tmp_path / MID).exists() and len(list(tmp_path.glob(f"{MID}.damaged-*"))) == 1
    assert len(seen) == 1 and seen[0].endswith("the trial resumes from checkpoint.pt (epoch 3)") and "\n" not in seen[0]
    assert capsys.readouterr().err.strip() == f"warning: {seen[0]}"


# --- 4. signals to a group and to the local launcher: a documented state, a reason for every member ---

STOPS = {  # signal -> (exit code of trainer.group, the member's state, what its status.json says)
    "SIGINT": (130, "interrupted", "interrupted by SIGINT (Ctrl-C)"),
    "SIGTERM": (143, "interrupted", "interrupted by SIGTERM"),
    "SIGHUP": (129, "interrupted", "interrupted by SIGHUP"),
    "SIGUSR1": (76, "interrupted", "time limit: checkpointed in epoch 1 at step 1 of 5"),
    "SIGUSR2": (76, "interrupted", "time limit: checkpointed in epoch 1 at step 1 of 5"),
}
TINY = {"sweep": "sig", "epochs": 1, "device": "cpu", "batch_size": 256}


def group_folders(root: Path) -> list[Path]:
    return [new_trial(root, TrialSpec(**TINY, alpha=alpha)) for alpha in (-1.0, 0.0)]


def run_group_in_process(folders: list[Path]) -> int:
    from trainer.group import main as group_main

    argv = [a for f in folders for a in ("--spec", str(f / R.SPEC))]
    try:
        return cli(group_main, argv)
    except SystemExit as stop:  # SIGTERM, SIGHUP: trainer.cli turns them into SystemExit(128 + signal)
        return int(stop.code or 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STOPS))
def test_every_stop_signal_to_a_group_records_every_member(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import faults

    code, state, why = STOPS[name]
    folders = group_folders(tmp_path)
    monkeypatch.setattr(faults, "_TARGET", f"train-step:1:{name[3:]}")  # the real signal, sent to this process after step 1
    monkeypatch.setattr(faults, "_counts", {})
    assert run_group_in_process(folders) == code
    for folder in folders:
        status = json.loads((folder / R.STATUS).read_text())
        assert status["state"] == state and why in status["last_interruption"], status
    assert all(signal.getsignal(s) is signal.SIG_DFL for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2))  # restored


@pytest.mark.slow
def test_a_second_signal_while_a_member_is_recorded_waits_for_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaches the group and its launcher, which sends SIGTERM: the SIGTERM lands while the
    first member records its interruption. It once cut that write short (a member left `running`)."""
    from trainer import faults
    from trainer.attempt import Attempt

    folders = group_folders(tmp_path)
    monkeypatch.setattr(faults, "_TARGET", "train-step:1:INT")
    monkeypatch.setattr(faults, "_counts", {})
    save = Attempt.save_status
    sent: list[str] = []

    def save_then_signal(self: Attempt) -> None:
        if self.status.state == "interrupted" and not sent:
            sent.append(self.spec.trial_id)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the record
        save(self)

    monkeypatch.setattr(Attempt, "save_status", save_then_signal)
    assert run_group_in_process(folders) == 143  # the SIGTERM, delivered once the record was written
    whys = {json.loads((f / R.STATUS).read_text())["last_interruption"].split(": ", 1)[1] for f in folders}
    assert whys == {"interrupted by SIGINT (Ctrl-C)", "interrupted by SIGTERM"}, whys


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGUSR1"])  # SIGHUP (exit 129) and SIGTERM take the path of Ctrl-C: ~20 s each, left out
def test_a_stop_signal_to_the_local_launcher_never_orphans_its_worker(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher runs here (in this process, to save an interpreter start); its worker is a real process."""
    grid = write(tmp_path, "name: sig\nfixed: {epochs: 2, batch_size: 256, device: cpu}\nsweep: {alpha: [-1, 0]}\n", "grid.yaml")
    results = tmp_path / "results"

    def statuses() -> list[dict[str, object]]:
        return [json.loads(p.read_text()) for p in results.glob("sig/trials/*/status.json")]

    workers: list[int] = []
    before = set(children(os.getpid()))  # what earlier tests left (compile workers, Ray): not this launch's

    def send_when_training() -> None:
        deadline = time.monotonic() + 120
        while not (len(statuses()) == 2 and all(s["state"] == "running" for s in statuses())) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers.extend(pid for pid in children(os.getpid()) if pid not in before)
        os.kill(os.getpid(), getattr(signal, name))

    sender = threading.Thread(target=send_when_training, daemon=True)
    sender.start()
    try:
        code = cli(sweep_main, ["--grid", str(grid), "--results", str(results)])
    except SystemExit as stop:  # SIGHUP: trainer.cli's SystemExit(129), after the runner stopped and waited for its worker
        code = int(stop.code or 0)
    sender.join()
    assert code == (1 if name == "SIGUSR1" else 129)
    assert workers and not [pid for pid in workers if pid in children(os.getpid())]  # none left running
    assert "Traceback" not in capsys.readouterr().err
    for status in statuses():  # every member says why it stopped
        why = "time limit: checkpointed in epoch" if name == "SIGUSR1" else "interrupted by SIGTERM"
        assert status["state"] == "interrupted" and why in str(status["last_interruption"]), status


# --- 5. ablate / represent / collect on damaged trials, and three older weak spots ------------------


def damaged_sweep(root: Path) -> tuple[Path, list[Path]]:
    """Two done trials (synthetic files) whose kept checkpoints are damaged: A's are zero bytes, B's
    epoch 1 is zero bytes and its epoch 0 is missing."""
    grid = write(root, "name: dmg\nfixed: {epochs: 1}\nsweep: {seed: [0, 1]}\n", "grid.yaml")
    specs = list(load_grid(grid).specs)
    sweep = root / "results" / "dmg"
    for spec in specs:
        write_trial(sweep, spec, units=True)
    folders = [sweep / "trials" / s.trial_id for s in specs]
    for folder in folders:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "epoch_001.pt").write_bytes(b"")
    (folders[0] / "checkpoints" / "epoch_000.pt").write_bytes(b"")
    return sweep, folders


@pytest.mark.slow
def test_ablate_names_a_zero_byte_checkpoint_and_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.analysis.ablation_job import main as ablate_main

    _, (a, b) = damaged_sweep(tmp_path)
    assert cli(ablate_main, ["--trial", str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"warning: {b}: 1 kept checkpoint(s) missing (epoch_000.pt under checkpoints/)"), err
    assert len(err) == 2 and err[1].startswith(f"error: checkpoint {b / 'checkpoints' / 'epoch_001.pt'} is unreadable (EOFError"), err
    assert "move it aside to analyse the other epochs without it, or delete the trial folder and run the sweep again" in err[1]


@pytest.mark.slow
def test_represent_on_damaged_trials_names_the_files_and_counts_only_what_it_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.analysis.represent import main as represent_main

    sweep, (a, b) = damaged_sweep(tmp_path)
    assert cli(represent_main, [str(sweep), "--max-parallel", "2"]) == 1
    out, err = capsys.readouterr()
    assert f"warning: {b}: 1 kept checkpoint(s) missing (epoch_000.pt under checkpoints/)" in err
    assert f"failed: {a.name}: error: checkpoint {a / 'checkpoints' / 'epoch_000.pt'} is unreadable (EOFError" in err, err
    assert f"failed: {b.name}: error: checkpoint {b / 'checkpoints' / 'epoch_001.pt'} is unreadable (EOFError" in err, err
    assert "activations of 0 trials" in out and "2 failed, see above" in out, out


def test_collect_and_status_agree_on_a_foreign_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, (a, b) = damaged_sweep(tmp_path)
    (a / R.STATUS).write_text(json.dumps({"state": "pending", "attempts": 0}))
    (a / R.SPEC).write_text((b / R.SPEC).read_text())  # copied from another trial
    assert scan(sweep)[a.name].state == "unreadable"
    result = C.collect(sweep, figures=False, warn=lambda m: None)
    assert result.counts["unreadable"] == 1 and result.counts["pending"] == 0 and result.counts["done"] == 1
    reason = result.excluded.set_index("trial_id").loc[a.name, "reason"]
    assert f"is the spec of trial {b.name}" in reason and "rerun the sweep to repair it from the grid" in reason


def test_negative_max_attempts_names_its_real_range(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"key 'max_attempts' is -1; allowed: >= 1 \(and <= 1000000\)"):
        load_profile(write(tmp_path, "backend: local\nmax_attempts: -1\n", "p.yaml"))
