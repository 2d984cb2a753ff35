"""Robustness job of one finished trial: `python -m trainer.analysis.robustness_job --trial results/<sweep>/trials/<id>`.

    --all-kept                 every kept checkpoint, not only the final network
    --images N                 test images attacked and analysed (a seeded subset, the same for every trial; default 1000)
    --epsilons 0 0.0039 ...    L-inf radii in pixel units ([0, 1] images; default 0, 1, 2, 4, 8, 16, 32 / 255)
    --pgd-steps 10             PGD iterations; step size 2.5 eps / steps (Madry et al.)
    --source auto              corrupted images: official (CIFAR-10-C / Tiny-ImageNet-C under the data
                               root), generated (trainer.analysis.corruptions), auto (official when present)
    --gradient-images 100 --gradient-units 32    the input-unit gradient's cost caps per layer
    --corruptions NAME ...     a subset of the 15 (default: all)
    --device D

Leavitt & Morcos (arXiv 2010.07693) on the sweeps this project trains (docs/analysis.md). For the
final network (or each kept checkpoint), in evaluation mode:
- accuracy under the 15 corruptions x 5 severities of Hendrycks & Dietterich, on the whole test set;
- accuracy under FGSM and PGD at each epsilon, on `--images` test images;
- the dimensionality (PCA: components for 95% of the variance, participation ratio) of each
  layer's change (perturbed minus clean units) for every corruption, severity, attack and epsilon,
  and of the clean representation, on the same images;
- the input-unit gradient's mean and its variability across samples and across units, per layer.

Files in the trial folder, each grown one piece of work at a time (one corruption at its five
severities, one attack at every epsilon, the gradients) and rewritten atomically, so a killed job
resumes at the first piece not in robustness.parquet (a piece's dimensionality rows are written
first and replaced when the piece is redone):
    robustness.parquet              epoch, kind (clean | corruption | fgsm | pgd), name, severity,
                                    epsilon, source, n_images, accuracy, accuracy_single
    robust_dimensionality.parquet   epoch, kind, name, severity, epsilon, layer, n_units, n_images,
                                    pcs_95, participation_ratio
    robust_gradients.parquet        epoch, layer, n_units, n_images, grad_mean, cv_samples, cv_units
For attacks `accuracy` is the worst case over the epsilons up to this one (the ball of a larger
epsilon holds the smaller ones, so an image broken at 2/255 is broken at 4/255: non-increasing by
construction); `accuracy_single` is the attack run at this epsilon alone. Also run at the end of
every trial with `robust: true`.

Each file records the settings its rows were measured with (images, epsilons, PGD steps, the
source actually used, the gradient caps; trainer.analysis.plan_record): a rerun under other
settings is one line, unless `--replace` measures the trial anew. Corruptions and `--all-kept` say
which pieces to measure, so a rerun with more of them adds pieces. Without a flag, a setting is
the trial's own (the defaults, on `robust_images` images). Exit codes as trainer.run: 0 done, 2
user mistake, 75 busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from trainer import results as R
from trainer.analysis.attacks import (
    InputSpace,
    change_dimensionality,
    fgsm,
    gradient_variability,
    input_unit_gradients,
    pgd,
    predict,
    unit_subset,
)
from trainer.analysis.corruption_sets import official_set, read_official
from trainer.analysis.corruptions import CORRUPTIONS, SEVERITIES, corrupt, generator_for
from trainer.analysis.plan_record import damaged, measured_anew, plan_text, with_plan
from trainer.analysis.similarity_job import append_rows, image_subset, kept_checkpoint_epochs, read_done
from trainer.attempt import pick_device
from trainer.checkpoint import KEPT
from trainer.cli import EXIT_DONE, ArgumentParser, command
from trainer.data import Data, eval_batch_size, load_dataset
from trainer.errors import UserError
from trainer.lock import TrialLock
from trainer.models import TrackedNet, build_for
from trainer.spec import TrialSpec
from trainer.status import read_status

ROBUSTNESS, ROBUST_DIMENSIONALITY, ROBUST_GRADIENTS = R.ROBUSTNESS, R.ROBUST_DIMENSIONALITY, R.ROBUST_GRADIENTS  # the collector reads them
KINDS = ("clean", "corruption", "fgsm", "pgd")
DEFAULT_EPSILONS = tuple(k / 255 for k in (0, 1, 2, 4, 8, 16, 32))
DEFAULT_IMAGES = 1000
SOURCES = ("auto", "official", "generated")

ROBUSTNESS_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()), ("kind", pa.string()), ("name", pa.string()), ("severity", pa.int64()), ("epsilon", pa.float64()),
        ("source", pa.string()), ("n_images", pa.int64()), ("accuracy", pa.float64()), ("accuracy_single", pa.float64()),
    ]
)  # fmt: skip
DIMENSIONALITY_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()), ("kind", pa.string()), ("name", pa.string()), ("severity", pa.int64()), ("epsilon", pa.float64()),
        ("layer", pa.string()), ("n_units", pa.int64()), ("n_images", pa.int64()), ("pcs_95", pa.int64()),
        ("participation_ratio", pa.float64()),
    ]
)  # fmt: skip
GRADIENT_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()), ("layer", pa.string()), ("n_units", pa.int64()), ("n_images", pa.int64()),
        ("grad_mean", pa.float64()), ("cv_samples", pa.float64()), ("cv_units", pa.float64()),
    ]
)  # fmt: skip


@dataclass(frozen=True)
class RobustPlan:
    """What the job measures; the defaults are docs/analysis.md's choices."""

    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    pgd_steps: int = 10
    images: int = DEFAULT_IMAGES
    source: str = "auto"
    gradient_images: int = 100
    gradient_units: int = 32
    all_kept: bool = False
    corruptions: tuple[str, ...] = CORRUPTIONS


