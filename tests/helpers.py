"""Helpers shared by the tests (import as `from helpers import ...`; fixtures live in conftest.py).

trial results   FILES, TIMING, frames, assert_same_results, assert_one_row_per_epoch, temp_files
data trees      make_cifar, dump_cifar_batch, make_tinyimagenet (ImageNet: imagenet_tree.py)
SLURM           slurm_down_reason, write_grid, write_profile, wait_until, status, job_of, requeues,
                job_state, scontrol, job_log, trial_by_epochs, epochs_table, epochs_lasting,
                snapshot_checkpointed_rows, assert_resumed
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.backends.slurm import REQUEUES, SUBMITTED
from trainer import results as R
from trainer.spec import TrialSpec
from trainer.trial import run_trial

# ---- trial results -------------------------------------------------------------------------------
FILES = (R.EPOCHS, R.LAYERS, R.UNITS)
TIMING = ["seconds", "eval_seconds", "images_per_s"]  # wall-clock columns: never equal across runs
UNITS_RESNET20 = 3 * 16 + 3 * 32 + 3 * 64  # 336
STEPS_PER_EPOCH = 1438 // 128  # digits train split, ragged last batch dropped


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if R.TMP_MARK in p.name]


def frames(folder: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in FILES:
        df = pd.read_parquet(folder / name)
        out[name] = df.drop(columns=[c for c in TIMING if c in df.columns])
    return out


def assert_same_results(a: Path, b: Path) -> None:
    fa, fb = frames(a), frames(b)
    for name in FILES:
        # Exact on CPU: the resumed epoch replays the same data order, augmentation and weights.
        pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True, obj=name)


def assert_one_row_per_epoch(folder: Path, epochs: int) -> None:
    for name in FILES:
        df = pd.read_parquet(folder / name)
        counts = df.groupby("epoch").size()
        assert list(counts.index) == list(range(epochs + 1)), name
        assert counts.nunique() == 1, name  # the same number of rows for every epoch


# ---- data trees in their official layouts --------------------------------------------------------
class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the original CIFAR files: `str` opcodes for bytes,
    numpy globals under `numpy.core.multiarray`. (Python 3's protocol 2 writes bytes through
    `_codecs.encode` instead; both must load.)"""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        module = "numpy.core.multiarray" if module == "numpy._core.multiarray" else module
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())  # type: ignore[attr-defined]
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[type] = save_global
    dispatch[type(len)] = save_global


def dump_cifar_batch(path: Path, data: np.ndarray, labels: list[int], style: str) -> None:
    d = {
        b"batch_label": f"batch {path.name}".encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        if style == "py2":
            Py2Pickler(f, protocol=2).dump(d)
        else:
            pickle.dump(d, f, protocol=2)


def make_cifar(root: Path, style: str = "py3", n_train: int = 4, n_test: int = 6) -> tuple[np.ndarray, ...]:
    """cifar-10-batches-py with data_batch_1..5 and test_batch: b'data' uint8 [N, 3072], b'labels' list."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        dump_cifar_batch(folder / name, x, y, style)
        xs.append(x)
        ys.append(y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    train_x, train_y = np.concatenate(xs[:5]), np.concatenate(ys[:5])
    return train_x, train_y, xs[5], np.array(ys[5])


WNIDS = ["n09999999", "n01443537", "n02085620"]  # wnids.txt order is not the class order
COLOURS = {"n01443537": (250, 10, 10), "n02085620": (10, 250, 10), "n09999999": (10, 10, 250)}


def jpeg(path: Path, colour: tuple[int, int, int], size: int = 64) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG", quality=95)


def make_tinyimagenet(root: Path) -> None:
    folder = root / "tiny-imagenet-200"
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for w in WNIDS:
        for i in range(2):
            jpeg(folder / "train" / w / "images" / f"{w}_{i}.JPEG", COLOURS[w])
        (folder / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    for i, w in enumerate(["n02085620", "n09999999", "n01443537", "n02085620"]):
        name = f"val_{i}.JPEG"
        jpeg(folder / "val" / "images" / name, COLOURS[w], size=32 if i == 0 else 64)  # one off-size image
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    jpeg(folder / "test" / "images" / "test_0.JPEG", (0, 0, 0))  # unlabelled; must be ignored


# ---- SLURM (the project's real single-node cluster) ------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def slurm_down_reason() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set"
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return "scontrol/sbatch not on PATH"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if "UP" not in out.stdout:
        said = (out.stdout + out.stderr).strip().splitlines()
        return f"scontrol ping: {said[0] if said else 'no answer'}"
    return None


def write_grid(tmp_path: Path, name: str, fixed: str, sweep: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(f"name: {name}\nfixed: {{model: resnet20, dataset: digits, batch_size: 256, {fixed}}}\nsweep:\n{sweep}")
    return path


def write_profile(tmp_path: Path, **extra: object) -> Path:
    # fuse 1: one trial per task, trained as trainer.run (a lone fusable trial would train beside a
    # twin, doubling the CPU time of these single-trial tests); fused tasks have their own test.
    keys = {"partition": "debug", "cpus_per_trial": 1, "mem_gb": 1, "time_min": 10, "max_running_tasks": 2,
            "max_requeues": 3, "device": "cpu", "wait": False, "fuse": 1, **extra}  # fmt: skip
    path = tmp_path / "profile.yaml"
    # A key given as None is left out (the profile's default: e.g. no partition, the cluster's default one).
    path.write_text("backend: slurm\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items() if v is not None))
    return path


def cancel_sweep_jobs(name: str) -> None:
    """Cancel the user's jobs of every sweep named `name`, in any results folder (job names `sweep-<name>-<key>`)."""
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%F %j"], capture_output=True, text=True, timeout=60)
    ids = sorted({job for job, _, jname in (line.partition(" ") for line in out.stdout.splitlines()) if jname.startswith(f"sweep-{name}")})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}\n{_queue()}")
        time.sleep(0.3)


