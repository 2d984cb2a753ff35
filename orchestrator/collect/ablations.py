"""Ablation curves and early dynamics for the collector (Ranadive et al. 2023).

From the trials' ablations.parquet (written by `python -m orchestrator.analysis.ablate`):
    ablation_curves.parquet  condition x epoch x stage x selection x k: accuracy over seeds
                             (each seed's random draws averaged first), mean/std/sem/95% CI
    ablation_auc.parquet     condition x epoch x stage x selection: the area under the
                             accuracy-vs-fraction curve normalised to its maximum (1 = ablation
                             costs nothing; lower = the ablated channels mattered), over seeds
and the figures ablation_curves.png (top-k solid, random dashed, first/middle/last kept epoch)
and ablation_auc.png (its trend over epochs), plus early_dynamics.png when mid-epoch
evaluations exist (condition_steps.parquet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.collect.analysis_files import Warn, read_files
from orchestrator.collect.stats import condition_fields, summarize
from trainer.files import kept_checkpoint_epochs
from trainer.results import ABLATIONS

KEYS = ["condition_id", "epoch", "stage", "selection"]


def read_ablations(folders: list[Path], warn: Warn) -> pd.DataFrame | None:
    """All done trials' ablation rows in one dataset scan (None if no trial has any)."""
    columns = ["trial_id", "epoch", "stage", "k", "fraction", "selection", "draw", "accuracy"]
    again = "python -m orchestrator.ablate <sweep> --replace"
    return read_files(folders, ABLATIONS, warn, again, columns, settings=True)


