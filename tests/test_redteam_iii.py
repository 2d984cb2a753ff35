"""Red-team regressions, third round (issue 21): the newer surfaces.

sbatch_extra abbreviations, special files and pixel bombs in an ImageNet tree, damaged mid-epoch
checkpoints, signals to launchers and groups, ablate / represent / collect on damaged trials, and
three older weak spots. Each case drives the real component (CPU, real FIFOs and symlinks); the
few that train are marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.profiles import RESERVED_OPTIONS, SBATCH_OPTIONS, load_profile, sbatch_option
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli
from trainer.errors import UserError
from trainer.imagenet.decode import MAX_PIXELS, BadImage, decode_rgb, image_size
from trainer.imagenet.manifest import ensure_manifest, manifest_dir
from trainer.imagenet.manifest import main as manifest_main

from imagenet_tree import encode, make_imagenet_tree


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