def _rows(columns: pa.Schema, records: list[tuple]) -> dict[str, list]:
    return {name: [r[i] for r in records] for i, name in enumerate(columns.names)}


class Context:
    """One trial's network, data and fixed images while the job runs."""

    def __init__(self, spec: TrialSpec, data: Data, model: TrackedNet, device: torch.device, plan: RobustPlan) -> None:
        self.spec, self.data, self.model, self.device, self.plan = spec, data, model, device, plan
        info = data.info
        self.space = InputSpace(info.mean, info.std, device)
        self.batch = eval_batch_size(data, spec.batch_size, device)
        self.subset = image_subset(data.n_test, min(plan.images, data.n_test))
        pixels, labels = [], []
        for x, y in data.test_batches(self.batch, torch.from_numpy(self.subset)):
            pixels.append(self.space.to_pixels(x.float()))
            labels.append(y)
        self.pixels, self.labels = torch.cat(pixels), torch.cat(labels)
        self.clean_units = self.units(self.pixels)

    @torch.no_grad()
    def units(self, pixels: torch.Tensor) -> list[np.ndarray]:
        """Every tracked layer's units [N, U] (float64) for these images."""
        parts: list[list[np.ndarray]] = [[] for _ in self.model.block_names]
        for i in range(0, len(pixels), self.batch):
            _, feats = self.model(self.space.to_model(pixels[i : i + self.batch]), capture=True)
            assert feats is not None
            for part, f in zip(parts, feats):
                part.append(f.double().cpu().numpy())
        return [np.concatenate(p) for p in parts]

    def dimension_rows(
        self, epoch: int, kind: str, name: str, severity: int | None, eps: float | None, perturbed: torch.Tensor
    ) -> list[tuple]:
        rows = []
        for layer, clean, moved in zip(self.model.block_names, self.clean_units, self.units(perturbed)):
            pcs, ratio = change_dimensionality(clean, moved)
            rows.append((epoch, kind, name, severity, eps, layer, clean.shape[1], len(clean), pcs, ratio))
        return rows


