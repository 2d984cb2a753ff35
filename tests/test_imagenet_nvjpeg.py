"""The nvjpeg loader (trainer.imagenet.nvjpeg): batches planned on the CPU, decoded and cut where the device is.

On a CPU device it must give bitwise the portable loader's batches (same plan, same decoder, same
resize); on CUDA, the GPU decode of the same images is compared with the CPU decode (skipped here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.data import load_dataset
from trainer.errors import UserError
from trainer.imagenet.dataset import pick_loader
from trainer.imagenet.feeder import Feeder
from trainer.imagenet.manifest import ensure_manifest
from trainer.imagenet.nvjpeg import decode_encoded, geometry_of, nvjpeg_batches
from trainer.imagenet.plan import Plan, Source
from trainer.imagenet.portable import decode_items
from trainer.imagenet.skipped import SKIPPED
from trainer.spec import TrialSpec

from imagenet_tree import Tree, make_imagenet_tree

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_skip_log() -> None:
    SKIPPED.reset()


def train_plan(tree: Tree, cache: Path, epoch: int = 3, seed: int = 5, batch: int = 4, augment: bool = True) -> Plan:
    m = ensure_manifest(tree.root, cache)
    src = Source(str(m.folder), m.train.paths, m.train.labels, m.train.sizes_hw, m.train.bad.copy())
    return Plan(src, batch, seed, epoch, shuffle=True, augment=augment, drop_last=True)


def test_planning_is_the_feeders_and_does_not_depend_on_prefetch(tmp_path: Path) -> None:
    """Which samples, which windows, which flips: computed on the CPU, the same for any read-ahead."""
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    plan = train_plan(tree, tmp_path / "cache")
    feeder = Feeder(plan, threads=1)
    for step in range(plan.steps):
        enc = feeder.batch(step)
        items = plan.items(step)
        assert [it.index for it in enc.items] == [it.index for it in items]
        for i, item in enumerate(items):
            h, w = (int(v) for v in enc.crop_shape[i])
            assert geometry_of(enc, i).height == h and geometry_of(enc, i).width == w
            image_hw = decode_items(plan, [item]).images.shape  # decodes fine: every file is good here
            assert image_hw[1:] == (3, 224, 224)
    feeder.close()
    one = [(d.labels.tolist(), d.images) for d in nvjpeg_batches(plan, 0, CPU, reader_threads=1, prefetch=1)]
    three = [(d.labels.tolist(), d.images) for d in nvjpeg_batches(plan, 0, CPU, reader_threads=3, prefetch=3)]
    assert [a for a, _ in one] == [a for a, _ in three] and all(torch.equal(x, y) for (_, x), (_, y) in zip(one, three))
    tail = [d.labels.tolist() for d in nvjpeg_batches(plan, 1, CPU)]
    assert tail == [a for a, _ in one][1:]  # start_step: the tail of the pass, nothing read before it


def test_cpu_device_gives_the_portable_batches_bitwise_with_bad_files(tmp_path: Path) -> None:
    """Grayscale, CMYK, a PNG named .JPEG (read by the CPU fallback), a truncated JPEG and an empty file (skipped)."""
    tree = make_imagenet_tree(tmp_path / "data")
    for augment in (True, False):
        plan = train_plan(tree, tmp_path / "cache", augment=augment)
        nv = list(nvjpeg_batches(plan, 0, CPU))
        for step, d in enumerate(nv):
            ref = decode_items(plan, plan.items(step))
            assert d.labels.tolist() == ref.labels.tolist() and torch.equal(d.images, ref.images)
            assert sorted(s[1] for s in d.skipped) == sorted(s[1] for s in ref.skipped)
            assert d.decoded == ref.decoded
    met = {s[1] for d in nv for s in d.skipped}
    assert met and met <= tree.bad


def test_loader_choice_and_dataset(tmp_path: Path) -> None:
    assert TrialSpec(loader="nvjpeg").trial_id == TrialSpec(loader="auto").trial_id  # how images are decoded is not the trial
    assert pick_loader("auto", CPU) == "torchvision"  # never nvjpeg or DALI without a GPU
    assert pick_loader("nvjpeg", CPU) == "nvjpeg"  # asked for: runs on the CPU (tests)
    with pytest.raises(UserError, match="nvjpeg"):
        pick_loader("nvJPEG", CPU)  # the message lists what is allowed
    tree = make_imagenet_tree(tmp_path / "data", bad=False)
    nv = load_dataset("imagenet", tree.root, CPU, 0, loader="nvjpeg", cache_dir=tmp_path / "cache")
    tv = load_dataset("imagenet", tree.root, CPU, 0, loader="torchvision", cache_dir=tmp_path / "cache")
    assert nv.loader == "nvjpeg"  # type: ignore[union-attr]
    a, b = list(nv.train_batches(1, 2, 4, True)), list(tv.train_batches(1, 2, 4, True))
    assert len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert torch.equal(torch.cat([x for x, _ in nv.test_batches(8)]), torch.cat([x for x, _ in tv.test_batches(8)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_gpu_decode_is_within_bounds_of_the_cpu_decode(tmp_path: Path) -> None:
    """nvJPEG's IDCT and chroma upsampling and the float resize on CUDA against libjpeg-turbo + uint8 resize.

    Bound (docs/imagenet-input.md): a mean absolute difference under 2 grey levels per batch, the
    bound torchvision's own test puts on decode_jpeg(device="cuda") against its CPU decode.
    """
    tree = make_imagenet_tree(tmp_path / "data")
    cuda = torch.device("cuda")
    for augment in (True, False):
        plan = train_plan(tree, tmp_path / "cache", augment=augment)
        feeder = Feeder(plan, threads=1)
        for step in range(plan.steps):
            enc = feeder.batch(step)
            gpu, cpu = decode_encoded(plan, enc, cuda), decode_encoded(plan, enc, CPU)
            assert gpu.labels.tolist() == cpu.labels.tolist() and gpu.images.device.type == "cuda"
            diff = (gpu.images.cpu().int() - cpu.images.int()).abs().float()
            if diff.numel():
                assert float(diff.mean()) < 2.0
        feeder.close()
