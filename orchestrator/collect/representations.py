"""Representation analyses for the collector: similarity between trials and dimensionality.

From the done trials' dimensionality.parquet and similarity.parquet (trainer.analysis.representation_job,
orchestrator.analysis.represent; docs/analysis.md) the collector writes

    representation_pairs.parquet           every similarity row of pairs whose two trials are both
                                           collected, with the condition of the first trial
    representation_similarity.parquet      condition x pair x epoch x layer: n (pairs) and mean / std /
                                           sem / 95% CI of cka, pwcca_distance (Morcos et al.'s
                                           formula) and pwcca_distance_svcca (svcca's code) over the seeds
    representation_dimensionality.parquet  condition x epoch x layer: n (seeds) and the statistics of
                                           pcs_95, participation_ratio and pcs_95_per_unit

and the figures of the papers:

    cka_over_epochs.png          linear CKA with the unregularized network of the same seed over
                                 training, per condition and layer, beside the CKA between
                                 unregularized seeds (Ranadive et al.)
    pwcca_vs_alpha.png           PWCCA distance (Morcos et al.'s formula) at the last compared epoch
                                 vs alpha, per layer: to the unregularized network of the same seed
                                 (solid) and, with orchestrator.represent --cross-seed, of the other
                                 seeds (dashed); the distance between unregularized seeds is a
                                 horizontal band, not a point on the alpha axis (its pairs share no
                                 initialisation, unlike the same-seed pairs)
    pwcca_svcca_vs_alpha.png     the same with svcca's PWCCA (what Leavitt & Morcos most likely used)
    dimensionality_vs_alpha.png  principal components for 95% of the variance at the last analysed
                                 epoch vs alpha, per layer

For the baseline pair ("across_seeds") the samples are the pairs of unregularized seeds (n seeds
give n(n-1)/2 pairs, not independent): its interval is a guide, not a test.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.collect.analysis_files import Warn, read_files
from orchestrator.collect.stats import condition_columns, condition_fields, fmt, summarize, varying_fields
from trainer.analysis.similarity_job import DIMENSIONALITY, MINIBATCH_CKA, SIMILARITY

PAIRS_TABLE = "representation_pairs.parquet"
SIMILARITY_TABLE = "representation_similarity.parquet"
DIMENSIONALITY_TABLE = "representation_dimensionality.parquet"
MINIBATCH_TABLE = "representation_minibatch_cka.parquet"
FIGURES = (
    "cka_over_epochs.png", "pwcca_vs_alpha.png", "dimensionality_vs_alpha.png", "pwcca_svcca_vs_alpha.png",
    "cka_minibatch_over_epochs.png",
)  # fmt: skip
# What core.py removes when a collect did not write it (it describes other trials).
OUTPUTS = (PAIRS_TABLE, SIMILARITY_TABLE, DIMENSIONALITY_TABLE, MINIBATCH_TABLE, *(f"figures/{f}" for f in FIGURES))
SIM_METRICS = ["cka", "pwcca_distance", "pwcca_distance_svcca"]
DIM_METRICS = ["pcs_95", "participation_ratio", "pcs_95_per_unit"]
AGAIN = "remove it and run python -m orchestrator.represent <sweep>"  # the represent jobs have no settings to replace


def representation_tables(folders: list[Path], trials: pd.DataFrame, warn: Warn) -> dict[str, pd.DataFrame]:
    """The three tables from the trials in `folders` (the collected, done ones); {} if none has any."""
    condition = trials.set_index("trial_id")[["condition_id", *_labels()]]  # every condition field, not only alpha and onset
    labels = condition_columns(trials)
    out: dict[str, pd.DataFrame] = {}
    dims = read_files(folders, DIMENSIONALITY, warn, AGAIN)
    if dims is not None:
        # reindex: trials analysed before a column existed have NaN there
        dims = dims[dims["trial_id"].isin(condition.index)].reindex(columns=["trial_id", "epoch", "layer", "n_units", *DIM_METRICS])
        dims = dims.join(condition["condition_id"], on="trial_id")
        stats = summarize(dims, ["condition_id", "epoch", "layer"], DIM_METRICS)
        stats.insert(0, "n_units", dims.groupby(["condition_id", "epoch", "layer"], sort=False)["n_units"].first())
        out[DIMENSIONALITY_TABLE] = _ordered(stats.reset_index().join(labels, on="condition_id"), trials)
    sims = read_files(folders, SIMILARITY, warn, AGAIN)
    if sims is not None:
        known = condition.index
        sims = sims[sims["trial_id"].isin(known) & sims["reference_id"].isin(known)]
        keep = ["trial_id", "seed", "reference_id", "reference_seed", "reference_alpha", "pair", "epoch", "layer", "n_units", "n_images"]
        sims = sims.reindex(columns=[*keep, *SIM_METRICS]).join(condition, on="trial_id")
        out[PAIRS_TABLE] = sims.reset_index(drop=True)
        stats = summarize(sims, ["condition_id", "pair", "epoch", "layer"], SIM_METRICS)
        out[SIMILARITY_TABLE] = _ordered(stats.reset_index().join(labels, on="condition_id"), trials)
    mb = read_files(folders, MINIBATCH_CKA, warn, AGAIN)
    if mb is not None:
        known = condition.index
        mb = mb[mb["trial_id"].isin(known) & mb["reference_id"].isin(known)]
        mb = mb[["trial_id", "reference_id", "pair", "epoch", "layer", "cka_batch_size", "cka_minibatch"]].join(condition, on="trial_id")
        stats = summarize(mb, ["condition_id", "pair", "cka_batch_size", "epoch", "layer"], ["cka_minibatch"])
        out[MINIBATCH_TABLE] = _ordered(stats.reset_index().join(labels, on="condition_id"), trials)
    return out


def _ordered(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Label columns first; conditions in the trials' order, epochs ascending, layers in network order."""
    order = {c: i for i, c in enumerate(trials.drop_duplicates("condition_id")["condition_id"])}
    table = table.assign(_c=table["condition_id"].map(order)).sort_values(["_c", "epoch"], kind="stable").drop(columns="_c")
    first = ["condition_id", *_labels()]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def _labels() -> list[str]:
    """The condition's label, then its fields in conditions.parquet's order (alpha and onset_epoch among them)."""
    return ["condition", *condition_fields()]