def _accuracy(ctx: Context, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    right = 0
    for i in range(0, len(pixels), ctx.batch):
        right += int((predict(ctx.model, pixels[i : i + ctx.batch], ctx.space) == labels[i : i + ctx.batch]).sum())
    return right / max(len(labels), 1)


def _generated(ctx: Context, name: str, severity: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole test set under one generated corruption, batch by batch (pixels, labels)."""
    for b, (x, y) in enumerate(ctx.data.test_batches(ctx.batch)):
        yield corrupt(name, ctx.space.to_pixels(x.float()), severity, generator_for(ctx.spec.seed, name, severity, b)), y


def corruption_piece(ctx: Context, epoch: int, name: str, source: str, root: Path) -> tuple[list[tuple], list[tuple]]:
    """Accuracy and change dimensionality of one corruption at its five severities."""
    acc_rows, dim_rows = [], []
    for severity in SEVERITIES:
        if source == "official":
            images, labels, where = read_official(ctx.spec.dataset, root, name, severity)
            x = torch.from_numpy(images).to(ctx.device).float() / 255
            y = torch.from_numpy(labels).to(ctx.device)
            acc, n = _accuracy(ctx, x, y), len(labels)
            position = {int(w): i for i, w in enumerate(where) if w >= 0}
            if all(int(i) in position for i in ctx.subset):
                picked = x[torch.tensor([position[int(i)] for i in ctx.subset], device=ctx.device)]
                dim_rows += ctx.dimension_rows(epoch, "corruption", name, severity, None, picked)
        else:
            right = n = 0
            for xc, y in _generated(ctx, name, severity):
                right += int((predict(ctx.model, xc, ctx.space) == y).sum())
                n += len(y)
            acc = right / n
            # The analysed subset, corrupted with the same draws as in the full pass: regenerate it on its own
            # seeded stream (cheap: a subset), so the dimensionality never depends on the batch size.
            picked = corrupt(name, ctx.pixels, severity, generator_for(ctx.spec.seed, name, severity, 1_000_000))
            dim_rows += ctx.dimension_rows(epoch, "corruption", name, severity, None, picked)
        acc_rows.append((epoch, "corruption", name, severity, None, source, n, acc, acc))
    return acc_rows, dim_rows


def attack_piece(ctx: Context, epoch: int, attack: str) -> tuple[list[tuple], list[tuple]]:
    """Accuracy (worst case up to each epsilon, and at it alone) and change dimensionality of one attack."""
    plan = ctx.plan
    broken_so_far = torch.zeros(len(ctx.labels), dtype=torch.bool, device=ctx.device)
    acc_rows, dim_rows = [], []
    g = torch.Generator().manual_seed(ctx.spec.seed * 1_000_003 + 7)
    for eps in sorted(plan.epsilons):
        adv_parts, broken_parts = [], []
        for i in range(0, len(ctx.labels), ctx.batch):
            x, y = ctx.pixels[i : i + ctx.batch], ctx.labels[i : i + ctx.batch]
            if attack == "fgsm":
                adv = fgsm(ctx.model, x, y, eps, ctx.space)
                broken = predict(ctx.model, adv, ctx.space) != y
            else:
                adv, broken = pgd(ctx.model, x, y, eps, plan.pgd_steps, 2.5 * eps / plan.pgd_steps, ctx.space, g)
            adv_parts.append(adv)
            broken_parts.append(broken)
        adv, broken = torch.cat(adv_parts), torch.cat(broken_parts)
        broken_so_far |= broken
        n = len(ctx.labels)
        worst, single = 1 - float(broken_so_far.float().mean()), 1 - float(broken.float().mean())
        acc_rows.append((epoch, attack, attack, None, eps, "generated", n, worst, single))
        if eps > 0:
            dim_rows += ctx.dimension_rows(epoch, attack, attack, None, eps, adv)
    return acc_rows, dim_rows


def gradient_rows(ctx: Context, epoch: int) -> list[tuple]:
    n = min(ctx.plan.gradient_images, len(ctx.labels))
    rows = []
    for layer, name in enumerate(ctx.model.block_names):
        chosen = unit_subset(ctx.clean_units[layer].shape[1], ctx.plan.gradient_units)
        g = np.concatenate([input_unit_gradients(ctx.model, ctx.pixels[i : min(i + ctx.batch, n)], ctx.space, layer, chosen)
                            for i in range(0, n, ctx.batch)])  # fmt: skip
        rows.append((epoch, name, len(chosen), n, *gradient_variability(g)))
    return rows


def robust_epochs(folder: Path, spec: TrialSpec, all_kept: bool) -> dict[int, Path]:
    """epoch -> checkpoint file: the final network (kept, else the rolling checkpoint), or every kept one."""
    kept = {e: folder / KEPT / f"epoch_{e:03d}.pt" for e in kept_checkpoint_epochs(folder)}
    if all_kept:
        if not kept:
            raise UserError(f"{folder}: --all-kept, but no kept checkpoints under {KEPT}/ (see the trial field keep_checkpoints)")
        return kept
    final = kept.get(spec.epochs, folder / R.CHECKPOINT)
    if not final.exists():
        raise UserError(f"{folder}: no final checkpoint ({R.CHECKPOINT} or {KEPT}/epoch_{spec.epochs:03d}.pt); was the trial trained here?")
    return {spec.epochs: final}


Piece = tuple[str, str]  # (kind, name): ("clean", "clean"), ("corruption", "fog"), ("fgsm", "fgsm"), ...


@dataclass
class Todo:
    """What a trial still lacks under a plan, and the files' rows that stand."""

    checkpoints: dict[int, Path]
    work: dict[int, list[Piece]]  # epoch -> pieces not yet measured
    source: str  # the corrupted images actually used: official or generated
    settings: bytes  # plan_record.plan_text of what the rows are measured with
    anew: bool  # the files' rows (if any) are of other settings and are replaced
    acc_tables: list[pa.Table]
    grad_tables: list[pa.Table]


def to_measure(folder: Path, spec: TrialSpec, plan: RobustPlan, replace: bool) -> Todo:
    """The pieces of `plan` not yet in the trial's files (all of them where the files hold other
    settings and `replace`; PlanMismatch without it). Reads no checkpoint and imports no data."""
    checkpoints = robust_epochs(folder, spec, plan.all_kept)
    root = Path(spec.resolved_data_root()).expanduser()
    official = official_set(spec.dataset, root) is not None
    source = plan.source if plan.source != "auto" else ("official" if official else "generated")
    if source == "official" and not official:
        raise UserError(f"--source official: no published corrupted copy of '{spec.dataset}' under {root} (CIFAR-10-C/, Tiny-ImageNet-C/)")
    # Corruptions and all_kept choose the pieces; the rest is how each piece is measured.
    settings = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("corruptions", "all_kept")}
    text = plan_text({**settings, "source": source})
    paths = [folder / ROBUSTNESS, folder / ROBUST_DIMENSIONALITY, folder / ROBUST_GRADIENTS]
    anew = measured_anew(paths, text, replace)
    acc_tables, done = _read_done(paths[0], ["epoch", "kind", "name"]) if not anew else ([], set())
    grad_tables, grads_done = _read_done(paths[2], ["epoch"]) if not anew else ([], set())
    pieces: list[Piece] = [
        ("clean", "clean"),
        *(("corruption", c) for c in plan.corruptions),
        ("fgsm", "fgsm"),
        ("pgd", "pgd"),
        ("gradients", "gradients"),
    ]

    def pending(epoch: int, piece: Piece) -> bool:
        return (epoch,) not in grads_done if piece[0] == "gradients" else (epoch, *piece) not in done

    work = {e: [p for p in pieces if pending(e, p)] for e in checkpoints}
    return Todo(checkpoints, {e: p for e, p in work.items() if p}, source, text, anew, acc_tables, grad_tables)


def robust_trial(
    folder: Path,
    plan: RobustPlan,
    device_name: str | None = None,
    require_done: bool = True,
    data: Data | None = None,
    replace: bool = False,
) -> int:
    """Measure every piece not yet in robustness.parquet; returns the pieces added."""
    spec = TrialSpec.from_dict(R.read_json(folder / R.SPEC), where=str(folder / R.SPEC))
    if require_done and read_status(folder).state != "done":
        raise UserError(f"{folder}: the trial is not done; the robustness job takes finished trials only")
    todo = to_measure(folder, spec, plan, replace)
    if not todo.work:
        return 0
    source, root = todo.source, Path(spec.resolved_data_root()).expanduser()
    acc_path, dim_path, grad_path = folder / ROBUSTNESS, folder / ROBUST_DIMENSIONALITY, folder / ROBUST_GRADIENTS
    acc_tables, grad_tables = todo.acc_tables, todo.grad_tables
    device = pick_device(device_name or spec.device)
    if data is None:
        data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    model = build_for(spec.model, spec.dataset).to(device).eval()
    model.requires_grad_(False)  # only input gradients are needed
    dim_tables = [] if todo.anew else _read_done(dim_path, ["epoch"])[0]

    def append(path: Path, tables: list[pa.Table], columns: pa.Schema, rows: list[tuple]) -> None:
        append_rows(path, tables, columns, _rows(columns, rows), spec, lambda t: with_plan(t, todo.settings))

    added = 0
    for epoch, work in todo.work.items():
        model.load_state_dict(_load_checkpoint(todo.checkpoints[epoch], device))
        ctx = Context(spec, data, model, device, plan)
        for kind, name in work:
            if kind == "gradients":
                append(grad_path, grad_tables, GRADIENT_COLUMNS, gradient_rows(ctx, epoch))
                added += 1
                continue
            if kind == "clean":
                acc = _accuracy(ctx, ctx.pixels, ctx.labels)
                acc_rows = [(epoch, "clean", "clean", 0, 0.0, "clean", len(ctx.labels), acc, acc)]
                dim_rows = [(epoch, "clean", "clean", 0, 0.0, layer, u.shape[1], len(u), *change_dimensionality(np.zeros_like(u), u))
                            for layer, u in zip(model.block_names, ctx.clean_units)]  # fmt: skip
            elif kind == "corruption":
                acc_rows, dim_rows = corruption_piece(ctx, epoch, name, source, root)
            else:
                acc_rows, dim_rows = attack_piece(ctx, epoch, kind)
            # Dimensionality first (replacing rows of an earlier, killed try), then the accuracy rows that mark the piece done.
            dim_tables = [_without(t, epoch, kind, name) for t in dim_tables]
            append(dim_path, dim_tables, DIMENSIONALITY_COLUMNS, dim_rows)
            append(acc_path, acc_tables, ROBUSTNESS_COLUMNS, acc_rows)
            added += 1
    return added


def _read_done(path: Path, keys: list[str]) -> tuple[list[pa.Table], set[tuple]]:
    """A table of this job written so far and its keys; a damaged one is one line naming it."""
    try:
        return read_done(path, keys)
    except (OSError, pa.ArrowException) as err:
        raise damaged(path, err) from None


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint's model state; a damaged file is one line naming it (the job cannot go on without it)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)["model"]
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err)[:80]})") from None


