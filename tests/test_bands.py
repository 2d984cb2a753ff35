"""The figures' intervals stay in range: 95% bootstrap percentile intervals over seeds (orchestrator.collect.stats)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.collect.stats import summarize


def test_bootstrap_band_stays_between_the_seeds_where_t_runs_past_the_range() -> None:
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "c", "c", "c", "c"], "x": [0.95, 0.99, 1.0, 0.5, 0.2, 0.4, np.nan, 0.3]})
    s = summarize(df, "g", ["x"])
    a = s.loc["a"]
    assert a["x_ci95_high"] > 1.0  # Student t with three seeds near the top of the range
    assert 0.95 <= a["x_boot_low"] <= a["x_mean"] <= a["x_boot_high"] <= 1.0
    assert math.isnan(s.loc["b", "x_boot_low"]) and math.isnan(s.loc["b", "x_boot_high"])  # one seed: no interval
    c = s.loc["c"]  # NaN left out: three values
    assert 0.2 <= c["x_boot_low"] < 0.3 < c["x_boot_high"] <= 0.4


def test_bootstrap_band_agrees_with_a_plain_bootstrap() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=5)
    s = summarize(pd.DataFrame({"g": ["a"] * 5, "x": values}), "g", ["x"]).loc["a"]
    means = values[rng.integers(0, 5, size=(200_000, 5))].mean(axis=1)  # an independent, large resample
    low, high = np.percentile(means, [2.5, 97.5])
    assert s["x_boot_low"] == pytest.approx(low, abs=0.03) and s["x_boot_high"] == pytest.approx(high, abs=0.03)
    again = summarize(pd.DataFrame({"g": ["a"] * 5, "x": values}), "g", ["x"]).loc["a"]
    assert (again["x_boot_low"], again["x_boot_high"]) == (s["x_boot_low"], s["x_boot_high"])  # seeded


def test_pwcca_figure_draws_the_seed_baseline_as_a_band(tmp_path) -> None:
    from matplotlib.figure import Figure

    import orchestrator.collect.representations as rep

    rows = []
    for pair, alpha, cid in (("vs_unregularized", -3.0, "r"), ("vs_unregularized_other_seed", -3.0, "r"), ("across_seeds", 0.0, "p")):
        rows.append({"condition_id": cid, "pair": pair, "alpha": alpha, "layer": "stage1.block1", "epoch": 2,
                     "m_mean": 0.2, "m_boot_low": 0.1, "m_boot_high": 0.3})  # fmt: skip
    drawn: list[Figure] = []
    real = rep._finish
    rep._finish = lambda fig, axes, n, title, path: drawn.append(fig) or real(fig, axes, n, title, path)  # type: ignore[assignment]
    try:
        path = rep.distance_vs_alpha(pd.DataFrame(rows), "m", {"r": "", "p": ""}, "PWCCA distance (svcca's code)", tmp_path / "f.png")
    finally:
        rep._finish = real  # type: ignore[assignment]
    assert path.stat().st_size > 5_000
    ax = drawn[0].axes[0]
    assert len(ax.patches) == 1  # the baseline's band (axhspan)
    points = [line for line in ax.lines if line.get_marker() == "o"]  # the error-bar series
    assert len(points) == 2 and all(list(line.get_xdata()) == [-3.0] for line in points)  # no point at alpha 0
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("between unregularized seeds (band: 95% interval)") == 1 and len(labels) == 3
    assert "svcca's code" in drawn[0]._suptitle.get_text()
