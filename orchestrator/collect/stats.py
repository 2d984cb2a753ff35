"""The collector's statistics: per-trial final rows, conditions, mean / std / sem / 95% CI over seeds.

Used by `python -m orchestrator.collect`. A *condition* is every trial field but the seed (and
the trial_id); its trials are its seeds. The 95% CI is mean +- t(0.975, n-1) * sem (Student t),
sem = std / sqrt(n) with the sample std (ddof=1); with one seed, std, sem and the CI are NaN.

The figures draw another interval, `<metric>_boot_low` / `_boot_high`: the 2.5 and 97.5 percentiles
of the mean over BOOT_RESAMPLES seeded bootstrap resamples of the seeds. It always lies between the
smallest and largest seed, so a band never runs past CSI 1 or 100% accuracy, as a Student t band
of three seeds did; with few seeds it is narrower than the t interval (it cannot know what it has
not seen), and the figures say which interval they draw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.collect.scan import trial_fields

METRICS = ("test_acc", "csi_mean")  # final-epoch metrics summarised per condition
EPOCH_METRICS = ("test_acc", "csi_mean", "train_loss")  # summarised per condition and epoch
STATS = ("mean", "std", "sem", "ci95_low", "ci95_high", "boot_low", "boot_high")
BOOT_RESAMPLES = 2_000
_BOOT_CHUNK = 2_048  # groups per matrix product (bounds memory at chunk x resamples floats)
SORT_FIRST = ("alpha", "onset_epoch", "offset_epoch", "model", "dataset")
PROVENANCE = ("attempts", "git_sha", "git_dirty", "host", "device", "started", "ended")


def condition_fields() -> list[str]:
    """The fields that make a condition: every trial field except trial_id and seed."""
    return [f for f in trial_fields() if f not in ("trial_id", "seed")]  # trial_fields() is cached


def condition_columns(trials: pd.DataFrame) -> pd.DataFrame:
    """Per condition_id (index, in trial order): its label and every condition field, for the tables
    of the analyses (ablations, representations, robustness) to carry as conditions.parquet does."""
    return trials.drop_duplicates("condition_id").set_index("condition_id")[["condition", *condition_fields()]]


def _abs_t_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with integer `df` (Abramowitz & Stegun 26.7.3-4, exact finite sums)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # s * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    total = 0.0  # 2/pi * (theta + s * (c + 2/3 c^3 + 2*4/(3*5) c^5 + ... up to c^(df-2)))
    if df > 1:
        term = total = math.cos(theta)
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
    return 2 / math.pi * (theta + s * total)


@functools.cache
def t_quantile_975(df: int) -> float:
    """t(0.975, df): the two-sided 95% Student t critical value (bisection on the exact CDF)."""
    lo, hi = 0.0, 1000.0  # t(0.975, 1) = 12.71 is the largest
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _abs_t_cdf(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def t975(n: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """t(0.975, n - 1) for sample sizes `n`, elementwise; NaN where n < 2."""
    n = np.asarray(n)
    return np.array([t_quantile_975(int(k) - 1) if k >= 2 else np.nan for k in n.ravel()], dtype=float).reshape(n.shape)


def summarize(df: pd.DataFrame, by: str | list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per group of `by`: n (rows) and, per metric, mean, std, sem, ci95_low, ci95_high.

    Groups keep their order of first appearance. NaN values of a metric are left out of its
    statistics (n still counts the rows).
    """
    g = df.groupby(by, sort=False, dropna=False)
    out = pd.DataFrame({"n": g.size()})
    for m in metrics:
        count, mean, std = g[m].count(), g[m].mean(), g[m].std(ddof=1)
        sem = std / np.sqrt(count)
        half = t975(count.to_numpy()) * sem
        out[f"{m}_mean"], out[f"{m}_std"], out[f"{m}_sem"] = mean, std, sem
        out[f"{m}_ci95_low"], out[f"{m}_ci95_high"] = mean - half, mean + half
        out[f"{m}_boot_low"], out[f"{m}_boot_high"] = bootstrap_band(df, g, m)
    return out