def _without(table: pa.Table, epoch: int, kind: str, name: str) -> pa.Table:
    same = pc.and_(pc.and_(pc.equal(table["epoch"], epoch), pc.equal(table["kind"], kind)), pc.equal(table["name"], name))
    return table.filter(pc.invert(same))


def robust_plan_of(spec: TrialSpec) -> RobustPlan:
    """The plan of a trial's own job (field robust): the defaults, on robust_images images."""
    return RobustPlan(images=spec.robust_images or DEFAULT_IMAGES)


def robust_if_asked(spec: TrialSpec, folder: Path, data: Data | None = None) -> None:
    """The trial's own robustness job (field robust), in the same attempt as its training."""
    if spec.robust:
        robust_trial(folder, robust_plan_of(spec), spec.device, require_done=False, data=data)


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The plan's options (trainer.analysis.robustness_job and orchestrator.robust); a setting not
    given is the trial's own (robust_plan_of)."""
    p.add_argument("--all-kept", action="store_true", help="every kept checkpoint, not only the final network")
    p.add_argument("--images", type=int, default=None, help=f"test images attacked (default: robust_images, else {DEFAULT_IMAGES})")
    p.add_argument("--epsilons", type=float, nargs="+", default=None, help="L-inf radii, pixel units in [0, 1]")
    p.add_argument("--pgd-steps", type=int, default=None, help="PGD iterations (default 10)")
    p.add_argument("--source", default=None, help=f"corrupted images: one of {', '.join(SOURCES)} (default auto)")
    p.add_argument("--gradient-images", type=int, default=None, help="default 100")
    p.add_argument("--corruptions", nargs="+", default=None, help="which of the 15 (default: all)")
    p.add_argument("--gradient-units", type=int, default=None, help="units per layer whose input gradient is taken (default 32)")
    p.add_argument("--replace", action="store_true", help="a trial measured with other settings: measure it anew")


