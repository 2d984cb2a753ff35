"""Ablation job of one finished trial: `python -m trainer.analysis.ablation_job --trial results/<sweep>/trials/<id>`.

Runs trainer.analysis.ablation over every kept checkpoint (`<trial>/checkpoints/epoch_NNN.pt`) and writes
`<trial>/ablations.parquet` after each epoch (atomically), so a killed job resumes at the first
epoch not yet in the file. The file records the plan its rows were measured with
(trainer.analysis.plan_record): a rerun under another plan is one line, unless `--replace`.
Without plan flags a trial is ablated with its own plan (its ablation_* fields, else the defaults);
each flag given replaces that part of it. Exit codes as trainer.run: 0 done, 2 user mistake, 75 busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer import results as R
from trainer.analysis.ablation import AblationPlan, ablation_rows
from trainer.analysis.ablation_plan import ablation_plan_of
from trainer.analysis.plan_record import damaged, measured_anew, plan_text, with_plan
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
    folder: Path,
    plan: AblationPlan,
    device_name: str | None = None,
    require_done: bool = True,
    data: Data | None = None,
    replace: bool = False,
) -> int:
    """Ablate every kept checkpoint of a trial not yet in ablations.parquet; returns epochs added.

    `require_done=False`: called at the end of training, in the same attempt, with the training's
    `data` (so a streamed validation set decoded once serves every pass of the job). Rows of
    another plan are a PlanMismatch line, or with `replace` measured anew.
    """
    spec, epochs = finished_trial(folder, require_done, "ablate")
    path = folder / R.ABLATIONS
    tables, text = _standing(path, plan, replace)
    todo = _not_ablated(epochs, tables)
    if not todo:
        return 0
    device = pick_device(device_name or spec.device)
    if data is None:
        data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    model = build_for(spec.model, spec.dataset).to(device)
    schema = R.trial_schema(spec)
    batch = eval_batch_size(data, spec.batch_size, device)
    csi = unit_csi(folder, todo)
    base = epoch_evaluations(folder, todo)
    for epoch in todo:
        state = load_kept(folder, epoch, device)
        model.load_state_dict(state["model"])
        rows = ablation_rows(model, data, csi[epoch], epoch, spec.seed, plan, base[epoch], batch, device)
        tables.append(R.make_table(ABLATION_COLUMNS, rows, spec.row_fields(), schema))
        R.write_parquet(with_plan(R.concat(tables, promote=True), text), path)
    return len(todo)


def epochs_to_ablate(folder: Path, plan: AblationPlan, replace: bool) -> int:
    """How many kept epochs `ablate_trial` would ablate, without torch or the data (what
    orchestrator.ablate asks before starting a worker); PlanMismatch as ablate_trial."""
    return len(_not_ablated(kept_epochs(folder), _standing(folder / R.ABLATIONS, plan, replace)[0]))


def _standing(path: Path, plan: AblationPlan, replace: bool) -> tuple[list[pa.Table], bytes]:
    """The ablations at `path` that stand under `plan` (none without a file, or where `replace`
    drops rows of other settings; PlanMismatch where they are of others), and the plan's record."""
    text = plan_text(dataclasses.asdict(plan))
    if not path.exists() or measured_anew([path], text, replace):
        return [], text
    try:
        return [pq.read_table(path)], text
    except (OSError, pa.ArrowException) as err:
        raise damaged(path, err) from None


def _not_ablated(epochs: list[int], tables: list[pa.Table]) -> list[int]:
    done = set(tables[0]["epoch"].to_pylist()) if tables else set()
    return [e for e in epochs if e not in done]


