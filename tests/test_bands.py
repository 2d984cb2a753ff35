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
