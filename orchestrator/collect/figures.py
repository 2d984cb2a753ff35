"""Figures of a collected sweep in the style of the papers (PNG, matplotlib Agg, no pyplot state).

Used by `python -m orchestrator.collect`; each function takes the collector's condition tables
and writes one PNG:

    test_acc_vs_alpha.png    final test accuracy vs alpha, mean and 95% bootstrap interval over seeds
    csi_vs_alpha.png         final csi_mean vs alpha, mean and 95% bootstrap interval
    csi_over_epochs.png      csi_mean (and test accuracy) over epochs per condition (onset design)
    layer_csi_vs_alpha.png   final per-layer CSI vs alpha, one line per layer

One line per *series*: the conditions that differ only in alpha (e.g. one per onset epoch).
alpha is drawn on a symmetric log axis (linear inside the smallest non-zero |alpha|) when its
non-zero magnitudes span a decade or more (max / min >= 10). The y axes stop at the metric's
range (accuracy 0-100%, CSI 0-1) where a small-n confidence interval would run past it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from orchestrator.collect.stats import fmt, varying_fields
from trainer import results as R

DPI = 130
STYLES = ("-", "--", ":", "-.")


def alpha_axis(ax: Axes, alphas: np.ndarray | list[float]) -> None:
    """Label the x axis alpha; symlog (linthresh = smallest non-zero |alpha|) if it spans a decade."""
    mags = np.abs(np.asarray(alphas, dtype=float))
    mags = mags[mags > 0]
    if len(mags) and mags.max() / mags.min() >= 10:
        ax.set_xscale("symlog", linthresh=float(mags.min()), linscale=0.6)
        ax.set_xticks(_symlog_ticks(np.asarray(alphas, dtype=float), float(mags.min())))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # -100, -1, 0, 0.1: no mathtext
    ax.set_xlabel("alpha (regularizer strength; < 0 against selectivity)")
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)


def _symlog_ticks(alphas: np.ndarray, linthresh: float, most: int = 9) -> list[float]:
    """The alphas themselves when there are few, else 0, +-linthresh and the powers of ten beyond."""
    values = sorted(set(alphas.tolist()))
    if len(values) <= most:
        return values
    top = np.abs(alphas).max()
    powers = [10.0**k for k in range(math.ceil(math.log10(linthresh)), math.floor(math.log10(top)) + 1)]
    mags = sorted({linthresh, *powers})
    return sorted({0.0, *(m for m in mags if m <= alphas.max()), *(-m for m in mags if -m >= alphas.min())})


def _series(conds: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """[(label, its conditions sorted by alpha)], one per combination of the non-alpha varying fields."""
    others = [f for f in varying_fields(conds) if f != "alpha"]
    if not others:
        return [("", conds.sort_values("alpha"))]
    text = conds[others].map(fmt)
    labels = [", ".join(f"{k}={row[k]}" for k in others) for row in text.to_dict("records")]
    conds = conds.assign(_series=labels)
    return [(s, g.sort_values("alpha")) for s, g in conds.groupby("_series", sort=False)]


def _errorbar(ax: Axes, x: pd.Series, df: pd.DataFrame, prefix: str, scale: float = 1.0, **kw: Any) -> None:
    mean = df[f"{prefix}_mean"].to_numpy(float) * scale
    low = np.nan_to_num(mean - df[f"{prefix}_boot_low"].to_numpy(float) * scale)
    high = np.nan_to_num(df[f"{prefix}_boot_high"].to_numpy(float) * scale - mean)
    style: dict[str, Any] = {"marker": "o", "ms": 4, "capsize": 3, "lw": 1.4} | kw
    ax.errorbar(x.to_numpy(float), mean, yerr=[low, high], **style)


def _clip(ax: Axes, scale: float) -> None:
    """Keep the view inside the metric's range [0, scale] (plus a margin)."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -0.02 * scale), min(high, 1.02 * scale))


