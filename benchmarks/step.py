"""Trainer speed, measured side by side in one run: the regularizer's cost and the evaluation's.

    python -m benchmarks.step [--model resnet20] [--dataset digits] [--batch-size 128] [--steps 20]
                              [--rounds 7] [--alpha -10] [--device auto] [--threads N]
    python -m benchmarks.step --dataset synthetic-cifar --n-train 5000     # CIFAR-shaped, no data needed

Prints one table:
  - the time of one training step at alpha = 0 and at `--alpha` (the real `train_epoch`, real
    batches with augmentation), and their ratio (target <= 1.10x: the regularizer is to be cheap
    and alpha = 0 free of it; see docs/benchmarks.md);
  - the evaluation of the whole test set (loss, accuracy, every unit's CSI) as a fraction of an
    epoch, train + eval (target <= 10%);
  - training images per second.
The machine is shared and noisy, so the measurements alternate (ABBA order) over several rounds
after a warm-up round, and the table shows medians; the ratio is the median of the per-round
ratios, so slow drifts of the machine cancel.

`synthetic-cifar` is random uint8 3x32x32 images with 10 random labels (CIFAR-10's normalisation
and augmentation), 50k/10k by default or `--n-train` (test set: a fifth of it, as CIFAR).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from trainer.attempt import pick_device
from trainer.data import Batch, Data, TensorData, data_info, eval_batch_size, load_dataset
from trainer.loop import evaluate, train_epoch
from trainer.models import build_model
from trainer.provenance import device_name
from trainer.registry import DATASET_NAMES, MODEL_NAMES
from trainer.spec import TrialSpec

SYNTHETIC = "synthetic-cifar"
RATIO_TARGET, EVAL_TARGET = 1.10, 0.10


def synthetic_cifar(n_train: int, n_test: int, device: torch.device, seed: int = 0) -> TensorData:
    """Random CIFAR-shaped data, built directly as TensorData (no files)."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> Batch:
        return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)

    return TensorData(data_info("cifar10"), part(n_train), part(n_test), device)


