"""Which differences between configurations are real: fold-paired statistics.

    python -m study.stats PATH [--metric M ...] [--rope R] [--folds K] [--out OUT.csv]
    (the command line: study/stats/cli.py)

Every configuration of a study is trained and validated on the same folds, so two of them
are compared fold by fold: d_j = x_trial_j - x_best_j on the n folds they share. The folds
are not independent samples (their training sets overlap), and the naive paired t-test that
treats them as such finds differences that are not there. Two corrections for this overlap:

* the corrected resampled t-test of Nadeau & Bengio (2003, "Inference for the
  generalization error", Machine Learning 52:239-281), which inflates the variance of the
  mean difference by n_test/n_train; for repeated k-fold cross-validation, Bouckaert & Frank
  (2004, "Evaluating the replicability of significance tests for comparing learning
  algorithms", PAKDD) use all repeats x k paired results with the same correction;
* its Bayesian counterpart, the correlated t-test of Corani & Benavoli (2015, "A Bayesian
  approach for comparing cross-validated algorithms on multiple data sets", Machine Learning
  100:285-304; Benavoli et al. 2017, "Time for a change", JMLR 18(77)): the posterior of the
  mean difference is a Student t with the same scale, and a region of practical equivalence
  (the rope, +-0.01 by default) says which differences are too small to matter.

The numbers come from pure pandas/scipy functions (`paired_test`, `compare_to_best`,
`study_per_fold`); printing comes after them. This module imports neither torch, ray, optuna
nor mtl's training code (only its torch-free schema), so that `python -m study.stats`
starts fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mtl import METRIC_LEVELS, to_arrow, write_csv, write_parquet

STATS_COLUMNS = (
    "trial_id",
    "metric",
    "n_folds",
    "mean",
    "std",
    "diff_vs_best",
    "ci_low",
    "ci_high",
    "p_value",
    "p_worse",
    "p_rope",
    "p_better",
    "is_best",
)
EXTRA_COLUMNS = ("verdict", "half_width")
DEFAULT_ROPE = 0.01
CONFIDENCE = 0.95
# The metrics a study compares, in this order, where present in the per-fold table and not
# all NaN (iou is left out: it follows Dice).
STUDY_METRICS = tuple(m for m in METRIC_LEVELS if m != "iou")
KEY_COLUMNS = ("trial_id", "repeat", "fold")
# Per-fold differences whose spread is below this are taken as constant: differences of
# equal-looking floats (0.8 - 0.7 and 0.9 - 0.8) are not exactly equal.
CONSTANT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PairedTest:
    """One fold-paired comparison (trial - best); see `paired_test`."""

    n: int  # paired folds
    mean_diff: float
    scale: float  # corrected standard error of mean_diff, also the posterior's scale
    df: int
    t: float
    p_value: float  # two-sided, corrected resampled t-test
    ci_low: float
    ci_high: float
    p_worse: float  # posterior P(delta < -rope)
    p_rope: float  # posterior P(-rope <= delta <= rope)
    p_better: float  # posterior P(delta > rope)


def paired_test(
    diffs, ratio: float, rope: float = DEFAULT_ROPE, confidence: float = CONFIDENCE
) -> PairedTest:
    """The corrected resampled t-test and the Bayesian correlated t-test on paired differences.

    diffs: the per-fold differences (trial - best), NaN ones dropped; ratio: n_test/n_train,
    1/(k-1) for k-fold cross-validation, also when the k folds are repeated (Bouckaert &
    Frank 2004: n = repeats x k differences, the same ratio).

    With mean m and sample variance v (ddof=1) of the n differences, the standard error is
    corrected for the overlap of the training sets (Nadeau & Bengio 2003):
    scale = sqrt(v * (1/n + ratio)); t = m / scale on n - 1 degrees of freedom, two-sided p,
    and the interval m +- t_{(1+confidence)/2, n-1} * scale. The posterior of the mean
    difference of the correlated t-test (Corani & Benavoli 2015; Benavoli et al. 2017) is
    Student-t(n - 1, loc=m, scale=scale); it is baycomp's CorrelatedTTest with rho = 1/k,
    since rho/(1-rho) = 1/(k-1). p_worse = P(delta < -rope), p_better = P(delta > rope),
    p_rope the rest.

    Degenerate cases, reported rather than raised, so that a table of many comparisons
    always has a row for each:

    * fewer than 2 differences: there is no variance, so every statistic is NaN; mean_diff
      is the single difference when n == 1 (NaN when n == 0), scale and t are NaN;
    * zero variance, zero mean (identical trials; the best compared with itself): the limit
      of the t as its scale goes to 0 is a point mass at 0: t = 0, p_value = 1, interval
      [0, 0], p_rope = 1, p_worse = p_better = 0;
    * zero variance, non-zero mean (every fold differs by the same amount): |t| is infinite;
      the limit is reported: p_value = 0, interval [m, m], and the posterior a point mass at
      m, so exactly one of p_worse (m < -rope), p_better (m > rope) and p_rope is 1.

    "Zero" is up to CONSTANT_TOLERANCE on the differences' spread and mean.
    """
    if not ratio >= 0:
        raise ValueError(f"ratio (n_test/n_train) must be >= 0, got {ratio}")
    if not rope >= 0:
        raise ValueError(f"rope must be >= 0, got {rope}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2:
        return _undefined(n, float(d[0]) if n == 1 else math.nan)
    mean = float(d.mean())
    if np.ptp(d) <= CONSTANT_TOLERANCE:
        return _constant(n, mean, rope)
    scale = math.sqrt(float(d.var(ddof=1)) * (1 / n + ratio))
    df = n - 1
    t = mean / scale
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, df)) * scale
    posterior = scipy_stats.t(df, loc=mean, scale=scale)
    p_worse = float(posterior.cdf(-rope))
    p_better = float(posterior.sf(rope))
    return PairedTest(
        n=n,
        mean_diff=mean,
        scale=scale,
        df=df,
        t=t,
        p_value=float(2 * scipy_stats.t.sf(abs(t), df)),
        ci_low=mean - half,
        ci_high=mean + half,
        p_worse=p_worse,
        # With rope = 0 the two tails sum to 1 up to rounding: keep p_rope a probability.
        p_rope=min(max(1.0 - p_worse - p_better, 0.0), 1.0),
        p_better=p_better,
    )


def _undefined(n: int, mean_diff: float) -> PairedTest:
    nan = math.nan
    return PairedTest(n, mean_diff, nan, max(n - 1, 0), nan, nan, nan, nan, nan, nan, nan)


def _constant(n: int, mean: float, rope: float) -> PairedTest:
    """The limit of the tests as the differences' variance goes to 0 (see `paired_test`)."""
    if abs(mean) <= CONSTANT_TOLERANCE:
        return PairedTest(n, 0.0, 0.0, n - 1, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    worse, better = float(mean < -rope), float(mean > rope)
    return PairedTest(
        n=n,
        mean_diff=mean,
        scale=0.0,
        df=n - 1,
        t=math.copysign(math.inf, mean),
        p_value=0.0,
        ci_low=mean,
        ci_high=mean,
        p_worse=worse,
        p_rope=1.0 - worse - better,
        p_better=better,
    )


def verdict(p_worse: float, p_rope: float, threshold: float = 0.95) -> str:
    """'worse' if p_worse >= threshold, 'equivalent' if p_rope >= threshold, else
    'undecided' (also when either is NaN: too few shared folds to say).

    The decision rule of Benavoli et al. (2017): a posterior probability of at least 0.95 in
    one region decides; the folds cannot decide anything else.
    """
    if p_worse >= threshold:
        return "worse"
    if p_rope >= threshold:
        return "equivalent"
    return "undecided"


def compare_to_best(
    per_fold: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    folds_per_repeat: int | None = None,
    rope: float = DEFAULT_ROPE,
) -> pd.DataFrame:
    """Every trial against the best trial of each metric, paired by fold.

    per_fold: one row per trial and fold, columns `trial_id`, `fold`, optionally `repeat`,
    and one numeric column per metric; folds are matched by (repeat, fold) when there is a
    `repeat` column, else by fold. metrics: default every numeric column but the keys.
    folds_per_repeat: k, default the number of distinct folds; the correction is
    n_test/n_train = 1/(k-1) (Nadeau & Bengio 2003; Bouckaert & Frank 2004 for repeats).

    The best trial of a metric has the highest mean over its own finite values (the first
    in order of appearance among ties). Each trial, the best included, gets one row per
    metric: n_folds (the folds it shares with the best, both values finite: the n of the
    test), mean and std (ddof=1) of its own finite values, and `paired_test` of its
    differences from the best (the best's own row is the identical-trials case: diff 0,
    interval [0, 0], p_value 1, p_rope 1). A trial without a finite value gets NaN
    statistics; a metric that is NaN for every trial is skipped. Columns: STATS_COLUMNS,
    `verdict` ("best", or `verdict`) and `half_width` of the interval. Rows by metric (in
    the order of `metrics`), then mean descending, the best first.
    """
    if not rope >= 0:
        raise ValueError(f"rope must be >= 0, got {rope}")
    per_fold = validate_per_fold(per_fold)
    metrics = _chosen_metrics(per_fold, metrics)
    k = per_fold["fold"].nunique() if folds_per_repeat is None else folds_per_repeat
    if k < 2:
        raise ValueError(
            f"the correction n_test/n_train = 1/(k-1) needs at least 2 folds per repeat, got {k}"
        )
    ratio = 1 / (k - 1)
    keys = [c for c in ("repeat", "fold") if c in per_fold]
    trials = pd.unique(per_fold["trial_id"])
    rows = []
    for metric in metrics:
        # One row per trial (in order of appearance), one column per fold key.
        wide = per_fold.pivot(index="trial_id", columns=keys, values=metric)
        wide = wide.reindex(trials).astype(float)
        wide = wide.where(np.isfinite(wide))  # an infinite value is as unusable as a NaN
        means = wide.mean(axis=1)
        if means.isna().all():
            continue
        rows += _metric_rows(wide, metric, str(means.idxmax()), ratio, rope)
    return _stats_frame(rows, rope)


def _metric_rows(wide: pd.DataFrame, metric: str, best: str, ratio: float, rope: float):
    best_values = wide.loc[best]
    rows = []
    for trial, values in wide.iterrows():
        shared = values.notna() & best_values.notna()
        test = paired_test((values[shared] - best_values[shared]).to_numpy(), ratio, rope)
        own = values.dropna()
        rows.append(
            {
                "trial_id": str(trial),
                "metric": metric,
                "n_folds": test.n,
                "mean": own.mean(),
                "std": own.std(ddof=1),
                "diff_vs_best": test.mean_diff,
                "ci_low": test.ci_low,
                "ci_high": test.ci_high,
                "p_value": test.p_value,
                "p_worse": test.p_worse,
                "p_rope": test.p_rope,
                "p_better": test.p_better,
                "is_best": trial == best,
            }
        )
    # Best first, then mean descending, trials without a mean last; the sort is stable, so
    # equal means keep their order of appearance.
    rows.sort(key=lambda r: (not r["is_best"], math.isnan(r["mean"]), -np.nan_to_num(r["mean"])))
    assert sum(r["is_best"] for r in rows) == 1
    return rows


def _stats_frame(rows: list[dict], rope: float) -> pd.DataFrame:
    stats = pd.DataFrame(rows, columns=list(STATS_COLUMNS))
    floats = [c for c in STATS_COLUMNS if c not in ("trial_id", "metric", "n_folds", "is_best")]
    stats = stats.astype(
        {"trial_id": str, "metric": str, "n_folds": int, "is_best": bool}
        | dict.fromkeys(floats, float)
    )
    verdicts = [
        "best" if best else verdict(worse, in_rope)
        for best, worse, in_rope in zip(stats.is_best, stats.p_worse, stats.p_rope, strict=True)
    ]
    stats["verdict"] = pd.Series(verdicts, index=stats.index, dtype=str)
    stats["half_width"] = (stats.ci_high - stats.ci_low) / 2
    # The rope the verdicts were made with, for `summary_sentence`.
    stats.attrs["rope"] = float(rope)
    return stats


def validate_per_fold(per_fold: pd.DataFrame) -> pd.DataFrame:
    """per_fold with str trial ids, after the checks every input gets (see `read_per_fold`)."""
    for column in ("trial_id", "fold"):
        if column not in per_fold:
            raise ValueError(f"the per-fold table has no {column!r} column")
    if per_fold.empty:
        raise ValueError("the per-fold table is empty")
    per_fold = per_fold.assign(trial_id=per_fold["trial_id"].astype(str))
    keys = [c for c in KEY_COLUMNS if c in per_fold]
    duplicated = per_fold.duplicated(keys)
    if duplicated.any():
        first = per_fold[duplicated.to_numpy()].iloc[0]  # positional: the index may repeat
        where = ", ".join(f"{c} {_show(first[c])}" for c in keys[1:])
        raise ValueError(f"trial {first['trial_id']!r} has more than one row for {where}")
    if not _numeric_metrics(per_fold):
        raise ValueError("the per-fold table has no numeric metric column")
    return per_fold


def _show(value) -> str:
    """A key as the user wrote it: strings quoted, numbers plain (not np.int64(2))."""
    return repr(value) if isinstance(value, str) else str(value)


def _numeric_metrics(per_fold: pd.DataFrame) -> list[str]:
    return [c for c in per_fold if c not in KEY_COLUMNS and _is_numeric(per_fold[c])]


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _chosen_metrics(per_fold: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    available = _numeric_metrics(per_fold)
    if metrics is None:
        return available
    if isinstance(metrics, str):  # a single name is a sequence of letters: not what is meant
        metrics = [metrics]
    for metric in metrics:
        if metric not in per_fold or metric in KEY_COLUMNS:
            raise ValueError(
                f"unknown metric {metric!r}; available: {', '.join(map(str, available))}"
            )
        if metric not in available:
            raise ValueError(
                f"column {metric!r} is not numeric ({per_fold[metric].dtype}): not a metric"
            )
    return list(dict.fromkeys(metrics))


def detectable_difference(stats: pd.DataFrame, metric: str) -> float:
    """Median half-width of the 95% interval over the non-best rows of `metric` (NaN if none):
    a difference smaller than this is not distinguishable from zero with these folds."""
    rows = stats[(stats.metric == metric) & ~stats.is_best.astype(bool)]
    return float(((rows.ci_high - rows.ci_low) / 2).median())


def summary_sentence(
    stats: pd.DataFrame, metric: str, title: str | None = None, *, rope: float | None = None
) -> str:
    """One sentence on `metric`'s rows of `compare_to_best`, e.g. "4 of 6 other configurations
    cannot be told apart from the best (pattern accuracy, 5 folds): 1 equivalent within
    ±0.01, 3 undecided, 2 worse; the smallest difference these folds could detect is about
    0.04."

    title: the metric's name in the sentence (default the column name); the folds are the
    median n_folds of the other configurations; rope: the one the verdicts were made with
    (default the one `compare_to_best` recorded, else DEFAULT_ROPE).
    """
    rows = stats[stats.metric == metric]
    if rows.empty:
        raise ValueError(f"no statistics for metric {metric!r}")
    others = rows[~rows.is_best.astype(bool)]
    if others.empty:
        return "Only one configuration: nothing to compare."
    rope = stats.attrs.get("rope", DEFAULT_ROPE) if rope is None else rope
    verdicts = (
        others["verdict"]
        if "verdict" in others
        else pd.Series([verdict(w, r) for w, r in zip(others.p_worse, others.p_rope, strict=True)])
    )
    counts = verdicts.value_counts()
    equivalent, undecided, worse = (
        int(counts.get(v, 0)) for v in ("equivalent", "undecided", "worse")
    )
    folds = float(others.n_folds.median())
    folds_text = f"{folds:g} fold{'' if folds == 1 else 's'}"
    configurations = "configuration" if len(others) == 1 else "configurations"
    sentence = (
        f"{equivalent + undecided} of {len(others)} other {configurations} cannot be told apart "
        f"from the best ({title or metric}, {folds_text}): {equivalent} equivalent within "
        f"±{rope:g}, {undecided} undecided, {worse} worse"
    )
    detectable = detectable_difference(stats, metric)
    if math.isnan(detectable):
        return sentence + "; too few shared folds to say how small a difference they could detect."
    return (
        sentence + f"; the smallest difference these folds could detect is about {detectable:.2g}."
    )


def write_stats(stats: pd.DataFrame, folder: Path, study: str | None = None) -> list[Path]:
    """stats.parquet and stats.csv in folder, each written atomically; `study`: the study's
    name, the table's `study` column."""
    paths = [Path(folder) / "stats.parquet", Path(folder) / "stats.csv"]
    for path in paths:
        write_table(stats, path, study or Path(folder).resolve().name)
    return paths


def write_table(stats: pd.DataFrame, path: Path, study: str | None = None) -> None:
    """CSV, or Parquet (typed: mtl.tables' stats schema) by a .parquet suffix, atomically (a
    reader never sees half a file)."""
    if Path(path).suffix.lower() == ".parquet":
        write_parquet(stats, path, "stats", study)
    else:  # the same columns as the Parquet file
        write_csv(to_arrow(stats, "stats", study).to_pandas(), path)
