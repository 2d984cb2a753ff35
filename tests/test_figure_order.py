"""Collector details a reader meets first: ablation panels in alpha order, and the report's column legend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator.collect import ablations
from orchestrator.collect.report import LEGEND


def test_ablation_panels_are_drawn_in_alpha_order(tmp_path: Path) -> None:
    rows = []
    for alpha, cond in ((3.0, "alpha=3"), (-30.0, "alpha=-30"), (0.0, "alpha=0")):  # the order the trials were read in
        for fraction in (0.0, 1.0):
            for sel in ("topk", "random"):
                rows.append({"condition": cond, "alpha": alpha, "onset_epoch": 0, "stage": 1, "epoch": 0, "selection": sel,
                             "fraction": fraction, "accuracy_mean": 0.9 - 0.5 * fraction})  # fmt: skip
    curves = pd.DataFrame(rows)
    assert list(dict.fromkeys(ablations._in_alpha_order(curves)["condition"])) == ["alpha=-30", "alpha=0", "alpha=3"]
    (png,) = ablations.ablation_figures({"ablation_curves.parquet": curves}, tmp_path)
    assert png.name == "ablation_curves.png" and png.stat().st_size > 1000


def test_report_legend_explains_the_column_names() -> None:
    text = "\n".join(LEGEND)
    assert len(LEGEND) <= 20  # one screen
    for name in ("csi_mean_mean", "fractions", "_ci95_high", "csi_mean.<layer>", "epoch_end", "alpha_active"):
        assert name in text
