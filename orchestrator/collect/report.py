"""The collector's markdown report: counts, provenance, the condition table, figures, exclusions.

Used by `python -m orchestrator.collect`, which writes it to <sweep>/summary/report.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.collect.stats import condition_fields, fmt, varying_fields

MAX_EXCLUDED_ROWS = 50
TABLES = {
    "trials.parquet": "one row per done trial: final epoch, condition, per-layer CSI, provenance",
    "epochs.parquet": "every done trial x epoch (the trials' epochs.parquet rows)",
    "layers.parquet": "every done trial x epoch x layer (the trials' layers.parquet rows)",
    "conditions.parquet": "one row per condition: n, mean / std / sem / 95% CI of final test_acc and csi_mean",
    "condition_epochs.parquet": "one row per condition x epoch: the same statistics over training",
    "condition_layers.parquet": "one row per condition x layer: statistics of the final layer CSI",
    "excluded.parquet": "trials not aggregated (failed, unfinished, unreadable) and why",
}


# One screen on the tables' column names, so pandas users need not open the docs (docs/results.md has every column).
LEGEND = [
    "- Accuracies (`test_acc`, `train_acc`, `test_top5`) are **fractions** (0.926 = 92.6%); this report shows percent.",
    "- `csi_mean`: a trial's class selectivity index averaged over its tracked units (each layer weighs equally), 0 to 1.",
    "- `csi_mean.<layer>`: the same for one layer (`trials.parquet`, `conditions.parquet`).",
    "- `<metric>_mean`, `_std`, `_sem`, `_ci95_low`, `_ci95_high`: statistics **over the seeds** of a condition:",
    "  `csi_mean_mean` is the mean over seeds of each trial's `csi_mean`; `test_acc_ci95_high` the upper 95% bound of test_acc.",
    "- `n`: trials (seeds) in the condition; `seeds`: which; `condition`: a readable label of its fields, `condition_id` its key.",
    "- `epoch`: 0 is the initialised network; `epoch_end` false marks a mid-epoch (early dynamics) evaluation at `step`.",
    "- `alpha_active`: the regularizer strength in force that epoch (0 before `onset_epoch`); `lr`: that epoch's learning rate.",
    "- `train_selectivity`: the regularizer's selectivity term (null where it was off); `train_ce`: cross-entropy alone.",
]


def _cell(v: Any) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def _pm(row: pd.Series, metric: str, scale: float, digits: int) -> str:
    """'mean ± CI half-width' of `metric` in a condition row; '(n=1)' where there is no CI."""
    mean, high = row[f"{metric}_mean"] * scale, row[f"{metric}_ci95_high"] * scale
    if math.isnan(high):
        return f"{mean:.{digits}f} (n=1)" if not math.isnan(mean) else "-"
    return f"{mean:.{digits}f} ± {high - mean:.{digits}f}"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def conditions_markdown(conds: pd.DataFrame) -> list[str]:
    vary = varying_fields(conds)
    header = [*vary, "n", "test acc (%)", "csi_mean"]
    rows = [
        [*(_cell(r[k]) for k in vary), str(r["n"]), _pm(r, "test_acc", 100.0, 2), _pm(r, "csi_mean", 1.0, 4)] for _, r in conds.iterrows()
    ]
    return _table(header, rows)


def _provenance(trials: pd.DataFrame) -> list[str]:
    shas = trials["git_sha"].fillna("unknown").value_counts()
    dirty = int(trials["git_dirty"].fillna(False).astype(bool).sum())
    code = ", ".join(f"`{str(s)[:10]}` ({n} trials)" for s, n in shas.items())
    lines = [f"- Code: {code}" + (f"; {dirty} from a tree with uncommitted changes" if dirty else "")]
    if len(shas) > 1:
        lines.append(f"- **Warning: the trials come from {len(shas)} code versions.**")
    for col, name in (("host", "Hosts"), ("device", "Devices")):
        vals = trials[col].fillna("unknown").value_counts()
        lines.append(f"- {name}: " + ", ".join(f"{v} ({n})" for v, n in vals.head(5).items()) + (" ..." if len(vals) > 5 else ""))
    return lines


def _excluded(excluded: pd.DataFrame) -> list[str]:
    if excluded.empty:
        return ["None: every trial is done and readable."]
    rows = [
        [f"`{r['trial_id']}`", r["state"], _cell(r["alpha"]), _cell(r["seed"]), _cell(r["reason"])]
        for _, r in excluded.head(MAX_EXCLUDED_ROWS).iterrows()
    ]
    more = len(excluded) - MAX_EXCLUDED_ROWS
    tail = ["", f"... and {more} more in `excluded.parquet`."] if more > 0 else []
    return _table(["trial_id", "state", "alpha", "seed", "reason"], rows) + tail


def render(
    sweep: Path, trials: pd.DataFrame, conds: pd.DataFrame, excluded: pd.DataFrame,
    counts: dict[str, int], figures: list[Path], when: str,
) -> str:  # fmt: skip
    """The report's markdown text; figure paths are written relative to the summary folder."""
    fixed = [k for k in condition_fields() if k not in varying_fields(conds) and k != "sweep"]
    counted = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"Collected {when} from `{sweep}`: {counted}. Only done trials are in the tables and figures.",
        "",
        "- Fixed: " + ", ".join(f"{k}={_cell(conds[k].iloc[0])}" for k in fixed),
        *_provenance(trials),
        "",
        "## Conditions",
        "",
        "Final epoch; mean ± 95% CI half-width over seeds (Student t, n - 1 degrees of freedom).",
        "",
        *conditions_markdown(conds),
        "",
    ]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})\n" for p in figures]
    lines += ["## Excluded trials", "", *_excluded(excluded), "", "## Tables", ""]
    lines += [f"- `{name}`: {text}" for name, text in TABLES.items()]
    lines += ["", "## Reading the columns", "", *LEGEND]
    return "\n".join(lines) + "\n"
