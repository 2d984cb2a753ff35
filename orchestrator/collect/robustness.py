"""Robustness to corruptions and attacks for the collector (Leavitt & Morcos, arXiv 2010.07693).

From the done trials' robustness.parquet, robust_dimensionality.parquet and robust_gradients.parquet
(`python -m orchestrator.robust`, or `robust: true`; docs/analysis.md) the collector writes

    robust_trials.parquet          one row per trial and epoch: clean accuracy, mean corruption accuracy
                                   (15 corruptions x 5 severities), FGSM and PGD accuracy averaged over
                                   the epsilons > 0, each also relative to the clean accuracy (*_rel),
                                   and the trial's final csi_mean
    robust_corruptions.parquet     condition x epoch x corruption x severity: accuracy over seeds (n,
                                   mean / std / sem / 95% CI); corruption "mean" = the 15 averaged
    robust_attacks.parquet         condition x epoch x attack x epsilon: accuracy (worst case up to
                                   epsilon) and accuracy_single over seeds
    robust_change_dimensionality.parquet  condition x epoch x kind x layer: pcs_95 and participation
                                   ratio of the change (perturbed - clean units), each trial's
                                   corruptions / epsilons averaged first; kind "clean" is the clean
                                   representation's own dimensionality
    robust_gradients.parquet       condition x epoch x layer: input-unit gradient mean, CV across
                                   samples, CV across units, over seeds

figures robust_corruption_vs_alpha.png, robust_attacks.png, robust_change_dimensionality.png and
robust_gradients.png, and report lines: each measure per condition, and the direction found
(Spearman rank correlation with alpha and with the trial's mean CSI over trials).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.collect.analysis_files import Warn, read_files
from orchestrator.collect.stats import condition_columns, condition_fields, summarize
from trainer.results import ROBUST_DIMENSIONALITY, ROBUST_GRADIENTS, ROBUSTNESS  # not robustness_job: it imports torch (3 s)

TRIALS_TABLE, CORRUPTIONS_TABLE, ATTACKS_TABLE = "robust_trials.parquet", "robust_corruptions.parquet", "robust_attacks.parquet"
CHANGE_TABLE, GRADIENTS_TABLE = "robust_change_dimensionality.parquet", "robust_gradients.parquet"
FIGURES = ("robust_corruption_vs_alpha.png", "robust_attacks.png", "robust_change_dimensionality.png", "robust_gradients.png")
OUTPUTS = (TRIALS_TABLE, CORRUPTIONS_TABLE, ATTACKS_TABLE, CHANGE_TABLE, GRADIENTS_TABLE, *(f"figures/{f}" for f in FIGURES))
TABLES = {
    TRIALS_TABLE: "one row per trial: clean, mean corruption, mean FGSM / PGD accuracy, csi_mean",
    CORRUPTIONS_TABLE: "condition x corruption x severity: accuracy over seeds",
    ATTACKS_TABLE: "condition x attack x epsilon: adversarial accuracy over seeds",
    CHANGE_TABLE: "condition x perturbation kind x layer: dimensionality of the representation's change",
    GRADIENTS_TABLE: "condition x layer: input-unit gradient variability across samples and units",
}
LABELS = ["condition", "alpha"]
# The paper's directions, as alpha rises (more selectivity): corruption accuracy falls, attack accuracy rises.
EXPECTED = {"corruption_acc": -1, "fgsm_acc": 1, "pgd_acc": 1, "corruption_rel": -1, "fgsm_rel": 1, "pgd_rel": 1}


def robustness_tables(folders: list[Path], trials: pd.DataFrame, warn: Warn) -> dict[str, pd.DataFrame]:
    """The tables from the collected trials' files; {} when no trial has robustness results."""
    again = "python -m orchestrator.robust <sweep> --replace"
    # The three files of a trial share their settings: one warning if they differ, not three.
    acc = read_files(folders, ROBUSTNESS, warn, again, settings=True)
    if acc is None:
        return {}
    # Every row carries its condition's fields (robust_trials: the trial's, seed included), not only alpha.
    condition = trials.set_index("trial_id")[["condition_id", "condition", *condition_fields(), "seed", "csi_mean"]]
    labels = condition_columns(trials)
    grads = read_files(folders, ROBUST_GRADIENTS, warn, again)
    acc = acc[acc["trial_id"].isin(condition.index)]
    unfinished = unfinished_measurements(acc, grads, folders, warn)
    acc = acc[~acc["trial_id"].isin(unfinished)]
    if acc.empty:
        return {}
    acc = acc.join(condition[["condition_id"]], on="trial_id")
    out: dict[str, pd.DataFrame] = {}
    corr = acc[acc["kind"] == "corruption"]
    per_trial = corr.groupby(["trial_id", "condition_id", "epoch", "severity"], as_index=False)["accuracy"].mean().assign(name="mean")
    corr = pd.concat([corr[["trial_id", "condition_id", "epoch", "name", "severity", "accuracy"]], per_trial], ignore_index=True)
    stats = summarize(corr, ["condition_id", "epoch", "name", "severity"], ["accuracy"]).reset_index()
    out[CORRUPTIONS_TABLE] = stats.join(labels, on="condition_id")
    attacks = acc[acc["kind"].isin(["fgsm", "pgd"])]
    stats = summarize(attacks, ["condition_id", "epoch", "kind", "epsilon"], ["accuracy", "accuracy_single"]).reset_index()
    out[ATTACKS_TABLE] = stats.rename(columns={"kind": "attack"}).join(labels, on="condition_id")
    out[TRIALS_TABLE] = _per_trial(acc, condition)
    dims = read_files(folders, ROBUST_DIMENSIONALITY, warn, again)
    measured = condition.index.difference(list(unfinished))
    if dims is not None:
        dims = dims[dims["trial_id"].isin(measured)].join(condition[["condition_id"]], on="trial_id")
        mean = dims.groupby(["trial_id", "condition_id", "epoch", "kind", "layer"], sort=False, as_index=False)[
            ["pcs_95", "participation_ratio", "n_units"]
        ].mean()
        stats = summarize(mean, ["condition_id", "epoch", "kind", "layer"], ["pcs_95", "participation_ratio"]).reset_index()
        out[CHANGE_TABLE] = stats.join(labels, on="condition_id")
    if grads is not None:
        grads = grads[grads["trial_id"].isin(measured)].join(condition[["condition_id"]], on="trial_id")
        stats = summarize(grads, ["condition_id", "epoch", "layer"], ["grad_mean", "cv_samples", "cv_units"]).reset_index()
        out[GRADIENTS_TABLE] = stats.join(labels, on="condition_id")
    return out


