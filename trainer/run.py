"""Run one trial into its folder: the single entry point every backend calls.

    python -m trainer.run --spec results/<sweep>/trials/<id>/spec.json

Files (SPEC 4) land beside the spec. Epoch 0 is the initialised network; row `epoch` e >= 1 is
the state after e training epochs, and its `alpha_active` and `lr` are those used while training
that epoch (0-based training epoch e - 1), so `onset_epoch: 5` regularizes rows 6 onwards.

Resume: after every epoch the rows are written first, then the checkpoint. A restarted trial
loads the checkpoint (weights_only=True), keeps only the rows it covers and replays the next
epoch exactly (data order and augmentation are seeded by (seed, epoch)), so a trial killed at
any moment ends with one row per epoch and, on CPU, the numbers of an uninterrupted run.

Exit codes of the command: 0 done, 2 user mistake, 3 trial failed (recorded in status.json),
75 another live process is running this trial.
"""
from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from trainer import faults
from trainer import results as R
from trainer.ablate import ablate_trial
from trainer.attempt import FUSED, attempt, read_status, write_status
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.cli import EXIT_DONE, EXIT_FAILED, command
from trainer.data import Data, data_info, eval_batch_size, load_dataset
from trainer.errors import UserError
from trainer.loop import EvalStats, NonFiniteLoss, TrainStats, combine, evaluate, lr_at, optimizer_for, train_epoch
from trainer.models import build_model
from trainer.spec import TrialSpec

# ---- result rows --------------------------------------------------------------------------------
class ResultLog:
    """The rows of a trial's three files, kept in memory and rewritten whole after each epoch."""

    def __init__(self, folder: Path, spec: TrialSpec, layer_names: list[str]) -> None:
        self.folder, self.layer_names = folder, layer_names
        self.fields, self.schema = spec.row_fields(), R.trial_schema(spec)
        self.tables: dict[str, list[pa.Table]] = {name: [] for name in R.COLUMNS}

    def keep_until(self, epoch: int) -> None:
        """After a resume: keep the rows on disk that the checkpoint covers, drop later ones."""
        for name in R.COLUMNS:
            old = R.read_rows_before(self.folder / name, epoch)
            self.tables[name] = [old] if old is not None else []

    def add(
        self, epoch: int, step: int, lr: float | None, alpha: float | None, train: TrainStats | None, ev: EvalStats,
        epoch_end: bool = True,
    ) -> None:  # fmt: skip
        layer_csi = [layer.csi.double().cpu().numpy() for layer in ev.layers]
        csi_mean = float(np.mean([c.mean() for c in layer_csi]))  # layers weigh equally (SPEC 1.3)
        t = train
        epoch_row = {
            "epoch": [epoch], "step": [step], "epoch_end": [epoch_end], "alpha_active": [alpha], "lr": [lr],
            "train_loss": [t and t.loss], "train_ce": [t and t.ce], "train_selectivity": [t and t.selectivity],
            "train_acc": [t and t.acc], "test_loss": [ev.loss], "test_acc": [ev.acc], "test_top5": [ev.top5],
            "csi_mean": [csi_mean], "seconds": [t and t.seconds], "eval_seconds": [ev.seconds],
            "images_per_s": [t.images / t.seconds if t and t.seconds > 0 else None],
        }  # fmt: skip
        n = len(layer_csi)
        layer_rows = {
            "epoch": [epoch] * n, "step": [step] * n, "epoch_end": [epoch_end] * n, "layer": self.layer_names,
            "n_units": [len(c) for c in layer_csi], "csi_mean": [float(c.mean()) for c in layer_csi],
            "csi_median": [float(np.median(c)) for c in layer_csi], "csi_std": [float(c.std()) for c in layer_csi],
        }  # fmt: skip
        sizes = [len(c) for c in layer_csi]
        cat = lambda xs: np.concatenate([x.float().cpu().numpy() for x in xs])  # noqa: E731
        total = sum(sizes)
        unit_rows = {
            "epoch": np.full(total, epoch), "step": np.full(total, step), "epoch_end": np.full(total, epoch_end),
            "layer": np.repeat(self.layer_names, sizes), "unit": np.concatenate([np.arange(s) for s in sizes]),
            "csi": cat([u.csi for u in ev.layers]), "top_class": cat([u.top_class for u in ev.layers]).astype(np.int32),
            "mu_max": cat([u.mu_max for u in ev.layers]), "mu_rest": cat([u.mu_rest for u in ev.layers]),
        }  # fmt: skip
        for name, rows in ((R.EPOCHS, epoch_row), (R.LAYERS, layer_rows), (R.UNITS, unit_rows)):
            self.tables[name].append(R.make_table(name, rows, self.fields, self.schema))

    def write(self) -> None:
        for name, tables in self.tables.items():
            table = R.concat(tables)
            self.tables[name] = [table]
            R.write_parquet(table, self.folder / name)


