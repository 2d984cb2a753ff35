"""The command: which rows, in which order, with which sizes and caps; refusals before anything is written."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu import resnet20 as R20
from benchmarks.gpu import resnet50 as R50
from benchmarks.gpu.report import Report, Result, Row, header
from trainer.errors import UserError
from trainer.spec import TrialSpec

BUDGET_S = 330.0  # the full check, data generation included; 6 min on a borrowed machine, with margin
K_FULL = (1, 4, 8, 16, 32)
K_SMALL = (1, 2)


@dataclass(frozen=True)
class Plan:
    small: bool
    ks: tuple[int, ...]
    k_extra: int  # K of the plain-CE, eager and trainer-path rows
    r20: R20.Timing
    r50: R50.Sizes
    caps: dict[str, float]


def plan_for(small: bool, cpus: int) -> Plan:
    if small:
        r20 = R20.Timing(batch=8, warmup=1, steps=2, seconds=math.inf)
        r50 = R50.Sizes(batch=4, image=32, warmup=1, steps=2, seconds=math.inf, train_files=8, val_files=8, repeat=3, workers=1)
        return Plan(
            True, K_SMALL, 2, r20, r50, dict.fromkeys(("r20", "r20_32", "r50", "loader", "eval", "compile_r20", "compile_r50"), 600.0)
        )
    r20 = R20.Timing(batch=TrialSpec().batch_size, warmup=5, steps=300, seconds=3.0)  # the trials' batch
    steps = 400
    repeat = -(-(10 + steps + 2) * 256 // 1024)
    r50 = R50.Sizes(
        batch=256,
        image=224,
        warmup=10,
        steps=steps,
        seconds=10.0,
        train_files=1024,
        val_files=1024,
        repeat=repeat,
        workers=max(1, cpus - 2),
    )
    caps = {"r20": 30.0, "r20_32": 45.0, "r50": 45.0, "loader": 50.0, "eval": 40.0, "compile_r20": 75.0, "compile_r50": 100.0}
    return Plan(False, K_FULL, 8, r20, r50, caps)


def versus(results: dict[str, float], key: str, fn: Callable[..., Result], *args: Any, **kwargs: Any) -> Callable[[], Result]:
    """`fn(*args, versus=<images/s of row `key`, None if it did not measure>)`, looked up when the row runs."""
    return lambda: fn(*args, versus=results.get(key), **kwargs)


def rows(p: Plan, device: torch.device, root: Path, report: Report) -> list[Row]:
    """In order of value: fused vs separate under CUDA graphs, the input path, evaluation, compile."""
    res, c, k = report.results, p.caps, p.k_extra
    out: list[Row] = []
    for n in p.ks:
        cap = c["r20_32"] if n >= 16 else c["r20"]
        out.append(Row(f"sep{n}", f"ResNet-20 x{n} separate, CUDA graphs", cap, partial(R20.separate, n, p.r20, device, True)))
        out.append(Row(f"fused{n}", f"ResNet-20 fused K={n}, CUDA graph", cap, versus(res, f"sep{n}", R20.fused, n, p.r20, device, True)))
    ce = {"alpha": 0.0}
    out += [
        Row(f"sep{k}ce", f"ResNet-20 x{k} separate, CUDA graphs, plain CE", c["r20"], partial(R20.separate, k, p.r20, device, True, **ce)),
        Row(
            f"fused{k}ce",
            f"ResNet-20 fused K={k}, CUDA graph, plain CE",
            c["r20"],
            versus(res, f"sep{k}ce", R20.fused, k, p.r20, device, True, **ce),
        ),
        Row(f"sep{k}eager", f"ResNet-20 x{k} separate, eager", c["r20"], partial(R20.separate, k, p.r20, device, False)),
        Row(f"fused{k}eager", f"ResNet-20 fused K={k}, eager", c["r20"], versus(res, f"sep{k}eager", R20.fused, k, p.r20, device, False)),
        Row(f"trainer{k}", f"ResNet-20 fused K={k}, trainer.fused", c["r20"], partial(R20.trainer_fused, k, p.r20, device, False)),
        Row("trainer1", "ResNet-20 single trial, trainer.loop", c["r20"], partial(R20.trainer_single, p.r20, device)),
        Row("r50", "ResNet-50 train, synthetic tensors", c["r50"], partial(R50.synthetic, p.r50, device)),
    ]
    names = {"torchvision": "portable (CPU decode)", "nvjpeg": "nvjpeg (GPU decode, torchvision)", "dali": "DALI"}
    for loader, name in names.items():
        run = versus(res, "r50", R50.through_loader, root, p.r50, device, loader)
        out.append(Row(f"r50-{loader}", f"ResNet-50 train, loader {name}", c["loader"], run))
    eval_loader = "nvjpeg" if device.type == "cuda" else "torchvision"
    out += [
        Row("eval", "ResNet-50 evaluation, val decoded once", c["eval"], partial(R50.evaluation, root, p.r50, device, eval_loader)),
        Row(
            f"trainer{k}c",
            f"ResNet-20 fused K={k}, trainer.fused, torch.compile",
            c["compile_r20"],
            partial(R20.trainer_fused, k, p.r20, device, True),
        ),
        Row("r50c", "ResNet-50 train, synthetic tensors, torch.compile", c["compile_r50"], partial(R50.synthetic, p.r50, device, True)),
    ]
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description="The GPU check: one table of what a GPU does with this project's code."
    )
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu-check.md and gpu-check.json (default ./gpu-check)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (cpu only with --small)")
    p.add_argument("--small", action="store_true", help="the smoke form: every row's code path, CPU-sized, no time budget")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"full check: later rows are not run (default {BUDGET_S:.0f})")
    return p.parse_args(argv)


def pick(device: str, small: bool) -> torch.device:
    """The device, or UserError (one line) when the check cannot run as asked."""
    from trainer.attempt import pick_device

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"--device is '{device}'; allowed: auto, cuda, cuda:N, cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device is '{device}' but no CUDA device is visible here; nothing was run or written")
    try:
        dev = pick_device(device)
    except UserError as err:  # cuda:N with N too large
        raise UserError(f"--device: {str(err).removeprefix('field ')}; nothing written") from None
    if dev.type != "cuda" and not small:
        why = "the full check runs only on a GPU; nothing written (--small: the CPU-sized smoke form)"
        raise UserError(f"--device {device}: no CUDA device here, and {why}")
    return dev


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        device = pick(a.device, a.small)
        if a.out.exists() and not a.out.is_dir():
            raise UserError(f"--out {a.out} is a file; give a folder (gpu-check.md and gpu-check.json are written into it)")
    except UserError as err:
        print(f"benchmarks.gpu: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # The smoke form's tiny batches: one intra-op thread is as fast, and far faster on a busy
        # machine (two spinning threads on a loaded 2-core VM made each row ~15x slower).
        torch.set_num_threads(1)
    p = plan_for(a.small, R50.cpu_count())
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        # First, before this process touches CUDA: the generator processes are forked.
        R50.make_jpegs(root, p.r50.train_files, p.r50.val_files, min(R50.cpu_count(), 16))
        head = header(device, "small (smoke form)" if a.small else "full")
        head["jpegs"] = f"{p.r50.train_files} train + {p.r50.val_files} val JPEGs generated in {time.perf_counter() - start:.1f} s"
        report = Report(a.out, head, device, None if a.small else a.budget_s, start)
        report.run(rows(p, device, root, report))
    print((a.out / "gpu-check.md").read_text(), end="")
    return 0


__all__ = ["Result", "main"]