def unfinished_measurements(acc: pd.DataFrame, grads: pd.DataFrame | None, folders: list[Path], warn: Warn) -> set[str]:
    """Trials whose measurement of some epoch stops short (a robust job killed midway), said in one
    warning; the tables leave them out until the job is resumed. The job measures an epoch's pieces
    in order, clean, corruptions, FGSM, PGD, gradients last, so an epoch is whole once its gradient
    rows are there. Mixed in, a trial killed during its corruptions counted a mean over 9 of the
    15 in its condition's, and one with no attack rows yet stopped the collect on a traceback."""
    epochs = acc.groupby("trial_id")["epoch"].agg(lambda e: set(e.tolist()))
    whole = set() if grads is None else set(zip(grads["trial_id"], grads["epoch"]))
    lacking = {t: sorted(e for e in es if (t, e) not in whole) for t, es in epochs.items()}
    lacking = {t: e for t, e in lacking.items() if e}
    if lacking:
        sweep = folders[0].parent.parent
        shown = ", ".join(f"{t} (epoch {', '.join(map(str, e))})" for t, e in list(lacking.items())[:3])
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        warn(
            f"{len(lacking)} trial(s) with unfinished robustness measurements, left out of the robustness tables: "
            f"{shown}{more}; to finish them: python -m orchestrator.robust {sweep}"
        )
    return set(lacking)