def epoch_evaluations(folder: Path, epochs: list[int]) -> dict[int, tuple[float, float, float | None]]:
    """Each epoch's own test evaluation (accuracy, loss, top-5) from epochs.parquet: the rows of k = 0."""
    table = pq.read_table(folder / R.EPOCHS, columns=["epoch", "epoch_end", "test_acc", "test_loss", "test_top5"])
    rows = table.filter(table["epoch_end"]).to_pylist()
    return {int(r["epoch"]): (r["test_acc"], r["test_loss"], r["test_top5"]) for r in rows if r["epoch"] in epochs}


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """--fractions / --counts / --count-steps / --draws / --random-masks / --replace
    (trainer.analysis.ablation_job and orchestrator.analysis.ablate). A flag not given keeps the
    trial's own plan (its ablation_* fields, else DEFAULT_FRACTIONS, 3 draws, fixed masks)."""
    p.add_argument(
        "--fractions", type=float, nargs="+", default=None, help=f"fractions of each stage's width (default {DEFAULT_FRACTIONS})"
    )
    p.add_argument("--counts", type=int, nargs="+", default=None, help="absolute channel counts k (above a stage's width: left out)")
    p.add_argument("--count-steps", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="Ranadive et al.'s k: range(0, C/2, A) and range(C/2, C+1, B) per stage of C channels")  # fmt: skip
    p.add_argument("--draws", type=int, default=None, help="random draws per (epoch, stage, k) (default 3)")
    p.add_argument("--random-masks", choices=("fixed", "per_batch", "both"), default=None,
                   help="random ablation: one fixed mask per draw, a new mask every batch (Ranadive et al.), or both")  # fmt: skip
    p.add_argument("--replace", action="store_true", help="ablations measured with another plan: measure them anew")


def plan_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The parts of the plan the flags give (checked); one line for values outside their range.
    Any of --fractions / --counts / --count-steps gives which k, together (the others none)."""
    out: dict[str, Any] = {}
    if args.fractions is not None or args.counts is not None or args.count_steps is not None:
        for f in args.fractions or ():
            if not 0 <= f <= 1:  # NaN too
                raise UserError(f"--fractions has {f}; allowed: fractions of a stage's width in [0, 1]")
        for k in args.counts or ():
            if k < 0:
                raise UserError(f"--counts has {k}; allowed: channel counts >= 0")
        if args.count_steps is not None and min(args.count_steps) < 1:
            raise UserError(f"--count-steps is {' '.join(map(str, args.count_steps))}; allowed: A B, both >= 1")
        out["fractions"] = tuple(args.fractions or ())
        out["counts"] = tuple(args.counts or ())
        out["count_steps"] = tuple(args.count_steps) if args.count_steps is not None else None
    if args.draws is not None:
        if not 1 <= args.draws <= MAX_DRAWS:
            raise UserError(f"--draws is {args.draws}; allowed: 1 to {MAX_DRAWS}")
        out["draws"] = args.draws
    if args.random_masks is not None:
        out["random_masks"] = args.random_masks
    return out


def plan_for(spec: TrialSpec, overrides: dict[str, Any]) -> AblationPlan:
    """The plan a trial is ablated with: its own (its ablation_* fields when it ablates, else the
    defaults), with the parts the flags give replaced."""
    own = ablation_plan_of(spec) if spec.ablates() else AblationPlan(DEFAULT_FRACTIONS)
    return dataclasses.replace(own, **overrides)


def plan_arguments(overrides: dict[str, Any]) -> list[str]:
    """The command-line form of `overrides` (what orchestrator.analysis.ablate passes to each trial's job)."""
    out: list[str] = []
    if "fractions" in overrides:
        out += ["--fractions", *map(repr, overrides["fractions"])] if overrides["fractions"] else []
        out += ["--counts", *map(str, overrides["counts"])] if overrides["counts"] else []
        out += ["--count-steps", *map(str, overrides["count_steps"])] if overrides["count_steps"] else []
    out += ["--draws", str(overrides["draws"])] if "draws" in overrides else []
    return out + (["--random-masks", overrides["random_masks"]] if "random_masks" in overrides else [])


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.ablation_job", description=__doc__.split("\n\n")[0])
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
            added = ablate_trial(args.trial, plan_for(spec, overrides), args.device, replace=args.replace)
        print(f"{args.trial.name}: ablated {added} more epochs -> {args.trial / R.ABLATIONS}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