def _queue() -> str:
    return subprocess.run(["squeue"], capture_output=True, text=True, timeout=30).stdout


def status(folder: Path) -> dict:
    path = folder / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def job_of(folder: Path) -> str:
    return json.loads((folder / SUBMITTED).read_text())["job_id"]


def requeues(folder: Path) -> int | None:
    path = folder / REQUEUES
    return json.loads(path.read_text())["requeues"] if path.exists() else None


def job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, timeout=60)


def job_log(sweep: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in sorted((sweep / "slurm" / job_id).glob("*_log.*")))


def trial_by_epochs(sweep: Path) -> dict[int, Path]:
    return {json.loads((f / "spec.json").read_text())["epochs"]: f for f in (sweep / "trials").iterdir()}


def epochs_table(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "epochs.parquet").sort_values("epoch").reset_index(drop=True)


def snapshot_checkpointed_rows(folder: Path) -> pd.DataFrame:
    """Rows the trial's checkpoint covers now (status epoch is written after the checkpoint)."""
    covered = status(folder)["epoch"]
    rows = epochs_table(folder)
    return rows[rows.epoch <= covered]


def assert_resumed(folder: Path, before: pd.DataFrame, epochs: int) -> None:
    """One row per epoch, and the rows the checkpoint covered were kept, not recomputed."""
    final = epochs_table(folder)
    assert final.epoch.tolist() == list(range(epochs + 1))
    assert len(before) >= 2  # epoch 0 and at least one trained epoch came before the interruption
    kept = final[final.epoch <= before.epoch.max()]
    cols = ["epoch", "train_loss", "test_acc", "seconds"]  # `seconds` differs if an epoch ran twice
    pd.testing.assert_frame_equal(kept[cols].reset_index(drop=True), before[cols].reset_index(drop=True))


def epochs_lasting(tmp_path: Path, seconds: float) -> int:
    """How many digits epochs (batch 256, 1 thread like a 1-CPU task) take about `seconds` here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path / "calibration"
        run_trial(TrialSpec.from_dict({"epochs": 2, "batch_size": 256, "device": "cpu"}), folder)
    finally:
        torch.set_num_threads(threads)
    rows = pd.read_parquet(folder / "epochs.parquet")
    per_epoch = float((rows.seconds + rows.eval_seconds).iloc[1:].mean())
    return max(15, min(400, math.ceil(seconds / per_epoch)))


def submit_long_trial(tmp_path: Path, sweep_name: str, seconds: float, **profile: object) -> tuple[Path, Path, str, int]:
    """Submit one digits trial that trains about `seconds` here to the local SLURM (no wait);
    returns the sweep folder, the trial folder, its job id and its epochs."""
    from orchestrator.sweep import main as sweep_main  # imported here: helpers stays light for tests that need none of it
    from trainer.cli import cli

    epochs = epochs_lasting(tmp_path, seconds)
    grid = write_grid(tmp_path, sweep_name, "seed: 0", f"  epochs: [{epochs}]\n")
    args = ["--grid", str(grid), "--cluster", str(write_profile(tmp_path, **profile)), "--results", str(tmp_path / "r")]
    assert cli(sweep_main, args) == 0
    sweep = tmp_path / "r" / sweep_name
    (trial,) = (sweep / "trials").iterdir()
    return sweep, trial, job_of(trial), epochs


def imported_by(code: str, modules: tuple[str, ...]) -> tuple[str, list[str]]:
    """Run `code` in a fresh interpreter (this checkout first on the path): its stdout, and which of
    `modules` it left imported. The import tests of the status and collect paths (issue 25)."""
    probe = f"{code}\nimport sys as _s; print(sorted(m for m in {modules!r} if m in _s.modules))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    *out, imported = proc.stdout.splitlines()
    return "\n".join(out), json.loads(imported.replace("'", '"'))
