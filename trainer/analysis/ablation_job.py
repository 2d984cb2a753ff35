"""Ablation job of one finished trial: `python -m trainer.analysis.ablation_job --trial results/<sweep>/trials/<id>`.

Runs trainer.analysis.ablation over every kept checkpoint (`<trial>/checkpoints/epoch_NNN.pt`) and writes
`<trial>/ablations.parquet` after each epoch (atomically), so a killed job resumes at the first
epoch not yet in the file. Exit codes as trainer.run: 0 done, 2 user mistake, 75 busy.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer import results as R
from trainer.analysis.ablation import AblationPlan, ablation_rows
from trainer.attempt import pick_device
from trainer.checkpoint import KEPT
from trainer.cli import EXIT_DONE, ArgumentParser, command
from trainer.data import Data, eval_batch_size, load_dataset
from trainer.errors import UserError
from trainer.kept import load_kept, missing_kept, missing_warning
from trainer.lock import TrialLock
from trainer.models import build_for
from trainer.spec import MAX_DRAWS, TrialSpec
from trainer.status import read_status

DEFAULT_FRACTIONS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
ABLATION_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()), ("stage", pa.int64()), ("k", pa.int64()), ("fraction", pa.float64()),
        ("selection", pa.string()), ("draw", pa.int64()), ("accuracy", pa.float64()), ("loss", pa.float64()),
        ("top5", pa.float64()),  # null under 100 classes
    ]
)  # fmt: skip


def kept_epochs(folder: Path) -> list[int]:
    """Epochs whose checkpoints the trial kept, ascending."""
    found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in (folder / KEPT).glob("epoch_*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def finished_trial(folder: Path, require_done: bool, analysis: str) -> tuple[TrialSpec, list[int]]:
    """The spec and kept epochs of a trial an after-training job (`analysis`: "ablate", "analyse")
    works on; one line if it is not done (unless `require_done` is off) or kept no checkpoint."""
    spec = TrialSpec.from_dict(R.read_json(folder / R.SPEC), where=str(folder / R.SPEC))
    if require_done and read_status(folder).state != "done":
        raise UserError(f"{folder}: the trial is not done; {analysis} finished trials only")
    epochs = kept_epochs(folder)
    if not epochs:
        raise UserError(f"{folder}: no kept checkpoints under {KEPT}/ (see the trial field keep_checkpoints)")
    if require_done and (missing := missing_kept(folder, spec)):
        print(missing_warning(folder, missing), file=sys.stderr, flush=True)
    return spec, epochs


def unit_csi(folder: Path, epochs: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Test-set CSI per unit of every layer at the end of each of `epochs`: epoch -> layer -> [U].

    One read of units.parquet (it holds every evaluation of the trial) for all the epochs.
    """
    table = pq.read_table(folder / R.UNITS, columns=["epoch", "epoch_end", "layer", "unit", "csi"])
    table = table.filter(pc.and_(pc.is_in(table["epoch"], pa.array(epochs, pa.int64())), table["epoch_end"]))
    df = table.to_pandas().sort_values(["epoch", "layer", "unit"])
    return {
        int(epoch): {layer: g["csi"].to_numpy(dtype=np.float64) for layer, g in per_epoch.groupby("layer")}
        for epoch, per_epoch in df.groupby("epoch")
    }