def unfinished_ablations(folders: list[Path], rows: pd.DataFrame, warn: Warn) -> set[str]:
    """Trials whose ablations stop short of their kept checkpoints (an ablate job killed midway: the
    job writes a whole epoch at a time), said in one warning. They are left out of the tables until
    the job is resumed: mixed in, a condition's later epochs had fewer seeds than its first ones,
    and nothing said so."""
    ablated = rows.groupby("trial_id")["epoch"].agg(lambda e: set(e.tolist()))
    missing = {}
    for folder in folders:
        if folder.name in ablated.index and (lacking := set(kept_checkpoint_epochs(folder)) - ablated[folder.name]):
            missing[folder.name] = sorted(lacking)
    if missing:
        sweep = folders[0].parent.parent
        shown = ", ".join(f"{t} (epochs {', '.join(map(str, e[:4]))}{' ...' if len(e) > 4 else ''})" for t, e in list(missing.items())[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        warn(
            f"{len(missing)} trial(s) with unfinished ablations, left out of the ablation tables: {shown}{more} "
            f"not yet ablated; to finish them: python -m orchestrator.ablate {sweep}"
        )
    return set(missing)


def normalised_auc(fraction: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under accuracy vs fraction ablated, divided by the area of a flat curve at its maximum."""
    order = np.argsort(fraction)
    x, y = fraction[order], accuracy[order]
    span, top = x[-1] - x[0], y.max()
    if span <= 0 or top <= 0:
        return float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (top * span))


def ablation_tables(folders: list[Path], trials: pd.DataFrame, warn: Warn) -> dict[str, pd.DataFrame]:
    rows = read_ablations(folders, warn)
    if rows is None:
        return {}
    condition = trials.set_index("trial_id")[["condition_id", "condition", *condition_fields()]]  # every field, not only alpha
    rows = rows[rows["trial_id"].isin(condition.index)]
    rows = rows[~rows["trial_id"].isin(unfinished_ablations(folders, rows, warn))]
    if rows.empty:
        return {}
    # One curve per trial: random draws averaged first, so seeds are the samples.
    per_trial = rows.groupby(["trial_id", "epoch", "stage", "selection", "k", "fraction"], as_index=False)["accuracy"].mean()
    per_trial = per_trial.join(condition, on="trial_id")
    curves = summarize(per_trial, [*KEYS, "k", "fraction"], ["accuracy"]).reset_index()
    aucs = (
        per_trial.groupby(["trial_id", *KEYS], sort=False)
        .apply(lambda g: normalised_auc(g["fraction"].to_numpy(), g["accuracy"].to_numpy()), include_groups=False)
        .rename("auc")
        .reset_index()
    )
    auc = summarize(aucs, KEYS, ["auc"]).reset_index()
    labels = condition.drop_duplicates("condition_id").set_index("condition_id")
    return {
        "ablation_curves.parquet": curves.join(labels, on="condition_id"),
        "ablation_auc.parquet": auc.join(labels, on="condition_id"),
    }


def curve_styles(measured: set[str]) -> tuple[list[tuple[str, str]], str]:
    """The line style of each selection measured, and the title that explains them: only those
    measured (random_batch, a new mask per batch, is measured only with ablation_random_masks
    per_batch or both; its legend entries and title words showed without it)."""
    styles = [(sel, style) for sel, style in (("topk", "-"), ("random", "--"), ("random_batch", ":")) if sel in measured]
    kinds = {"random": "dashed: fixed masks", "random_batch": "dotted: a new mask per batch"}
    words = ", ".join(w for sel, w in kinds.items() if sel in measured)
    return styles, "Ablating the most class-selective channels (solid) vs random channels" + (f" ({words})" if words else "")


def ablation_figures(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    if not {"ablation_curves.parquet", "condition_steps.parquet"} & tables.keys():
        return []  # nothing to draw: do not even import matplotlib
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    curves = tables.get("ablation_curves.parquet")
    if curves is not None and len(curves):
        stages = sorted(curves["stage"].unique())
        conds = list(dict.fromkeys(_in_alpha_order(curves)["condition"]))
        epochs = sorted(curves["epoch"].unique())
        shown = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
        fig = Figure(figsize=(4 * len(stages), 3.2 * len(conds)))
        axes = fig.subplots(len(conds), len(stages), squeeze=False, sharey=True)  # one accuracy scale: panels compare by eye
        colors = dict(zip(shown, colormaps["viridis"](np.linspace(0, 0.85, len(shown)))))
        selections, title = curve_styles(set(curves["selection"]))
        for i, cond in enumerate(conds):
            for j, stage in enumerate(stages):
                ax = axes[i][j]
                for epoch in shown:
                    for sel, style in selections:
                        c = curves[
                            (curves.condition == cond) & (curves.stage == stage) & (curves.epoch == epoch) & (curves.selection == sel)
                        ]
                        if c.empty:  # not measured here: no empty series in the legend
                            continue
                        c = c.sort_values("fraction")
                        ax.plot(c["fraction"], 100 * c["accuracy_mean"], style, color=colors[epoch], label=f"epoch {epoch} {sel}")
                _labels(ax, f"{cond}\nstage {stage}", "fraction of channels ablated per block", "test accuracy (%)")
        out.append(_finish(fig, axes[0][-1], title, folder / "ablation_curves.png"))
    auc = tables.get("ablation_auc.parquet")
    if auc is not None and len(auc):
        stages = sorted(auc["stage"].unique())
        fig = Figure(figsize=(4 * len(stages), 3.4))
        axes = fig.subplots(1, len(stages), squeeze=False, sharey=True)
        for j, stage in enumerate(stages):
            ax = axes[0][j]
            for (cond, sel), g in _in_alpha_order(auc[auc.stage == stage]).groupby(["condition", "selection"], sort=False):
                g = g.sort_values("epoch")
                yerr = [(g["auc_mean"] - g["auc_boot_low"]).fillna(0), (g["auc_boot_high"] - g["auc_mean"]).fillna(0)]
                ax.errorbar(g["epoch"], g["auc_mean"], yerr=yerr, linestyle={"topk": "-", "random": "--"}.get(sel, ":"),
                            marker="o", ms=3, label=f"{cond} {sel}")  # fmt: skip
            _labels(ax, f"stage {stage}", "epoch of the checkpoint", "normalised area under the ablation curve")
        title = "How much ablation costs over training (lower: the ablated channels matter more); 95% bootstrap intervals over seeds"
        out.append(_finish(fig, axes[0][-1], title, folder / "ablation_auc.png"))
    steps = tables.get("condition_steps.parquet")
    if steps is not None and len(steps):
        fig = Figure(figsize=(10, 3.6))
        axes = fig.subplots(1, 2)
        for cond, g in steps.groupby("condition", sort=False):
            g = g.sort_values("step")
            axes[0].plot(g["step"], g["csi_mean_mean"], label=cond)
            axes[1].plot(g["step"], 100 * g["test_acc_mean"], label=cond)
        axes[0].set_ylabel("csi_mean (test set)")
        axes[1].set_ylabel("test accuracy (%)")
        for ax in axes:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        out.append(_finish(fig, axes[1], "Early training at finer than epoch resolution (mean over seeds)", folder / "early_dynamics.png"))
    return out


def _in_alpha_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by alpha, then onset and offset (stable): panels and legends read from most negative alpha up."""
    keys = [k for k in ("alpha", "onset_epoch", "offset_epoch") if k in table.columns]
    return table.sort_values(keys, kind="stable", na_position="first") if keys else table


def _labels(ax: object, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)  # type: ignore[attr-defined]
    ax.set_xlabel(xlabel)  # type: ignore[attr-defined]
    ax.set_ylabel(ylabel)  # type: ignore[attr-defined]
    ax.grid(alpha=0.3)  # type: ignore[attr-defined]


def _finish(fig: object, legend_ax: object, title: str, path: Path) -> Path:
    """Legend, title, layout, then the collector's atomic PNG write."""
    from orchestrator.collect.figures import save_figure  # imports matplotlib: only when drawing

    legend_ax.legend(fontsize=7)  # type: ignore[attr-defined]
    fig.suptitle(title)  # type: ignore[attr-defined]
    fig.tight_layout()  # type: ignore[attr-defined]
    return save_figure(fig, path)  # type: ignore[arg-type]