def _per_trial(acc: pd.DataFrame, condition: pd.DataFrame) -> pd.DataFrame:
    keys = ["trial_id", "epoch"]
    clean = acc[acc["kind"] == "clean"].set_index(keys)["accuracy"].rename("clean_acc")
    corr = acc[acc["kind"] == "corruption"].groupby(keys)["accuracy"].mean().rename("corruption_acc")
    attacked = acc[acc["kind"].isin(["fgsm", "pgd"]) & (acc["epsilon"] > 0)]
    parts: list[pd.Series | pd.DataFrame] = [clean, corr]
    if not attacked.empty:  # no epsilon > 0 measured: no attack columns (pivot_table of nothing does not align)
        parts.append(attacked.pivot_table(index=keys, columns="kind", values="accuracy", aggfunc="mean").add_suffix("_acc"))
    table = pd.concat(parts, axis=1)
    # Relative to the clean accuracy: robustness apart from how well the network classifies at all.
    for m in ("corruption_acc", "fgsm_acc", "pgd_acc"):
        if m in table.columns:
            table[m.replace("_acc", "_rel")] = table[m] / table["clean_acc"]
    return table.reset_index().join(condition, on="trial_id")


# ---- the report ---------------------------------------------------------------------------------
def _spearman(a: pd.Series, b: pd.Series) -> float:
    ok = a.notna() & b.notna()
    if ok.sum() < 3 or a[ok].nunique() < 2 or b[ok].nunique() < 2:
        return float("nan")
    return float(a[ok].rank().corr(b[ok].rank()))


