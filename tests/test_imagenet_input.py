"""ImageNet input: layouts, the manifest, both loaders' determinism, bad images, the val cache.

Trees come from tests/imagenet_tree.py (real small JPEG/PNG files in the official layouts). Every
test passes its own cache_dir, so nothing is written outside tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from trainer.data import DataInfo, DataMissing, TensorData, load_dataset
from trainer.errors import UserError
from trainer.imagenet import augment as A
from trainer.imagenet.decode import BadImage, decode_rgb, image_size
from trainer.imagenet.manifest import ensure_manifest, main, manifest_dir, preflight
from trainer.imagenet.skipped import SKIPPED

from imagenet_tree import CLASSES, Tree, make_imagenet_tree

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_skip_log() -> None:
    """The skip log is per process; each test starts with an empty one."""
    SKIPPED.reset()


def open_data(tree: Tree, cache: Path, workers: int = 0, loader: str = "torchvision"):  # type: ignore[no-untyped-def]
    return load_dataset("imagenet", tree.root, CPU, workers, loader=loader, cache_dir=cache)


def epoch(
    data, epoch: int = 0, seed: int = 0, batch: int = 4, augment: bool = True, start_step: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
    return list(data.train_batches(epoch, seed, batch, augment, start_step=start_step))


def same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ---- layouts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("val_layout,ground_truth", [("folders", None), ("flat", "devkit"), ("flat", "csv")])
def test_val_layouts_give_the_same_classes_and_labels(tmp_path: Path, val_layout: str, ground_truth: str | None) -> None:
    tree = make_imagenet_tree(tmp_path / "data", val_layout=val_layout, ground_truth=ground_truth)
    m = ensure_manifest(tree.root, tmp_path / "cache")
    assert m.classes == sorted(CLASSES) and m.val_layout == val_layout
    index = {w: i for i, w in enumerate(m.classes)}
    got = {Path(p).stem: label for p, label in zip(m.val.table.column("path").to_pylist(), m.val.labels.tolist())}
    assert got == {stem: index[w] for stem, w in tree.val_wnid.items()}
    assert sorted(m.train.table.column("path").to_pylist()) == sorted(tree.train)  # README.txt is no image
    assert [m.classes[k] for k in m.train.labels] == m.train.table.column("wnid").to_pylist()


def test_flat_val_without_ground_truth_is_one_line(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", val_layout="flat", ground_truth=None)
    with pytest.raises(DataMissing) as info:
        preflight(tree.root, tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg
    folder = tree.root / "imagenet"
    assert str(folder / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt") in msg
    assert "meta.mat" in msg and str(folder / "LOC_val_solution.csv") in msg
    assert not (tmp_path / "cache").exists()  # nothing cached for a broken tree


@pytest.mark.parametrize(
    "ground_truth,damage,said",
    [
        ("devkit", b"abc\n", "value 7 (ILSVRC2012_val_00000007's label) is 'abc'; allowed: one ILSVRC2012_ID (a whole number) per line"),
        ("devkit", b"1.0\n", "is '1.0'; allowed: one ILSVRC2012_ID"),
        ("devkit", None, "is not UTF-8 text"),
        ("csv", None, "is not UTF-8 text"),
        ("csv", b'"' + b"x" * 200_000 + b"\n", "is not a CSV file (field larger than field limit"),
    ],
)
def test_a_damaged_ground_truth_file_is_one_line(tmp_path: Path, ground_truth: str, damage: bytes | None, said: str) -> None:
    # A stray line, a file saved as UTF-16 by an editor, NUL bytes: tracebacks from the launcher before.
    tree = make_imagenet_tree(tmp_path / "data", bad=False, val_layout="flat", ground_truth=ground_truth)
    folder = tree.root / "imagenet"
    devkit = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    gt = folder / (devkit if ground_truth == "devkit" else "LOC_val_solution.csv")
    text = gt.read_bytes()
    if ground_truth == "devkit":
        assert len(text.split()) == 6  # the damage below is the 7th value
    gt.write_bytes(text + damage if damage is not None else text.decode().encode("utf-16"))
    with pytest.raises(UserError) as info:
        preflight(tree.root, tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"dataset 'imagenet': {gt} ") and said in msg, msg
    assert not (tmp_path / "cache").exists()


def test_more_class_folders_than_the_networks_outputs_fail_the_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1,001 class folders for 1,000 outputs: every trial would fail in its loss ("Target 1000 is out
    # of bounds"), each attempt. Checked with the registry's count lowered below this tree's 3 classes.
    import dataclasses

    from trainer import data as D

    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    D.preflight_data("imagenet", tree.root, tmp_path / "cache")  # 3 classes, 1000 outputs: fine
    info, reader = D.DATASETS["imagenet"]
    monkeypatch.setitem(D.DATASETS, "imagenet", (dataclasses.replace(info, num_classes=2), reader))
    with pytest.raises(DataMissing) as err:
        D.preflight_data("imagenet", tree.root, tmp_path / "cache")
    assert str(err.value) == (
        f"dataset 'imagenet': {tree.root / 'imagenet' / 'train'} holds 3 class folders; allowed: at most 2 "
        "(the network's outputs), the ILSVRC-2012 classes"
    )


def test_val_class_missing_from_train_is_named(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    (tree.root / "imagenet/val/n01440764").rename(tree.root / "imagenet/val/n09999999")
    with pytest.raises(UserError, match="n09999999") as info:
        preflight(tree.root, tmp_path / "cache")
    assert "\n" not in str(info.value) and "class folders" in str(info.value)


def test_train_class_absent_from_val_is_named(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False, val_layout="flat", ground_truth="csv")
    csv = tree.root / "imagenet/LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(line.replace("n01443537", "n01440764") for line in lines) + "\n")
    with pytest.raises(UserError, match="absent from .*n01443537"):
        preflight(tree.root, tmp_path / "cache")


def test_missing_imagenet_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match=str(tmp_path / "imagenet" / "train")):
        preflight(tmp_path, tmp_path / "cache")


# ---- the manifest -------------------------------------------------------------------------------
def test_manifest_is_written_once_and_reused_without_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first = ensure_manifest(tree.root, cache)
    where = manifest_dir(tree.root, cache)
    assert first.where == where and {p.name for p in where.iterdir()} == {"train.parquet", "val.parquet", "manifest.json"}
    assert pq.read_table(where / "train.parquet").column_names[:6] == ["path", "label", "wnid", "size", "ok", "error"]
    mtime = (where / "manifest.json").stat().st_mtime_ns

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tree was listed again")

    with monkeypatch.context() as mp:
        for target, name in ((os, "scandir"), (os, "listdir"), (os, "walk"), (Path, "iterdir"), (Path, "glob"), (Path, "rglob")):
            mp.setattr(target, name, no_listing)
        again = ensure_manifest(tree.root, cache)
        data = open_data(tree, cache)
    assert again.classes == first.classes and again.train.table.equals(first.train.table)
    assert data.n_train == len(tree.train) and (where / "manifest.json").stat().st_mtime_ns == mtime

    # Stale: a file added to a class folder changes that folder's time -> listed again.
    (tree.root / "imagenet/train/n01443537/extra.JPEG").write_bytes((tree.root / "imagenet" / tree.train[0]).read_bytes())
    os.utime(tree.root / "imagenet/train/n01443537", ns=(1, 1))  # a different time even on coarse clocks
    assert len(ensure_manifest(tree.root, cache).train) == len(tree.train) + 1


def test_check_marks_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    assert main(["--data-root", str(tree.root), "--cache-dir", str(tmp_path / "cache"), "--check", "--workers", "1"]) == 0
    where = manifest_dir(tree.root, tmp_path / "cache")
    rows = {r["path"]: r for s in ("train", "val") for r in pq.read_table(where / f"{s}.parquet").to_pylist()}
    assert {p for p, r in rows.items() if r["ok"] is False} == tree.bad
    assert all(r["ok"] is True and r["height"] > 0 and r["error"] is None for p, r in rows.items() if p not in tree.bad)
    assert rows["train/n01440764/n01440764_empty.JPEG"]["error"].startswith("empty file")
    out = capsys.readouterr()
    assert "2 unreadable" in out.out and "check train" in out.err  # progress on stderr


def test_unwritable_cache_keeps_the_manifest_in_memory(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    m = ensure_manifest(tree.root, blocker)
    assert m.where is None and len(m.train) == len(tree.train)


# ---- decoding and geometry ------------------------------------------------------------------------
def test_decode_gives_rgb_for_every_readable_kind(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    folder = tree.root / "imagenet"
    for rel in tree.train + tree.val:
        data = (folder / rel).read_bytes()
        if rel in tree.bad:
            with pytest.raises(BadImage):
                decode_rgb(data)
            continue
        x = decode_rgb(data)
        assert x.dtype == torch.uint8 and x.shape[0] == 3 and tuple(x.shape[1:]) == image_size(data), rel
    gray = decode_rgb((folder / "train/n01440764/n01440764_gray.JPEG").read_bytes())
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_a_16_bit_png_decodes_to_its_8_bit_picture(tmp_path: Path) -> None:
    # torchvision decodes a 16-bit PNG to uint16: stored into the loaders' uint8 batches each value
    # wrapped modulo 256 (a smooth ramp became a saw-tooth), not counted as a bad image.
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    for name, image in (("gray16.png", Image.fromarray(ramp)), ("rgb16.png", None)):
        path = tmp_path / name
        if image is not None:
            image.save(path)
        else:  # 16 bits per channel, RGB: written by hand (PIL writes no 48-bit PNG), big-endian as PNG stores it
            import struct
            import zlib

            rows = b"".join(b"\x00" + np.repeat(ramp[r], 3).astype(">u2").tobytes() for r in range(ramp.shape[0]))

            def chunk(kind: bytes, body: bytes) -> bytes:
                return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

            ihdr = struct.pack(">IIBBBBB", ramp.shape[1], ramp.shape[0], 16, 2, 0, 0, 0)
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
        x = decode_rgb(path.read_bytes())
        assert x.dtype == torch.uint8 and x.shape == (3, 16, 256), name
        assert torch.equal(x[0, 0], torch.from_numpy((ramp[0] >> 8).astype(np.uint8))), name  # the high byte: monotone
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]), name


def test_geometry_is_torchvisions() -> None:
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    for h, w in ((375, 500), (500, 333), (64, 300), (300, 64), (256, 256)):
        x = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)  # HWC memory, as decode_jpeg
        ref = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(x.contiguous())
        assert torch.equal(A.apply(x, A.eval_geometry(h, w)), ref)
        u = A.draws(1, 2, 0, 50)
        for k in range(50):
            gm = A.train_geometry(h, w, u[k])
            assert gm.top >= 0 and gm.top + gm.height <= h and gm.left >= 0 and gm.left + gm.width <= w
            if k < 3:
                want = v2.functional.resized_crop(x.contiguous(), gm.top, gm.left, gm.height, gm.width, [224, 224], antialias=True)
                assert torch.equal(A.apply(x, gm), want.flip(-1) if gm.flip else want)
    # Extreme aspect ratio: every try fails -> torchvision's centre fallback.
    assert A.random_resized_crop(10, 1000, np.full(A.DRAWS, 0.99)) == (0, (1000 - 13) // 2, 10, 13)


def test_draws_do_not_depend_on_batching() -> None:
    whole = A.draws(5, 3, 0, 40)
    assert np.array_equal(np.concatenate([A.draws(5, 3, s, 8) for s in range(0, 40, 8)]), whole)
    assert np.array_equal(A.draws(5, 3, 17, 3), whole[17:20])
    assert not np.array_equal(A.draws(5, 4, 0, 40), whole)
    flips = np.concatenate([A.draws(0, 0, 0, 2000)[:, -1] < 0.5])
    assert 0.45 < flips.mean() < 0.55


# ---- training batches -----------------------------------------------------------------------------
def test_train_batches_shape_device_and_determinism(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    data = open_data(tree, tmp_path / "cache")
    a = epoch(data)
    assert len(a) == data.n_train // 4 == 3
    for x, y in a:
        assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and x.device == CPU and y.dtype == torch.int64
    assert float(a[0][0].min()) > -2.2 and float(a[0][0].max()) < 2.7  # normalised with ImageNet's mean/std
    assert same(a, epoch(data))
    other = epoch(data, epoch=1)
    assert not torch.equal(a[0][0], other[0][0])
    plain = epoch(data, augment=False)
    assert same(plain, epoch(data, augment=False)) and not torch.equal(plain[0][0], a[0][0])
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in a]  # same order, other cut


def test_start_step_skips_without_decoding(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    data = open_data(tree, tmp_path / "cache")
    full = epoch(data, epoch=2, seed=9)
    before = data.decoded
    tail = epoch(data, epoch=2, seed=9, start_step=2)
    assert same(tail, full[2:]) and data.decoded - before == 4


@pytest.mark.slow  # starts the forkserver and two workers (~3-7 s on a busy 2-core machine)
def test_workers_do_not_change_the_batches(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    none = epoch(open_data(tree, tmp_path / "cache", workers=0), epoch=1, seed=3)
    two = epoch(open_data(tree, tmp_path / "cache", workers=2), epoch=1, seed=3)
    assert same(none, two)


def test_bad_images_are_skipped_and_counted(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    data = open_data(tree, tmp_path / "cache")  # no --check: found while decoding
    batches = epoch(data, batch=4)
    n_listed = data.n_train
    order = A.epoch_order(n_listed, 0, 0)[: (n_listed // 4) * 4]
    rows = data.manifest.train.table.column("path").to_pylist()
    bad_positions = sum(rows[int(r)] in tree.bad for r in order)
    assert sum(len(y) for _, y in batches) == len(order) - bad_positions  # the epoch finished, minus the bad ones
    met = {rows[int(r)] for r in order if rows[int(r)] in tree.bad}
    assert met and set(data.skipped.first) == met and data.skipped.count == len(met)
    assert all(data.skipped.reasons[p] for p in met) and data.skipped.as_dict()["count"] == len(met)
    again = epoch(data, batch=4)  # known bad now: not read again, same batches
    assert same(again, batches)


def test_check_makes_loaders_skip_up_front(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    unchecked = epoch(open_data(tree, tmp_path / "c1"))
    SKIPPED.reset()
    ensure_manifest(tree.root, tmp_path / "c2", check=True, workers=1)
    data = open_data(tree, tmp_path / "c2")
    checked = epoch(data)
    assert same(checked, unchecked)  # the order does not depend on whether --check ran
    assert set(data.skipped.first) == tree.bad and "manifest --check" in data.skipped.reasons[min(tree.bad)]


# ---- the val cache --------------------------------------------------------------------------------
def test_val_is_decoded_once(tmp_path: Path) -> None:
    tree = make_imagenet_tree(tmp_path / "data")
    data = open_data(tree, tmp_path / "cache")
    first = list(data.test_batches(4))
    decoded = data.decoded
    assert decoded == len(tree.val)  # every val file once (the truncated one fails and is skipped)
    second = list(data.test_batches(3))
    assert data.decoded == decoded
    assert torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in second]))
    labels = torch.cat([y for _, y in first])
    assert len(labels) == data.n_test == len(tree.val) - 1 and first[0][0].shape[1:] == (3, 224, 224)
    wnids = [tree.val_wnid[Path(p).stem] for p in tree.val if p not in tree.bad]
    assert labels.tolist() == [data.classes.index(w) for w in sorted(wnids)]  # file order: val/<wnid>/...


# ---- DALI (optional dependency) ----------------------------------------------------------------
def test_dali_pipeline_on_cpu_matches_the_portable_loader(tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI not installed (the optional 'gpu' extra)")
    tree = make_imagenet_tree(tmp_path / "data")  # with a truncated JPEG that DALI cannot decode
    portable = open_data(tree, tmp_path / "cache", loader="torchvision")
    dali = open_data(tree, tmp_path / "cache", loader="dali")
    for augment in (True, False):
        a, b = epoch(portable, epoch=4, seed=1, augment=augment), epoch(dali, epoch=4, seed=1, augment=augment)
        assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]  # same order, same skips
        for (xa, _), (xb, _) in zip(a, b):
            # Same windows and flips; the resize kernels differ by rounding: within 2 grey levels.
            assert float(((xa - xb).abs() * 0.229 * 255).max()) < 2.0
    va, vb = list(portable.test_batches(8)), list(dali.test_batches(8))
    assert torch.equal(torch.cat([y for _, y in va]), torch.cat([y for _, y in vb]))
    assert float(((torch.cat([x for x, _ in va]) - torch.cat([x for x, _ in vb])).abs() * 0.229 * 255).max()) < 2.0


# ---- in-memory sets: start_step ----------------------------------------------------------------
@pytest.mark.parametrize("augment", [False, True])
def test_tensor_data_start_step_is_the_tail(augment: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(100) % 10
    cifar_like = TensorData(DataInfo(10, 3, (0.5,) * 3, (0.25,) * 3, crop_pad=2, flip=True), (x, y), (x[:10], y[:10]), CPU)
    digits = load_dataset("digits", "/unused", CPU)
    for data in (cifar_like, digits):
        full = list(data.train_batches(3, 7, 16, augment))
        for start in (0, 1, len(full) - 1, len(full)):
            assert same(list(data.train_batches(3, 7, 16, augment, start_step=start)), full[start:])