# ---- figures ------------------------------------------------------------------------------------
def representation_figures(tables: dict[str, pd.DataFrame], trials: pd.DataFrame, folder: Path) -> list[Path]:
    """The figures the tables allow (none: matplotlib is not even imported)."""
    sim, dims = tables.get(SIMILARITY_TABLE), tables.get(DIMENSIONALITY_TABLE)
    if (sim is None or sim.empty) and (dims is None or dims.empty):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    series = _series_labels(trials)
    out = []
    if sim is not None and not sim.empty:
        out.append(cka_over_epochs(sim, folder / FIGURES[0]))
        last = _last_epoch(sim)
        out.append(distance_vs_alpha(last, "pwcca_distance", series, "PWCCA distance (Morcos et al.'s formula)", folder / FIGURES[1]))
        if "pwcca_distance_svcca_mean" in last.columns and last["pwcca_distance_svcca_mean"].notna().any():
            out.append(distance_vs_alpha(last, "pwcca_distance_svcca", series, "PWCCA distance (svcca's code)", folder / FIGURES[3]))
    mb = tables.get(MINIBATCH_TABLE)
    if mb is not None and not mb.empty:
        title = "Minibatch CKA (unbiased HSIC, flattened outputs; Ranadive et al.'s measure)"
        out.append(cka_over_epochs(mb, folder / FIGURES[4], "cka_minibatch", title))
    if dims is not None and not dims.empty:
        out.append(metric_vs_alpha(_last_epoch(dims), "pcs_95", series, "principal components for 95% of the variance",
                                   "dimensionality vs alpha", folder / FIGURES[2]))  # fmt: skip
    return out


