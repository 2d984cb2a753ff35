"""Data sets read from tiny fixtures in their exact standard on-disk layouts; batching and augmentation."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import DataInfo, DataMissing, TensorData, load_dataset, random_crop, read_digits
from trainer.spec import TrialSpec

from helpers import COLOURS, WNIDS, jpeg, make_cifar, make_tinyimagenet

CPU = torch.device("cpu")


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar10_layout(tmp_path: Path, style: str) -> None:
    train_x, train_y, test_x, test_y = make_cifar(tmp_path, style)
    data = load_dataset("cifar10", tmp_path, CPU)
    assert isinstance(data, TensorData)
    assert data.train_x.shape == (20, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 32, 32)
    assert data.train_y.dtype == torch.int64
    # Batches 1..5 in order; each row is 1024 red, then green, then blue values, row-major 32x32.
    assert data.train_y.tolist() == train_y.tolist() and data.test_y.tolist() == test_y.tolist()
    n, c, h, w = 13, 2, 5, 30
    assert data.train_x[n, c, h, w].item() == train_x[n, c * 1024 + h * 32 + w]
    assert data.test_x[3, 1, 31, 0].item() == test_x[3, 1024 + 31 * 32 + 0]
    assert data.info.num_classes == 10 and data.info.in_channels == 3
    x, y = next(iter(data.train_batches(0, 0, 8, augment=True)))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)


def test_cifar10_refuses_code_in_pickle(tmp_path: Path) -> None:
    """The batch files are pickles: loading one must never run what it names (here os.system)."""
    make_cifar(tmp_path)
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
        load_dataset("cifar10", tmp_path, CPU)
    assert not sentinel.exists()


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    make_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path, CPU)
    assert data.info.num_classes == 200
    assert data.train_x.shape == (6, 3, 64, 64) and data.test_x.shape == (4, 3, 64, 64)
    # Classes are the sorted wnids: n01443537 -> 0, n02085620 -> 1, n09999999 -> 2.
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_y.tolist() == [1, 2, 0, 1]  # in val_annotations.txt order
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        for img, label in zip(x, y):
            colour = COLOURS[sorted(WNIDS)[label]]
            mean = img.float().mean(dim=(1, 2))
            assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=4), (label, mean)


def test_tinyimagenet_annotations_with_blank_lines_pass_the_launch_and_load(tmp_path: Path) -> None:
    # The launcher's check skipped blank lines, the trials' reader did not: a trailing newline too
    # many passed the launch, then every attempt of every trial failed ("not enough values to unpack").
    from trainer.data import preflight_data

    make_tinyimagenet(tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n\n")
    preflight_data("tinyimagenet", tmp_path)
    data = load_dataset("tinyimagenet", tmp_path, CPU)
    assert data.test_y.tolist() == [1, 2, 0, 1]


# ---- ImageNet fixture (class folders, streamed) -------------------------------------------------
def make_imagenet(root: Path, val_classes: tuple[str, ...] = ("n01440764", "n01443537")) -> None:
    for split, classes in (("train", ("n01440764", "n01443537")), ("val", val_classes)):
        for k, c in enumerate(classes):
            for i in range(3 if split == "train" else 1):
                jpeg(root / "imagenet" / split / c / f"{c}_{i}.JPEG", (k * 200, 50, 50), size=40 + 8 * i)


def test_imagenet_layout(tmp_path: Path) -> None:
    make_imagenet(tmp_path)
    data = load_dataset("imagenet", tmp_path, CPU, num_workers=0)
    assert data.n_train == 6 and data.n_test == 2
    assert data.train_aug.classes == ["n01440764", "n01443537"]
    xs, ys = zip(*data.test_batches(2))
    assert xs[0].shape == (2, 3, 224, 224) and ys[0].tolist() == [0, 1]
    batches = list(data.train_batches(0, 0, 4, augment=True))
    assert len(batches) == 1 and batches[0][0].shape == (4, 3, 224, 224)  # ragged last batch dropped
    # Shuffled from (seed, epoch): the same labels in the same order again.
    again = list(data.train_batches(0, 0, 4, augment=True))
    assert torch.equal(batches[0][1], again[0][1])


def test_imagenet_augmentation_replays_without_workers(tmp_path: Path) -> None:
    """An epoch's crops and flips come from (seed, epoch), not from whatever used torch's RNG before."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "imagenet" / split / c).mkdir(parents=True)
            for i in range(2):  # noise images: every crop differs
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "imagenet" / split / c / f"{i}.JPEG")
    data = load_dataset("imagenet", tmp_path, CPU, num_workers=0)
    first = next(iter(data.train_batches(2, 5, 4, augment=True)))[0]
    torch.rand(10)  # the global RNG moves on (model init, another epoch, ...)
    again = next(iter(data.train_batches(2, 5, 4, augment=True)))[0]
    other = next(iter(data.train_batches(3, 5, 4, augment=True)))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_imagenet_val_classes_must_match(tmp_path: Path) -> None:
    make_imagenet(tmp_path, val_classes=("n01440764", "n09999999"))
    from trainer.errors import UserError

    with pytest.raises(UserError, match="class folders"):
        load_dataset("imagenet", tmp_path, CPU)