def ablate_trial(
    folder: Path, plan: AblationPlan, device_name: str | None = None, require_done: bool = True, data: Data | None = None
) -> int:
    """Ablate every kept checkpoint of a trial not yet in ablations.parquet; returns epochs added.

    `require_done=False`: called at the end of training, in the same attempt, with the training's
    `data` (so a streamed validation set decoded once serves every pass of the job).
    """
    spec, epochs = finished_trial(folder, require_done, "ablate")
    device = pick_device(device_name or spec.device)
    if data is None:
        data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    model = build_for(spec.model, spec.dataset).to(device)
    path = folder / R.ABLATIONS
    schema = R.trial_schema(spec)
    tables = [pq.read_table(path)] if path.exists() else []
    done = set(tables[0]["epoch"].to_pylist()) if tables else set()
    batch = eval_batch_size(data, spec.batch_size, device)
    added = 0
    todo = [e for e in epochs if e not in done]
    csi = unit_csi(folder, todo) if todo else {}
    base = epoch_evaluations(folder, todo) if todo else {}
    for epoch in todo:
        state = load_kept(folder, epoch, device)
        model.load_state_dict(state["model"])
        rows = ablation_rows(model, data, csi[epoch], epoch, spec.seed, plan, base[epoch], batch, device)
        tables.append(R.make_table(ABLATION_COLUMNS, rows, spec.row_fields(), schema))
        R.write_parquet(R.concat(tables, promote=True), path)
        added += 1
    return added


def epoch_evaluations(folder: Path, epochs: list[int]) -> dict[int, tuple[float, float, float | None]]:
    """Each epoch's own test evaluation (accuracy, loss, top-5) from epochs.parquet: the rows of k = 0."""
    table = pq.read_table(folder / R.EPOCHS, columns=["epoch", "epoch_end", "test_acc", "test_loss", "test_top5"])
    rows = table.filter(table["epoch_end"]).to_pylist()
    return {int(r["epoch"]): (r["test_acc"], r["test_loss"], r["test_top5"]) for r in rows if r["epoch"] in epochs}


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """--fractions / --counts / --count-steps / --draws (trainer.analysis.ablation_job and orchestrator.analysis.ablate)."""
    p.add_argument(
        "--fractions", type=float, nargs="+", default=None, help=f"fractions of each stage's width (default {DEFAULT_FRACTIONS})"
    )
    p.add_argument("--counts", type=int, nargs="+", default=(), help="absolute channel counts k (those above a stage's width are left out)")
    p.add_argument("--count-steps", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="Ranadive et al.'s k: range(0, C/2, A) and range(C/2, C+1, B) per stage of C channels")  # fmt: skip
    p.add_argument("--draws", type=int, default=3, help="random draws per (epoch, stage, k)")
    p.add_argument("--random-masks", choices=("fixed", "per_batch", "both"), default="fixed",
                   help="random ablation: one fixed mask per draw, a new mask every batch (Ranadive et al.), or both")  # fmt: skip


def plan_from_arguments(args: argparse.Namespace) -> AblationPlan:
    """The plan the arguments ask for; one line for values outside their range."""
    fractions = tuple(args.fractions) if args.fractions is not None else (() if args.counts or args.count_steps else DEFAULT_FRACTIONS)
    for f in fractions:
        if not 0 <= f <= 1:  # NaN too
            raise UserError(f"--fractions has {f}; allowed: fractions of a stage's width in [0, 1]")
    for k in args.counts:
        if k < 0:
            raise UserError(f"--counts has {k}; allowed: channel counts >= 0")
    if not 1 <= args.draws <= MAX_DRAWS:
        raise UserError(f"--draws is {args.draws}; allowed: 1 to {MAX_DRAWS}")
    if args.count_steps is not None and min(args.count_steps) < 1:
        raise UserError(f"--count-steps is {' '.join(map(str, args.count_steps))}; allowed: A B, both >= 1")
    steps = tuple(args.count_steps) if args.count_steps is not None else None
    return AblationPlan(fractions, tuple(args.counts), steps, args.draws, random_masks=args.random_masks)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.ablation_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--trial", required=True, type=Path, help="a finished trial's folder")
    add_plan_arguments(p)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    def body() -> int:
        plan = plan_from_arguments(args)
        if not (args.trial / R.SPEC).is_file():
            raise UserError(f"{args.trial}: not a trial folder (no spec.json)")
        with TrialLock(args.trial):
            added = ablate_trial(args.trial, plan, args.device)
        print(f"{args.trial.name}: ablated {added} more epochs -> {args.trial / R.ABLATIONS}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
