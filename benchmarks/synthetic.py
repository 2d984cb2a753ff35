"""Synthetic trial folders in the trainer's own layout and schemas: fixtures, not a benchmark.

    write_trial(sweep, spec, units=False)   # <sweep>/trials/<id>/{spec,status}.json, epochs/layers(/units).parquet

A done trial of ResNet20's layer shapes with plausible numbers (selectivity falls as alpha goes
negative, accuracy peaks near alpha = 0), deterministic in (alpha, seed). Used by the collector's
benchmark (`python -m benchmarks.collect`, thousands of trials) and by tests/test_collect.py, which
imports it from here; it depends only on numpy, pyarrow and the trainer's schemas (trainer.results).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from trainer import results as R
from trainer.spec import TrialSpec

LAYERS = [(f"stage{s}.block{b}", width) for s, width in ((1, 16), (2, 32), (3, 64)) for b in (1, 2, 3)]


def _curves(spec: TrialSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic csi_mean and test_acc per epoch: selectivity rises early, then settles by alpha."""
    e = np.arange(spec.epochs + 1, dtype=float)
    s = np.sign(spec.alpha) * np.log10(1 + abs(spec.alpha))  # -2 .. 2
    csi_final = np.clip(0.30 + 0.12 * s + rng.normal(0, 0.01), 0.01, 0.9)
    csi = 0.12 + (csi_final - 0.12) * (1 - np.exp(-e / 10)) + 0.08 * (e / 5) * np.exp(1 - e / 5)
    acc_final = 0.92 - 0.004 * s**2 - 0.02 * max(s, 0) + rng.normal(0, 0.003)
    acc = 0.1 + (acc_final - 0.1) * (1 - np.exp(-e / 8)) + rng.normal(0, 0.003, e.size)
    return csi + rng.normal(0, 0.004, e.size), acc


def _epoch_rows(spec: TrialSpec, csi: np.ndarray, acc: np.ndarray, rng: np.random.Generator) -> dict[str, list]:
    n = spec.epochs + 1

    def train(v: np.ndarray) -> list:  # epoch 0 is the initialised network: no training
        return [None] + list(v[1:])

    loss = 2.3 * np.exp(-np.arange(n) / 20) + 0.05
    return {
        "epoch": list(range(n)), "step": [e * 390 for e in range(n)], "epoch_end": [True] * n,
        "alpha_active": train(np.full(n, spec.alpha)), "lr": train(np.full(n, spec.lr)),
        "train_loss": train(loss), "train_ce": train(loss), "train_selectivity": train(csi * 0.8),
        "train_acc": train(acc + 0.05), "test_loss": list(loss * 1.1), "test_acc": list(acc), "test_top5": [None] * n,
        "csi_mean": list(csi), "seconds": train(rng.uniform(9, 11, n)), "eval_seconds": list(rng.uniform(1, 2, n)),
        "images_per_s": train(rng.uniform(4500, 5500, n)),
    }  # fmt: skip


def _layer_rows(spec: TrialSpec, csi: np.ndarray, rng: np.random.Generator) -> dict[str, list]:
    weights = np.linspace(0.6, 1.4, len(LAYERS))  # deeper layers more selective
    n = spec.epochs + 1
    layer_csi = np.clip(csi[:, None] * weights[None, :] + rng.normal(0, 0.005, (n, len(LAYERS))), 0, 1).ravel()
    return {
        "epoch": list(np.repeat(np.arange(n), len(LAYERS))), "step": list(np.repeat(np.arange(n) * 390, len(LAYERS))),
        "epoch_end": [True] * (n * len(LAYERS)),
        "layer": [name for name, _ in LAYERS] * n, "n_units": [w for _, w in LAYERS] * n,
        "csi_mean": list(layer_csi), "csi_median": list(layer_csi * 0.95), "csi_std": list(layer_csi * 0.3),
    }  # fmt: skip


def _unit_rows(spec: TrialSpec, rng: np.random.Generator) -> dict[str, Any]:
    per_epoch = [(name, u) for name, width in LAYERS for u in range(width)]
    total = (spec.epochs + 1) * len(per_epoch)
    return {
        "epoch": np.repeat(np.arange(spec.epochs + 1), len(per_epoch)), "step": np.repeat(np.arange(spec.epochs + 1) * 390, len(per_epoch)),
        "epoch_end": np.ones(total, dtype=bool),
        "layer": [name for name, _ in per_epoch] * (spec.epochs + 1), "unit": [u for _, u in per_epoch] * (spec.epochs + 1),
        "csi": rng.uniform(0, 0.6, total), "top_class": rng.integers(0, 10, total), "mu_max": rng.uniform(0, 2, total),
        "mu_rest": rng.uniform(0, 1, total),
    }  # fmt: skip


def write_trial(sweep: Path, spec: TrialSpec, units: bool) -> None:
    """One synthetic done trial folder with the trainer's file layout and schemas."""
    folder = sweep / "trials" / spec.trial_id
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((spec.alpha, spec.seed))) % 2**32)
    csi, acc = _curves(spec, rng)
    fields, schema = spec.row_fields(), R.trial_schema(spec)
    files = {R.EPOCHS: _epoch_rows(spec, csi, acc, rng), R.LAYERS: _layer_rows(spec, csi, rng)}
    # units=False: an empty units.parquet (no row, the schema), as small as it gets; a done trial has one
    files[R.UNITS] = _unit_rows(spec, rng) if units else {name: [] for name in R.COLUMNS[R.UNITS].names}
    for name, rows in files.items():
        pq.write_table(R.make_table(name, rows, fields, schema), folder / name)
    (folder / R.SPEC).write_text(json.dumps(spec.to_dict()))
    status = {"state": "done", "attempts": 1, "error": None, "error_kind": None, "trial_id": spec.trial_id,
              "git_sha": "0" * 40, "git_dirty": False, "host": "bench", "device": "synthetic",
              "versions": {"python": sys.version.split()[0]}, "started": "2026-01-01T00:00:00+00:00",
              "ended": "2026-01-01T00:30:00+00:00"}  # fmt: skip
    (folder / R.STATUS).write_text(json.dumps(status))