# ---- missing data, never a download -------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("tinyimagenet", "tiny-imagenet-200/train"),
        ("imagenet", "imagenet/train"),
    ],
)
def test_missing_data_one_line(tmp_path: Path, name: str, expected: str) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    with pytest.raises(DataMissing) as info:
        load_dataset(name, root, CPU)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(root / expected) in msg
    assert list(root.iterdir()) == []  # nothing fetched or created


def test_partly_missing_cifar_names_the_file(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataMissing, match=str(tmp_path / "cifar-10-batches-py" / "test_batch")):
        load_dataset("cifar10", tmp_path, CPU)


def test_loading_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a data loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    make_cifar(tmp_path)
    make_tinyimagenet(tmp_path)
    make_imagenet(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    for name in ("digits", "cifar10", "tinyimagenet", "imagenet"):
        load_dataset(name, tmp_path, CPU)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing was added under the data root


@pytest.mark.slow
def test_cli_missing_data_exits_2_with_one_line(tmp_path: Path, trainer_cli, write_spec) -> None:
    root = tmp_path / "no-data-here"
    fields = {"dataset": "cifar10", "epochs": 1, "data_root": str(root)}
    folder = tmp_path / TrialSpec.from_dict(fields).trial_id  # trainer.run wants the folder named by the trial id
    spec_path = write_spec(folder, **fields)
    out = trainer_cli(spec_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(root / "cifar-10-batches-py") in lines[0]
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed" and status["error_kind"] == "user"
    assert not root.exists()


# ---- digits -------------------------------------------------------------------------------------
def test_digits_split_golden() -> None:
    (train_x, train_y), (test_x, test_y) = read_digits(Path("/unused"))
    assert train_x.shape == (1438, 1, 8, 8) and test_x.shape == (359, 1, 8, 8)
    assert train_x.dtype == torch.uint8 and int(train_x.max()) == 255
    # Stratified ~80/20: each class puts round(20%) of its samples into the test set.
    counts = torch.bincount(torch.cat([train_y, test_y]), minlength=10)
    assert torch.bincount(test_y, minlength=10).tolist() == [round(0.2 * int(c)) for c in counts]
    # The same split on every machine (numpy's frozen legacy RandomState stream).
    digest = hashlib.sha256(",".join(map(str, test_y.tolist())).encode()).hexdigest()[:16]
    assert digest == "474d7eceb6ae445b"
    assert int(test_x.long().sum()) == 1776711 and int(train_x.long().sum()) == 7177090


def test_digits_same_across_loads() -> None:
    a, b = read_digits(Path("/unused")), read_digits(Path("/unused"))
    for (ax, ay), (bx, by) in zip(a, b):
        assert torch.equal(ax, bx) and torch.equal(ay, by)


# ---- batching and augmentation --------------------------------------------------------------------
def naive_crop(x: np.ndarray, pad: int, shifts: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        padded = np.pad(x[b], ((0, 0), (pad, pad), (pad, pad)))
        r, c = shifts[b]
        out[b] = padded[:, r : r + x.shape[2], c : c + x.shape[3]]
    return out


@pytest.mark.parametrize("pad", [1, 4])
def test_random_crop_matches_naive(pad: int) -> None:
    g = torch.Generator().manual_seed(pad)
    x = torch.randint(0, 256, (16, 3, 10, 12), generator=g, dtype=torch.uint8)
    shifts = torch.randint(0, 2 * pad + 1, (16, 2), generator=g)
    shifts[0] = torch.tensor([0, 2 * pad])  # the extreme corners
    shifts[1] = torch.tensor([2 * pad, 0])
    got = random_crop(x, pad, shifts)
    np.testing.assert_array_equal(got.numpy(), naive_crop(x.numpy(), pad, shifts.numpy()))


def indexed_data(n: int = 200, flip: bool = False, pad: int = 0) -> TensorData:
    """Sample i is an 1x4x4 image whose first pixel holds i: batches reveal which samples they hold.
    mean 0, std 1/255 make the normalisation the identity."""
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    x[:, 0, 1, 3] = 255  # an asymmetric mark: flips show
    info = DataInfo(num_classes=10, in_channels=1, mean=(0.0,), std=(1 / 255,), crop_pad=pad, flip=flip)
    y = torch.arange(n) % 10
    return TensorData(info, (x, y), (x[:30], y[:30]), CPU)


def sample_ids(data: TensorData, epoch: int, seed: int, augment: bool = False, batch: int = 32) -> list[int]:
    return [int(v) for x, _ in data.train_batches(epoch, seed, batch, augment) for v in x[:, 0, 0, 0].round()]


def test_train_batches_are_a_permutation_and_reproducible() -> None:
    data = indexed_data()
    ids = sample_ids(data, epoch=0, seed=0)
    assert len(ids) == 192 and len(set(ids)) == 192  # 200 // 32 full batches, no repeats
    assert ids == sample_ids(data, epoch=0, seed=0)
    assert ids != sample_ids(data, epoch=1, seed=0)
    assert ids != sample_ids(data, epoch=0, seed=1)
    assert ids != sorted(ids)
    for x, y in data.train_batches(0, 0, 32, False):
        assert torch.equal(y, x[:, 0, 0, 0].round().long() % 10)  # labels travel with their images


def test_augmentation_reproducible_and_varies() -> None:
    data = indexed_data(flip=True, pad=1)
    a = torch.cat([x for x, _ in data.train_batches(3, 7, 32, augment=True)])
    b = torch.cat([x for x, _ in data.train_batches(3, 7, 32, augment=True)])
    c = torch.cat([x for x, _ in data.train_batches(4, 7, 32, augment=True)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = torch.cat([x for x, _ in data.train_batches(3, 7, 32, augment=False)])
    assert (plain[:, 0, 1, 3] == 255).all() and (plain[:, 0, 1, 0] == 0).all()
    assert not torch.equal(a, plain)


def test_flips_about_half() -> None:
    data = indexed_data(flip=True, pad=0)
    x = torch.cat([x for x, _ in data.train_batches(0, 0, 32, augment=True)])
    flipped = x[:, 0, 1, 0] == 255  # the mark moved to the other side
    assert 0.3 < flipped.float().mean().item() < 0.7
    assert torch.equal(x[flipped].flip(3)[:, 0, 1, 3], torch.full((int(flipped.sum()),), 255.0))


def test_digits_never_flipped() -> None:
    data = load_dataset("digits", "/unused", CPU)
    assert data.info.flip is False and data.info.in_channels == 1
    x, y = next(iter(data.train_batches(0, 0, 64, augment=True)))
    assert x.shape == (64, 1, 8, 8)


def test_test_batches_cover_the_set_in_order() -> None:
    data = indexed_data()
    batches = list(data.test_batches(7))
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
    ids = [int(v) for x, _ in batches for v in x[:, 0, 0, 0].round()]
    assert ids == list(range(30))
