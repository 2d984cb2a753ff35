"""The rows of one trial's three result files, kept in memory and rewritten whole after each epoch.

    log = ResultLog(folder, spec, layer_names)
    log.keep_until(step)           # after a resume: the rows the checkpoint covers, no later ones
    log.add(epoch, step, lr, alpha, train_stats, eval_stats, epoch_end=True)
    log.write()                    # epochs/layers/units.parquet, each atomically

Every row carries the trial's fields (`TrialSpec.row_fields`); the columns are trainer.results'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from trainer import results as R
from trainer.metrics import EvalStats, TrainStats
from trainer.spec import TrialSpec


class ResultLog:
    """A trial's rows; a fused group keeps one per member."""

    def __init__(self, folder: Path, spec: TrialSpec, layer_names: list[str]) -> None:
        self.folder, self.layer_names = folder, layer_names
        self.fields, self.schema = spec.row_fields(), R.trial_schema(spec)
        self.tables: dict[str, list[pa.Table]] = {name: [] for name in R.COLUMNS}

    def keep_until(self, step: int) -> None:
        """After a resume: keep the rows on disk that the checkpoint (taken at `step`) covers, drop later ones."""
        for name in R.COLUMNS:
            old = R.read_rows_until(self.folder / name, step)
            self.tables[name] = [old] if old is not None else []

    def add(
        self, epoch: int, step: int, lr: float | None, alpha: float | None, train: TrainStats | None, ev: EvalStats,
        epoch_end: bool = True,
    ) -> None:  # fmt: skip
        layer_csi = [layer.csi.double().cpu().numpy() for layer in ev.layers]
        csi_mean = float(np.mean([c.mean() for c in layer_csi]))  # layers weigh equally
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
        total = sum(sizes)

        def cat(xs: list) -> np.ndarray:
            return np.concatenate([x.float().cpu().numpy() for x in xs])

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