def bootstrap_band(df: pd.DataFrame, g: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per group of `g` (a groupby of `df`): the 95% bootstrap percentile interval of the mean of
    `metric` (NaN values left out; NaN for fewer than two values). Seeded, so a collect is
    reproducible; vectorised over the groups of equal size (one resample matrix per size)."""
    low, high = np.full(g.ngroups, np.nan), np.full(g.ngroups, np.nan)
    codes = g.ngroup().to_numpy()
    values = df[metric].to_numpy(dtype=float, na_value=np.nan)
    ok = ~np.isnan(values)
    codes, values = codes[ok], values[ok]
    order = np.argsort(codes, kind="stable")
    codes, values = codes[order], values[order]
    counts = np.bincount(codes, minlength=g.ngroups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for n in np.unique(counts[counts >= 2]):
        groups = np.flatnonzero(counts == n)
        rng = np.random.default_rng(int(n))
        weights = rng.multinomial(int(n), np.full(int(n), 1.0 / n), size=BOOT_RESAMPLES).T / n  # [n, B]
        for i in range(0, len(groups), _BOOT_CHUNK):
            chunk = groups[i : i + _BOOT_CHUNK]
            means = values[starts[chunk][:, None] + np.arange(n)] @ weights  # [G, B]
            low[chunk], high[chunk] = np.percentile(means, [2.5, 97.5], axis=1)
    return low, high


# ---- conditions --------------------------------------------------------------------------------
def to_pandas(table: pa.Table) -> pd.DataFrame:
    """`table` as pandas, int64 columns as nullable Int64 (offset_epoch null stays an integer)."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if _is_missing(v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def condition_id(key: dict[str, Any]) -> str:
    """Stable 12-hex-digit id of a condition (its fields, JSON, sorted keys)."""
    blob = json.dumps({k: _jsonable(v) for k, v in key.items()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return "none" if _is_missing(v) else str(v)


def varying_fields(conditions: pd.DataFrame) -> list[str]:
    """Condition fields whose value differs between conditions (alpha first)."""
    keys = condition_fields()
    as_text = conditions[keys].map(fmt)
    vary = [k for k in keys if as_text[k].nunique() > 1]
    return sorted(vary, key=lambda k: (k != "alpha", keys.index(k)))


def trial_sort_key(fields: dict[str, Any]) -> tuple:
    """Order of trials: alpha, onset, offset (none first), model, dataset, the other fields, seed."""
    return tuple(_sort_value(fields.get(k)) for k in _sort_order())


def written_sort_key(raw: dict[str, Any], trial_id: str) -> tuple:
    """`trial_sort_key` from a spec.json as written (load_spec), before it is checked: the same key
    for a spec the project wrote (spec.json holds every field; the rows call `lr` `base_lr`)."""
    return trial_sort_key({"base_lr" if k == "lr" else k: v for k, v in raw.items()} | {"trial_id": trial_id})


@functools.cache
def _sort_order() -> tuple[str, ...]:
    rest = [k for k in condition_fields() if k not in SORT_FIRST]
    return (*SORT_FIRST, *rest, "seed", "trial_id")


def _sort_value(v: Any) -> tuple:
    return (0,) if _is_missing(v) else (1, tuple(v) if isinstance(v, (list, tuple)) else v)


def trials_table(final: pd.DataFrame, totals: pd.DataFrame, final_layers: pd.DataFrame, status: dict[str, dict]) -> pd.DataFrame:
    """One row per done trial: its final epoch row, condition, totals, per-layer CSI, provenance.

    `final`: the final-epoch rows (trial fields, metrics, `_rank` = the trial's position, in
    order); `totals`: _rank, train_seconds_total, eval_seconds_total; `final_layers`: _rank,
    layer, csi_mean at the final epoch; `status`: status.json by trial_id. Keeps `_rank`.
    """
    ids = [condition_id(k) for k in final[condition_fields()].to_dict("records")]
    df = final.copy()
    df.insert(len(trial_fields()), "condition_id", ids)
    df = df.merge(totals, on="_rank", how="left").merge(layer_columns(final_layers), on="_rank", how="left")
    prov = pd.DataFrame([_provenance(status[t]) for t in df["trial_id"]], index=df.index)
    df = pd.concat([df, prov], axis=1)
    labels = condition_labels(df.drop_duplicates("condition_id"))
    df.insert(len(trial_fields()) + 1, "condition", df["condition_id"].map(labels))
    return df


def layer_columns(final_layers: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch layer CSI means as columns `csi_mean.<layer>` (layer order as written), by _rank."""
    order = list(dict.fromkeys(final_layers["layer"]))
    wide = final_layers.pivot(index="_rank", columns="layer", values="csi_mean")[order]
    wide.columns = [f"csi_mean.{name}" for name in order]
    return wide.reset_index()


def _provenance(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: status.get(k) for k in PROVENANCE}
    out["versions"] = json.dumps(status.get("versions"), sort_keys=True) if status.get("versions") else None
    return out


def condition_labels(conds: pd.DataFrame) -> dict[str, str]:
    """{condition_id: 'alpha=-10, onset_epoch=5'} from the fields that vary between conditions."""
    vary = varying_fields(conds)
    return {
        row["condition_id"]: ", ".join(f"{k}={fmt(row[k])}" for k in vary) or "all trials"
        for row in conds[["condition_id", *vary]].to_dict("records")
    }


def conditions_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per condition (order of `trials`): its fields, n, seeds, stats of METRICS, layer means."""
    head = trials.drop_duplicates("condition_id").set_index("condition_id")[["condition", *condition_fields()]]
    stats = summarize(trials, "condition_id", METRICS)
    seeds = trials.groupby("condition_id", sort=False)["seed"].agg(lambda s: sorted(s.tolist())).rename("seeds")
    layer_cols = [c for c in trials.columns if c.startswith("csi_mean.")]
    layer_means = trials.groupby("condition_id", sort=False)[layer_cols].mean()
    out = head.join(stats).join(seeds).join(layer_means)
    cols = ["condition", *condition_fields(), "n", "seeds"]
    return out[cols + [c for c in out.columns if c not in cols]].reset_index()


def condition_epochs_table(epochs: pd.DataFrame, trials: pd.DataFrame, key: str = "epoch") -> pd.DataFrame:
    """One row per (condition, epoch) (or per `key`, e.g. step): n and stats of EPOCH_METRICS over the seeds.

    `epochs`: _rank, epoch, alpha_active (step) and the metrics of every done trial's evaluations.
    """
    df = epochs.assign(condition_id=epochs["_rank"].map(trials.set_index("_rank")["condition_id"]))
    stats = summarize(df, ["condition_id", key], EPOCH_METRICS)
    firsts = ["alpha_active"] if key == "epoch" else ["epoch", "alpha_active"]
    for col in reversed(firsts):
        stats.insert(0, col, df.groupby(["condition_id", key], sort=False)[col].first())
    return _with_condition(stats.reset_index(), trials)


def condition_layers_table(final_layers: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, layer) at the final epoch: n and stats of the layer's csi_mean.

    `final_layers`: _rank, layer, n_units, csi_mean of every done trial's final epoch.
    """
    df = final_layers.assign(condition_id=final_layers["_rank"].map(trials.set_index("_rank")["condition_id"]))
    stats = summarize(df, ["condition_id", "layer"], ["csi_mean"])
    stats.insert(0, "n_units", df.groupby(["condition_id", "layer"], sort=False)["n_units"].first())
    return _with_condition(stats.reset_index(), trials)


def _with_condition(stats: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """`stats` (keyed by condition_id) with the condition's label and fields in front, in trial order."""
    head = trials.drop_duplicates("condition_id")[["condition_id", "condition", *condition_fields()]]
    order = {c: i for i, c in enumerate(head["condition_id"])}
    stats = stats.sort_values("condition_id", key=lambda s: s.map(order), kind="stable")
    return head.merge(stats, on="condition_id", how="right").reset_index(drop=True)