# Beyond these a job would run for days: images and gradient images are capped by the test set anyway.
FLAG_LIMITS = {"--images": 1_000_000, "--pgd-steps": 1_000, "--gradient-images": 1_000_000, "--gradient-units": 100_000}


def plan_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give (checked; RobustPlan's field names); one line for values outside their range."""
    out: dict[str, Any] = {}
    if args.source is not None:
        if args.source not in SOURCES:
            raise UserError(f"--source is {args.source!r}; allowed: {', '.join(SOURCES)}")
        out["source"] = args.source
    if args.epsilons is not None:
        if any(not 0 <= e <= 1 for e in args.epsilons):
            raise UserError(f"--epsilons {args.epsilons}: each must lie in [0, 1] (pixel units; 8/255 = 0.0314)")
        out["epsilons"] = tuple(sorted(set(args.epsilons)))
    if args.corruptions is not None:
        unknown = sorted(set(args.corruptions) - set(CORRUPTIONS))
        if unknown:
            raise UserError(f"--corruptions: unknown {', '.join(unknown)}; allowed: {', '.join(CORRUPTIONS)}")
        out["corruptions"] = tuple(c for c in CORRUPTIONS if c in args.corruptions)
    for flag, most in FLAG_LIMITS.items():  # every job's work is bounded
        name = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, name)
        if value is not None:
            if not 1 <= value <= most:
                raise UserError(f"{flag} is {value}; allowed: 1 to {most:,}")
            out[name] = value
    if args.all_kept:
        out["all_kept"] = True
    return out