def _title(conds: pd.DataFrame, what: str) -> str:
    fixed = [f"{conds[k].iloc[0]}" for k in ("model", "dataset") if conds[k].nunique() == 1]
    n = conds["n"]
    seeds = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}-{n.max()}"
    return f"{' / '.join(fixed)}: {what}\nmean and 95% bootstrap percentile interval over seeds ({seeds})"


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the PNG beside its name, then rename it over (a reader never sees half a file)."""
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}{R.TMP_MARK}{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    os.replace(tmp, path)  # derived data: atomic, not fsynced
    return path


def metric_vs_alpha(conds: pd.DataFrame, metric: str, ylabel: str, what: str, path: Path, scale: float = 1.0) -> Path:
    """`metric` (final epoch) vs alpha with 95% bootstrap interval error bars, one line per series."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    series = _series(conds)
    for i, (label, g) in enumerate(series):
        _errorbar(ax, g["alpha"], g, metric, scale, label=label or None, ls=STYLES[i % len(STYLES)])
    alpha_axis(ax, conds["alpha"])
    ax.set_ylabel(ylabel)
    _clip(ax, scale)
    ax.set_title(_title(conds, what), fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _alpha_colors(alphas: pd.Series) -> dict[float, tuple]:
    """Diverging colours: blue for alpha < 0, red for > 0, black for 0; darker for stronger."""
    mags = np.abs(alphas.to_numpy(float))
    lin = mags[mags > 0].min() if (mags > 0).any() else 1.0
    s = np.sign(alphas.to_numpy(float)) * np.log10(1 + mags / lin)
    top = np.abs(s).max() or 1.0
    cmap = colormaps["coolwarm"]

    def shade(v: float) -> float:  # never the pale middle
        return 0.5 + np.sign(v) * (0.2 + 0.3 * abs(v) / top)

    return {a: ((0, 0, 0, 1) if a == 0 else cmap(shade(v))) for a, v in zip(alphas, s)}


def over_epochs(cond_epochs: pd.DataFrame, conds: pd.DataFrame, path: Path) -> Path:
    """csi_mean and test accuracy over epochs, one line (mean, 95% bootstrap band) per condition."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    colors = _alpha_colors(conds["alpha"])
    styles = {label: STYLES[i % len(STYLES)] for i, (label, _) in enumerate(_series(conds))}
    for label, g in _series(conds):
        for cid, alpha, name in g[["condition_id", "alpha", "condition"]].itertuples(index=False):
            e = cond_epochs[cond_epochs["condition_id"] == cid].sort_values("epoch")
            for ax, metric, scale in ((axes[0], "csi_mean", 1.0), (axes[1], "test_acc", 100.0)):
                x = e["epoch"].to_numpy(float)
                ax.plot(x, e[f"{metric}_mean"] * scale, color=colors[alpha], ls=styles[label], lw=1.3, label=name)
                ax.fill_between(x, e[f"{metric}_boot_low"] * scale, e[f"{metric}_boot_high"] * scale, color=colors[alpha], alpha=0.15, lw=0)
    for edge in sorted(set(conds["onset_epoch"]) - {0}):
        for ax in axes:
            ax.axvline(edge, color="0.5", ls=":", lw=1)
    for ax, ylabel, scale in zip(axes, ("csi_mean (test set, mean over layers)", "test accuracy (%)"), (1.0, 100.0)):
        _clip(ax, scale)
        ax.set_xlabel("epoch (0 = initialised network)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(_title(conds, "class selectivity over training"), fontsize=10)
    axes[1].set_title(
        "test accuracy over training" + ("\ndotted: regularizer onset" if (conds["onset_epoch"] > 0).any() else ""), fontsize=10
    )
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="condition", title_fontsize=8)
    return save_figure(fig, path)


def layers_vs_alpha(cond_layers: pd.DataFrame, conds: pd.DataFrame, path: Path) -> Path:
    """Final per-layer CSI vs alpha, one line per layer (colour = depth), one panel per series."""
    series = _series(conds)
    n = len(series)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(5.6 * cols + 1.6, 4.2 * rows))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    layers = list(dict.fromkeys(cond_layers["layer"]))
    cmap = colormaps["viridis"]
    for ax, (label, g) in zip(axes, series):
        sub = cond_layers[cond_layers["condition_id"].isin(g["condition_id"])]
        for j, layer in enumerate(layers):
            lg = sub[sub["layer"] == layer].sort_values("alpha")
            color = cmap(j / max(len(layers) - 1, 1))
            _errorbar(ax, lg["alpha"], lg, "csi_mean", color=color, label=layer, capsize=2, ms=3, lw=1.1)
        alpha_axis(ax, conds["alpha"])
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("layer csi_mean (final epoch)")
        _clip(ax, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    title = _title(conds, "per-layer class selectivity vs alpha")
    if n == 1:
        axes[0].set_title(title, fontsize=10)
    else:
        fig.subplots_adjust(top=1 - 0.75 / fig.get_figheight())  # room for the two-line title above the panels
        fig.suptitle(title, fontsize=10)
    axes[cols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="layer", title_fontsize=8)
    return save_figure(fig, path)


def write_figures(conds: pd.DataFrame, cond_epochs: pd.DataFrame, cond_layers: pd.DataFrame, folder: Path) -> list[Path]:
    """All four figures into `folder` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        metric_vs_alpha(conds, "test_acc", "final test accuracy (%)", "test accuracy vs alpha", folder / "test_acc_vs_alpha.png", 100.0),
        metric_vs_alpha(conds, "csi_mean", "final csi_mean (test set)", "class selectivity vs alpha", folder / "csi_vs_alpha.png"),
        over_epochs(cond_epochs, conds, folder / "csi_over_epochs.png"),
        layers_vs_alpha(cond_layers, conds, folder / "layer_csi_vs_alpha.png"),
    ]