def step_batches(data: Data, batch_size: int, steps: int, round_: int, seed: int = 0) -> Iterator[Batch]:
    """`steps` training batches of trial `seed`, running on into the following epochs if one is too short."""
    epochs = (data.train_batches(round_ * 1000 + e, seed, batch_size, augment=True) for e in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), steps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    if args.dataset == SYNTHETIC:
        n_test = args.n_test or max(args.n_train // 5, args.batch_size)
        data: Data = synthetic_cifar(args.n_train, n_test, device)
        info = data.info
    else:
        info = data_info(args.dataset)
        data = load_dataset(args.dataset, TrialSpec().resolved_data_root() if args.data_root is None else args.data_root, device)
    if data.n_train < args.batch_size:
        raise SystemExit(f"error: {data.n_train} training images, fewer than one batch of {args.batch_size}")
    torch.manual_seed(0)
    base = build_model(args.model, info.num_classes, info.in_channels).to(device)
    if device.type == "cuda":
        base = base.to(memory_format=torch.channels_last)
    # One model and optimizer per mode: each trains on its own trajectory, as a real trial would.
    modes = {0.0: copy.deepcopy(base), args.alpha: copy.deepcopy(base)}
    opts = {a: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4) for a, m in modes.items()}
    eval_batch = args.eval_batch or eval_batch_size(data, args.batch_size, device)  # as trainer.run

    def train(alpha: float, round_: int) -> tuple[float, float]:
        """Wall and process-CPU seconds per step. On a shared CPU the process time is the steadier
        figure: it does not count the time other jobs held the cores."""
        cpu = time.process_time()
        stats = train_epoch(modes[alpha], opts[alpha], step_batches(data, args.batch_size, args.steps, round_), alpha,
                            info.num_classes, device)  # fmt: skip
        return stats.seconds / stats.steps, (time.process_time() - cpu) / stats.steps

    def evaluation() -> float:
        sync(device)
        ev = evaluate(modes[0.0], data.test_batches(eval_batch), info.num_classes, device)
        return ev.seconds

    plain, reg, ratios, cpu_ratios, evals = [], [], [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up (allocator, kernels, caches) and is dropped
        order = (0.0, args.alpha) if r % 2 == 0 else (args.alpha, 0.0)  # ABBA: drifts cancel
        t = {a: train(a, r) for a in order}
        e = evaluation()
        if r == 0:
            continue
        plain.append(t[0.0][0])
        reg.append(t[args.alpha][0])
        ratios.append(t[args.alpha][0] / t[0.0][0])
        cpu_ratios.append(t[args.alpha][1] / t[0.0][1])
        evals.append(e)
    step0, step_a, ev = statistics.median(plain), statistics.median(reg), statistics.median(evals)
    steps_per_epoch = data.n_train // args.batch_size
    epoch_train = step0 * steps_per_epoch
    return {
        "device": f"{device.type} ({device_name(device)})",
        "threads": torch.get_num_threads(),
        "n_train": data.n_train,
        "n_test": data.n_test,
        "steps_per_epoch": steps_per_epoch,
        "step_ms_0": step0 * 1e3,
        "step_ms_a": step_a * 1e3,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
        "img_s_0": args.batch_size / step0,
        "img_s_a": args.batch_size / step_a,
        "eval_s": ev,
        "epoch_train_s": epoch_train,
        "eval_fraction": ev / (epoch_train + ev),
        "eval_fraction_reg": ev / (step_a * steps_per_epoch + ev),
        "eval_batch": eval_batch,
    }


def table(args: argparse.Namespace, m: dict[str, Any]) -> str:
    ok = lambda good: "ok" if good else "ABOVE TARGET"
    a = f"{args.alpha:g}"
    rows = [
        ("", "alpha=0", f"alpha={a}", "target"),
        ("step time (ms, median)", f"{m['step_ms_0']:.1f}", f"{m['step_ms_a']:.1f}", ""),
        ("training images/s", f"{m['img_s_0']:.0f}", f"{m['img_s_a']:.0f}", ""),
        ("step time ratio", "1.00x", f"{m['ratio']:.2f}x ({m['ratio_min']:.2f}-{m['ratio_max']:.2f})",
         f"<= {RATIO_TARGET:.2f}x {ok(m['ratio'] <= RATIO_TARGET)}"),
        ("  same, process CPU time", "1.00x", f"{m['cpu_ratio']:.2f}x ({m['cpu_ratio_min']:.2f}-{m['cpu_ratio_max']:.2f})", ""),
        (f"train epoch (s, {m['steps_per_epoch']} steps)", f"{m['epoch_train_s']:.3f}",
         f"{m['step_ms_a'] * m['steps_per_epoch'] / 1e3:.3f}", ""),
        (f"eval, {m['n_test']} test images, batch {m['eval_batch']} (s)", f"{m['eval_s']:.3f}", f"{m['eval_s']:.3f}", ""),
        ("eval / (train + eval) epoch", f"{m['eval_fraction']:.1%}", f"{m['eval_fraction_reg']:.1%}",
         f"<= {EVAL_TARGET:.0%} {ok(m['eval_fraction'] <= EVAL_TARGET)}"),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        (
            f"benchmarks.step: {args.model} on {args.dataset} ({m['n_train']} train / {m['n_test']} test), "
            f"batch {args.batch_size}, {m['device']}, {m['threads']} threads, torch {torch.__version__}"
        ),
        f"median of {args.rounds} alternating rounds of {args.steps} steps each (after 1 warm-up round)",
        "",
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=MODEL_NAMES)
    p.add_argument("--dataset", default="digits", choices=[*DATASET_NAMES, SYNTHETIC])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="training steps per mode per round")
    p.add_argument("--rounds", type=int, default=7, help="measured rounds (plus one warm-up)")
    p.add_argument("--alpha", type=float, default=-10.0, help="the regularized mode's alpha (not 0)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--n-train", type=int, default=50_000, help=f"{SYNTHETIC}: training images")
    p.add_argument("--n-test", type=int, default=None, help=f"{SYNTHETIC}: test images (default n_train / 5)")
    p.add_argument("--eval-batch", type=int, default=None, help="evaluation batch (default: as trainer.run)")
    p.add_argument("--data-root", default=None, help="real data sets: the data root (default as trainer.run)")
    args = p.parse_args(argv)
    if args.alpha == 0:
        p.error("--alpha must not be 0: it is the regularized mode compared with alpha = 0")
    if args.steps < 1 or args.rounds < 1 or args.batch_size < 2:
        p.error("--steps and --rounds must be >= 1, --batch-size >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainer.errors import UserError

    try:
        start = time.perf_counter()
        m = measure(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(args, m))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