def plan_for(spec: TrialSpec, overrides: dict[str, Any]) -> RobustPlan:
    """The plan a trial is measured with: its own (robust_plan_of), with the settings the flags give."""
    return dataclasses.replace(robust_plan_of(spec), **overrides)


def plan_arguments(overrides: dict[str, Any]) -> list[str]:
    """The command-line form of `overrides` (what orchestrator.robust passes to each trial's job)."""
    out: list[str] = []
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if name == "all_kept":
            out.append(flag)
        elif isinstance(value, tuple):
            out += [flag, *map(repr if name == "epsilons" else str, value)]
        else:
            out += [flag, str(value)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.robustness_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--trial", required=True, type=Path, help="a finished trial's folder")
    add_plan_arguments(p)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    def body() -> int:
        overrides = plan_overrides(args)
        if not (args.trial / R.SPEC).is_file():
            raise UserError(f"{args.trial}: not a trial folder (no spec.json)")
        with TrialLock(args.trial):
            spec = TrialSpec.from_dict(R.read_json(args.trial / R.SPEC), where=str(args.trial / R.SPEC))
            added = robust_trial(args.trial, plan_for(spec, overrides), args.device, replace=args.replace)
        print(f"{args.trial.name}: {added} more pieces -> {args.trial / ROBUSTNESS}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