# ---- the trial ----------------------------------------------------------------------------------
def train_trial(spec: TrialSpec, folder: Path, device: torch.device, status: dict[str, Any]) -> None:
    """Train `spec` into `folder`, resuming from its checkpoint if there is one.

    `status` (the trial's status.json) gets the last finished epoch after every checkpoint, so
    `orchestrator.status` shows progress without reading Parquet.
    """
    info = data_info(spec.dataset)
    data: Data = load_dataset(spec.dataset, spec.resolved_data_root(), device, spec.num_workers)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, info.num_classes, info.in_channels).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if spec.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    optimizer = optimizer_for(model.parameters(), spec)
    log = ResultLog(folder, spec, model.block_names)
    eval_batch = eval_batch_size(data, spec.batch_size, device)
    steps_per_epoch = data.n_train // spec.batch_size
    kept = spec.kept_epochs()

    ckpt = load_checkpoint(folder, device)
    if ckpt is None:
        log.add(0, 0, None, None, None, evaluate(model, data.test_batches(eval_batch), info.num_classes, device))
        log.write()
        save_checkpoint(folder, model.state_dict(), optimizer.state_dict(), epoch=0, step=0, keep=0 in kept)
        done_epochs = 0
    else:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        done_epochs = int(ckpt["epoch"])
        log.keep_until(done_epochs)
    status["epoch"] = done_epochs
    write_status(folder, status)

    for e in range(done_epochs, spec.epochs):  # e: 0-based training epoch; its row is epoch e + 1
        alpha, lr = spec.alpha_at(e), lr_at(spec, e)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = iter(data.train_batches(e, spec.seed, spec.batch_size, spec.augment))
        # The epoch in segments, with a mid-epoch evaluation after each but the last (early dynamics).
        cuts = spec.eval_steps_in(e, steps_per_epoch)
        segments = []
        for start, stop in zip([0, *cuts], [*cuts, steps_per_epoch]):
            try:
                segments.append(train_epoch(model, optimizer, islice(batches, stop - start), alpha, info.num_classes, device))
            except NonFiniteLoss as err:
                raise NonFiniteLoss(f"{err} in epoch {e + 1} (alpha {alpha})") from None
            if stop < steps_per_epoch:
                ev = evaluate(model, data.test_batches(eval_batch), info.num_classes, device)
                log.add(e + 1, e * steps_per_epoch + stop, lr, alpha, combine(segments), ev, epoch_end=False)
        train = combine(segments)
        ev = evaluate(model, data.test_batches(eval_batch), info.num_classes, device)
        step = (e + 1) * steps_per_epoch
        log.add(e + 1, step, lr, alpha, train, ev)
        log.write()  # rows first, then the checkpoint: a resume drops rows the checkpoint lacks
        faults.point("rows-written")
        save_checkpoint(folder, model.state_dict(), optimizer.state_dict(), epoch=e + 1, step=step, keep=e + 1 in kept)
        status["epoch"] = e + 1
        write_status(folder, status)


def run_trial(spec: TrialSpec, folder: str | Path) -> str:
    """Run (or resume, or skip if done) one trial in `folder`; returns its final state.

    Raises TrialBusy if another live process holds the trial, UserError for user mistakes
    (recorded as failed too). Any other exception is recorded as failed and re-raised.
    """
    with attempt(spec, Path(folder)) as a:
        if a.final is None:
            a.status[FUSED] = False
            train_trial(spec, a.folder, a.device, a.status)
            ablate_if_asked(spec, a.folder)
    assert a.final is not None
    return a.final


def ablate_if_asked(spec: TrialSpec, folder: Path) -> None:
    """The trial's own ablation job (field ablation_fractions), in the same attempt as its training."""
    if spec.ablation_fractions is not None:
        ablate_trial(folder, spec.ablation_fractions, spec.ablation_draws, spec.device, require_done=False)


def read_spec(path: Path) -> TrialSpec:
    """A spec.json given on a command line; a missing or malformed one is a user mistake."""
    if not path.is_file():
        raise UserError(f"{path}: no such spec file")
    try:
        raw = R.read_json(path)
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return TrialSpec.from_dict(raw, where=str(path))


def outcome_line(spec: TrialSpec, folder: Path, state: str) -> str:
    return f"{spec.trial_id}: {state}" + (f" ({read_status(folder).get('error')})" if state == "failed" else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, help="the trial's spec.json; results go beside it")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = read_spec(args.spec)
        state = run_trial(spec, args.spec.parent)
        print(outcome_line(spec, args.spec.parent, state))
        return EXIT_DONE if state == "done" else EXIT_FAILED

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