def _series_labels(trials: pd.DataFrame) -> dict[str, str]:
    """condition_id -> its series: the varying condition fields other than alpha ('' when only alpha varies)."""
    conds = trials.drop_duplicates("condition_id")
    others = [f for f in varying_fields(conds) if f != "alpha"]
    return {row["condition_id"]: ", ".join(f"{k}={fmt(row[k])}" for k in others) for row in conds.to_dict("records")}


def _last_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each condition's (and pair's) last epoch."""
    keys = ["condition_id", "pair"] if "pair" in table.columns else ["condition_id"]
    last = table.groupby(keys, sort=False)["epoch"].transform("max")
    return table[table["epoch"] == last]


def _grid(n: int) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols + 1.8, 2.9 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _finish(fig: Any, axes: np.ndarray, n: int, title: str, path: Path) -> Path:
    from orchestrator.collect.figures import save_figure

    for ax in axes[:n]:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    legend = axes[min(n, 4) - 1]
    if legend.get_legend_handles_labels()[1]:  # one unnamed series (only alpha varies): nothing to tell apart
        legend.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def cka_over_epochs(sim: pd.DataFrame, path: Path, metric: str = "cka", what: str | None = None) -> Path:
    """One panel per layer: CKA over epochs, a line (mean, 95% CI band) per condition and pair."""
    from matplotlib import colormaps

    layers = list(dict.fromkeys(sim["layer"]))
    fig, axes = _grid(len(layers))
    lines = list(dict.fromkeys(zip(sim["condition_id"], sim["pair"])))
    colours = colormaps["tab10"]
    for ax, layer in zip(axes, layers):
        for i, (cid, pair) in enumerate(lines):
            g = sim[(sim["layer"] == layer) & (sim["condition_id"] == cid) & (sim["pair"] == pair)].sort_values("epoch")
            if g.empty:
                continue
            name = g["condition"].iloc[0]
            label = {"across_seeds": "unregularized, across seeds", "vs_unregularized_other_seed": f"{name} vs other seeds"}.get(
                pair, f"{name} vs unregularized"
            )
            style = {"across_seeds": "--", "vs_unregularized_other_seed": ":"}.get(pair, "-")
            x = g["epoch"].to_numpy(float)
            ax.plot(x, g[f"{metric}_mean"], style, color=colours(i % 10), lw=1.3, label=label)
            ax.fill_between(x, g[f"{metric}_boot_low"], g[f"{metric}_boot_high"], color=colours(i % 10), alpha=0.15, lw=0)
        ax.set_title(layer, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("minibatch CKA" if metric == "cka_minibatch" else "linear CKA", fontsize=8)
    what = (
        what or "Linear CKA on channels averaged over space, all images at once (not Ranadive et al.'s minibatch CKA on flattened outputs)"
    )
    title = f"{what}\nwith the unregularized network of the same seed (solid; other seeds: dotted) and between unregularized seeds (dashed)"
    return _finish(fig, axes, len(layers), f"{title}\nmean and 95% bootstrap percentile interval over seeds (seed pairs)", path)


def distance_vs_alpha(table: pd.DataFrame, metric: str, series: dict[str, str], what: str, path: Path) -> Path:
    """One panel per layer: `metric` vs alpha for the regularized conditions, against the unregularized
    network of the same seed (solid) and of other seeds (dashed), with 95% bootstrap intervals; the
    baseline between unregularized seeds is a horizontal band (its interval) around a grey line."""
    from orchestrator.collect.figures import alpha_axis

    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = _grid(len(layers))
    table = table.assign(_series=table["condition_id"].map(series).fillna(""))
    reg, base = table[table["pair"] != "across_seeds"], table[table["pair"] == "across_seeds"]
    names = list(dict.fromkeys(reg["_series"]))
    styles = {"vs_unregularized": "-", "vs_unregularized_other_seed": "--"}
    for ax, layer in zip(axes, layers):
        for j, (_, b) in enumerate(base[base["layer"] == layer].iterrows()):
            low, high = b[f"{metric}_boot_low"], b[f"{metric}_boot_high"]
            if pd.notna(low) and pd.notna(high):
                ax.axhspan(low, high, color="0.6", alpha=0.25, lw=0)
            label = "between unregularized seeds (band: 95% interval)" if j == 0 else None
            ax.axhline(b[f"{metric}_mean"], color="0.4", ls=":", lw=1.2, label=label)
        for i, name in enumerate(names):
            for pair, style in styles.items():
                g = reg[(reg["layer"] == layer) & (reg["_series"] == name) & (reg["pair"] == pair)].sort_values("alpha")
                if g.empty:
                    continue
                mean = g[f"{metric}_mean"].to_numpy(float)
                err = [
                    np.nan_to_num(mean - g[f"{metric}_boot_low"].to_numpy(float)),
                    np.nan_to_num(g[f"{metric}_boot_high"].to_numpy(float) - mean),
                ]
                who = "same seed" if pair == "vs_unregularized" else "other seeds"
                label = f"{name + ': ' if name else ''}vs unregularized, {who}"
                ax.errorbar(g["alpha"].to_numpy(float), mean, yerr=err, marker="o", ms=3, capsize=2, lw=1.2, ls=style,
                            color=f"C{i % 10}", label=label)  # fmt: skip
        alpha_axis(ax, reg["alpha"] if not reg.empty else table["alpha"])
        ax.xaxis.label.set_size(7)
        ax.set_title(layer, fontsize=9)
        ax.set_ylabel(what, fontsize=7)
    title = f"{what} vs alpha; grey band: between unregularized seeds"
    return _finish(fig, axes, len(layers), f"{title}\nlast compared epoch; mean and 95% bootstrap percentile interval over seeds", path)


def metric_vs_alpha(table: pd.DataFrame, metric: str, series: dict[str, str], ylabel: str, title: str, path: Path) -> Path:
    """One panel per layer: `metric` vs alpha (mean, 95% CI), a line per series (e.g. onset epoch)."""
    from orchestrator.collect.figures import alpha_axis

    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = _grid(len(layers))
    table = table.assign(_series=table["condition_id"].map(series).fillna(""))
    # alpha 0 (the unregularized trials; for a similarity, between their seeds) is every series' reference point
    zero, rest = table[table["alpha"] == 0], table[table["alpha"] != 0]
    if not rest.empty:
        table = pd.concat([rest, *(zero.assign(_series=s) for s in rest["_series"].unique())], ignore_index=True)
    names = list(dict.fromkeys(table["_series"]))
    for ax, layer in zip(axes, layers):
        for i, name in enumerate(names):
            g = table[(table["layer"] == layer) & (table["_series"] == name)].sort_values("alpha")
            mean = g[f"{metric}_mean"].to_numpy(float)
            low, high = g[f"{metric}_boot_low"].to_numpy(float), g[f"{metric}_boot_high"].to_numpy(float)
            err = [np.nan_to_num(mean - low), np.nan_to_num(high - mean)]  # one seed: no interval
            ax.errorbar(g["alpha"].to_numpy(float), mean, yerr=err, marker="o", ms=3, capsize=2, lw=1.2,
                        ls=("-", "--", ":", "-.")[i % 4], label=name or None)  # fmt: skip
        alpha_axis(ax, table["alpha"])
        ax.xaxis.label.set_size(7)
        ax.set_title(layer, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=7)
    return _finish(fig, axes, len(layers), f"{title}\nlast analysed epoch; mean and 95% bootstrap percentile interval over seeds", path)