def _pm(mean: float, high: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(high) else f"{mean:.3f} ± {high - mean:.3f}"


def robustness_markdown(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The report's robustness section (empty without robustness results)."""
    per_trial = tables.get(TRIALS_TABLE)
    if per_trial is None or per_trial.empty:
        return []
    final = per_trial[per_trial["epoch"] == per_trial.groupby("trial_id")["epoch"].transform("max")]
    metrics = [m for m in ("clean_acc", "corruption_acc", "fgsm_acc", "pgd_acc") if m in final.columns]
    stats = summarize(final, "condition_id", metrics).join(final.drop_duplicates("condition_id").set_index("condition_id")[LABELS])
    stats = stats.sort_values("alpha")
    lines = ["## Robustness (Leavitt & Morcos 2020)", "",
             "Final network; accuracy mean ± 95% CI half-width over seeds. Corruption: the 15 corruptions x 5 "
             "severities averaged; FGSM / PGD: averaged over the epsilons > 0 (worst case up to each epsilon).", "",
             "| condition | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]  # fmt: skip
    for _, r in stats.iterrows():
        cells = [_pm(r[f"{m}_mean"], r[f"{m}_ci95_high"]) for m in metrics]
        lines.append(f"| {r['condition']} | {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Direction over trials (Spearman rank correlation; the paper: corruption accuracy falls and attack accuracy "
              "rises with selectivity):", ""]  # fmt: skip
    relative = [m for m in ("corruption_rel", "fgsm_rel", "pgd_rel") if m in final.columns]
    for m in metrics[1:] + relative:
        rho_alpha, rho_csi = _spearman(final[m], final["alpha"]), _spearman(final[m], final["csi_mean"])
        found = "rises" if rho_alpha > 0 else "falls" if rho_alpha < 0 else "is flat"
        agrees = "" if math.isnan(rho_alpha) or m not in EXPECTED else (
            " (as the paper found)" if np.sign(rho_alpha) == EXPECTED[m] else " (against the paper)")  # fmt: skip
        lines.append(f"- {m} {found} with alpha: rho = {rho_alpha:.2f} vs alpha, {rho_csi:.2f} vs csi_mean, "
                     f"over {len(final)} trials{agrees}")  # fmt: skip
    change = tables.get(CHANGE_TABLE)
    if change is not None and not change.empty:
        last = change[change["epoch"] == change["epoch"].max()]
        first_layer = last["layer"].iloc[0]
        early = last[last["layer"] == first_layer].groupby("kind")["pcs_95_mean"].mean()
        shown = ", ".join(f"{k} {v:.1f}" for k, v in early.items())
        lines.append(f"- Change dimensionality in {first_layer} (components for 95% of the variance, mean over conditions): {shown}")
    return [*lines, ""]


# ---- figures ------------------------------------------------------------------------------------
def robustness_figures(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    if CORRUPTIONS_TABLE not in tables:
        return []  # nothing to draw: do not even import matplotlib
    from matplotlib.figure import Figure

    from orchestrator.collect.figures import alpha_axis, save_figure

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    corr = _last(tables[CORRUPTIONS_TABLE])
    trials = tables[TRIALS_TABLE]
    fig = Figure(figsize=(11, 3.8))
    ax, ax2 = fig.subplots(1, 2)
    mean = corr[corr["name"] == "mean"]
    for severity, g in mean.groupby("severity"):
        g = g.sort_values("alpha")
        _errorbar(ax, g["alpha"], g, "accuracy", f"severity {severity}")
    alpha_axis(ax, mean["alpha"])
    ax.set_ylabel("accuracy under corruption (15 averaged)")
    final = trials[trials["epoch"] == trials.groupby("trial_id")["epoch"].transform("max")]
    sc = ax2.scatter(final["csi_mean"], final["corruption_acc"], c=final["alpha"], cmap="coolwarm", s=18)
    fig.colorbar(sc, ax=ax2, label="alpha")
    ax2.set_xlabel("trial's mean CSI (final)")
    ax2.set_ylabel("mean corruption accuracy")
    title = "Accuracy under corruption vs alpha (mean, 95% CI over seeds) and vs CSI"
    out.append(_save(fig, [ax, ax2], title, folder / FIGURES[0], save_figure))
    attacks = _last(tables[ATTACKS_TABLE])
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    for ax, attack in zip(axes, ("fgsm", "pgd")):
        a = attacks[attacks["attack"] == attack]
        for cond, g in a.groupby("condition", sort=False):
            g = g.sort_values("epsilon")
            _errorbar(ax, g["epsilon"] * 255, g, "accuracy", str(cond))
        ax.set_xlabel("epsilon (x 1/255, L-inf)")
        ax.set_ylabel(f"accuracy under {attack.upper()}")
    title = "Adversarial accuracy vs epsilon per alpha (mean, 95% CI over seeds)"
    out.append(_save(fig, list(axes), title, folder / FIGURES[1], save_figure))
    for table, metrics, name, title in (
        (CHANGE_TABLE, ["pcs_95"], FIGURES[2], "Dimensionality of the change (perturbed - clean) vs alpha per layer"),
        (GRADIENTS_TABLE, ["cv_samples", "cv_units"], FIGURES[3], "Input-unit gradient variability vs alpha per layer"),
    ):
        if table not in tables:
            continue
        t = _last(tables[table])
        layers = list(dict.fromkeys(t["layer"]))
        cols = min(len(layers), 3)
        fig = Figure(figsize=(4.2 * cols, 3.2 * math.ceil(len(layers) / cols)))
        axes = fig.subplots(math.ceil(len(layers) / cols), cols, squeeze=False).ravel()
        for ax, layer in zip(axes, layers):
            lt = t[t["layer"] == layer]
            groups = lt.groupby("kind", sort=False) if "kind" in lt.columns else [(None, lt)]
            for kind, g in groups:
                for metric in metrics:
                    _errorbar(ax, g.sort_values("alpha")["alpha"], g.sort_values("alpha"), metric, str(kind or metric))
            alpha_axis(ax, lt["alpha"])
            ax.set_title(layer, fontsize=9)
        for ax in axes[len(layers) :]:
            ax.set_visible(False)
        out.append(_save(fig, list(axes[: len(layers)]), title, folder / name, save_figure))
    return out


def _last(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["epoch"] == table.groupby("condition_id")["epoch"].transform("max")]


def _errorbar(ax: Any, x: pd.Series, g: pd.DataFrame, metric: str, label: str) -> None:
    mean = g[f"{metric}_mean"].to_numpy(float)
    err = [np.nan_to_num(mean - g[f"{metric}_ci95_low"].to_numpy(float)), np.nan_to_num(g[f"{metric}_ci95_high"].to_numpy(float) - mean)]
    ax.errorbar(x.to_numpy(float), mean, yerr=err, marker="o", ms=3, capsize=2, lw=1.1, label=label)


def _save(fig: Any, axes: list[Any], title: str, path: Path, save: Any) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[1]]
    if labelled:
        labelled[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)
