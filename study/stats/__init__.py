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

The best of each metric is chosen on the folds trials share (`choose_best`): a mean over a
trial's own folds flatters one that lacks a hard fold, so no trial may be established better
than the best on the folds they share.

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
from typing import NoReturn

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
    "missing_folds",
)
DEFAULT_ROPE = 0.01
CONFIDENCE = 0.95
# A posterior probability of at least this in one region decides (Benavoli et al. 2017).
DECISION = 0.95
# The metrics a study compares, in this order, where present in the per-fold table and not
# all NaN (iou is left out: it follows Dice).
STUDY_METRICS = tuple(m for m in METRIC_LEVELS if m != "iou")
KEY_COLUMNS = ("trial_id", "repeat", "fold")
# How an error message names each key of a row.
KEY_NAMES = {"trial_id": "trial", "repeat": "repeat", "fold": "fold"}
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


def verdict(
    p_worse: float, p_rope: float, p_better: float = math.nan, *, threshold: float = DECISION
) -> str:
    """'worse' if p_worse >= threshold, 'equivalent' if p_rope >= threshold, 'better' if
    p_better >= threshold, else 'undecided' (also when they are NaN: too few shared folds to
    say).

    The decision rule of Benavoli et al. (2017): a posterior probability of at least 0.95 in
    one region decides; the folds cannot decide anything else. The three regions are
    disjoint, so at most one of them reaches 0.95. `better` means that the configuration
    beats the best on the folds they share: `compare_to_best` chooses its best so that this
    happens only where "established better" goes round in a circle (see `choose_best`).
    """
    if p_worse >= threshold:
        return "worse"
    if p_rope >= threshold:
        return "equivalent"
    if p_better >= threshold:
        return "better"
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
    `repeat` column, else by fold. metrics: default every floating-point column but the keys
    (see `validate_per_fold`; integer columns, counts such as a test-set size `n`, only when
    named here). folds_per_repeat: k, default `infer_folds_per_repeat` (the number of
    distinct folds within a repeat); the correction is n_test/n_train = 1/(k-1) (Nadeau &
    Bengio 2003; Bouckaert & Frank 2004 for repeats).

    The best trial of a metric is `choose_best`'s: the highest mean over its own values,
    unless another trial is established better than it on the folds they share. Each trial,
    the best included, gets one row per metric: n_folds (the folds it shares with the best,
    both values present: the n of the test), mean and std (ddof=1) of its own values,
    `paired_test` of its differences from the best (the best's own row is the
    identical-trials case: diff 0, interval [0, 0], p_value 1, p_rope 1), and missing_folds:
    the folds of the cross-validation (every (repeat, fold) of the table, at least k x
    repeats) where it has no value. A trial without a value gets NaN statistics; a metric
    that is NaN for every trial is skipped. Columns: STATS_COLUMNS, `verdict` ("best", or
    `verdict`) and `half_width` of the interval. Rows by metric (in the order of `metrics`),
    then the best first and mean descending.
    """
    if not rope >= 0:
        raise ValueError(f"rope must be >= 0, got {rope}")
    per_fold = validate_per_fold(per_fold, metrics)
    metrics = _chosen_metrics(per_fold, metrics)
    k = infer_folds_per_repeat(per_fold) if folds_per_repeat is None else folds_per_repeat
    if k < 2:
        raise ValueError(
            f"the correction n_test/n_train = 1/(k-1) needs at least 2 folds per repeat, got {k}"
        )
    ratio = 1 / (k - 1)
    keys = [c for c in ("repeat", "fold") if c in per_fold]
    repeats = per_fold["repeat"].nunique() if "repeat" in per_fold else 1
    # Folds no trial has are missing too: a table of 3 folds of a 5-fold cross-validation.
    folds = max(len(per_fold[keys].drop_duplicates()), k * repeats)
    trials = pd.unique(per_fold["trial_id"])
    rows = []
    for metric in metrics:
        # One row per trial (in order of appearance), one column per fold key.
        wide = per_fold.pivot(index="trial_id", columns=keys, values=metric)
        wide = wide.reindex(trials).astype(float)
        if wide.isna().all(axis=None):
            continue
        best, tests = choose_best(wide, ratio, rope)
        rows += _metric_rows(wide, metric, best, tests, folds)
    return _stats_frame(rows, rope)


def choose_best(
    wide: pd.DataFrame, ratio: float, rope: float = DEFAULT_ROPE, threshold: float = DECISION
) -> tuple[str, dict[str, PairedTest]]:
    """(the best trial, each trial's `paired_test` against it) of one metric; wide: one row
    per trial, one column per fold, NaN where a trial has no value.

    The rule: start from the highest mean over each trial's own folds (the first in order
    of appearance among ties); while some trial not yet chosen is established better than
    the current best on the folds they share (P(better) >= threshold, the `worse` rule
    mirrored), the one of them with the largest mean difference becomes the best. A mean
    over its own folds favours a trial that lacks a hard fold; paired on the folds both
    have, the comparison is fair. Each trial is chosen at most once, so the search ends
    after at most as many steps as there are trials. It ends with no trial established
    better than the best, unless being better goes round in a circle (b beats a on their
    shared folds, c beats b on theirs, a beats c on theirs: possible only with missing
    folds); then a trial chosen before keeps its verdict `better`, the circle in plain sight.
    """
    means = wide.mean(axis=1)
    best = str(means.idxmax())
    chosen = {best}
    while True:
        tests = {
            str(trial): paired_test(_differences(values, wide.loc[best]), ratio, rope)
            for trial, values in wide.iterrows()
        }
        better = [t for t, test in tests.items() if t not in chosen and test.p_better >= threshold]
        if not better:
            return best, tests
        best = max(better, key=lambda t: tests[t].mean_diff)  # the first of equal ones
        chosen.add(best)


def _differences(values: pd.Series, best_values: pd.Series) -> np.ndarray:
    """values - best_values on the folds where both have a value."""
    shared = values.notna() & best_values.notna()
    return (values[shared] - best_values[shared]).to_numpy()


def _metric_rows(
    wide: pd.DataFrame, metric: str, best: str, tests: dict[str, PairedTest], folds: int
) -> list[dict]:
    rows = []
    for trial, values in wide.iterrows():
        test, own = tests[str(trial)], values.dropna()
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
                "is_best": str(trial) == best,
                "missing_folds": folds - len(own),
            }
        )
    # Best first, then mean descending, trials without a mean last; the sort is stable, so
    # equal means keep their order of appearance.
    rows.sort(key=lambda r: (not r["is_best"], math.isnan(r["mean"]), -np.nan_to_num(r["mean"])))
    assert sum(r["is_best"] for r in rows) == 1
    return rows


def _stats_frame(rows: list[dict], rope: float) -> pd.DataFrame:
    stats = pd.DataFrame(rows, columns=list(STATS_COLUMNS))
    counts = ("n_folds", "missing_folds")
    floats = [c for c in STATS_COLUMNS if c not in ("trial_id", "metric", "is_best", *counts)]
    stats = stats.astype(
        {"trial_id": str, "metric": str, "is_best": bool}
        | dict.fromkeys(counts, int)
        | dict.fromkeys(floats, float)
    )
    verdicts = [
        "best" if best else verdict(worse, in_rope, better)
        for best, worse, in_rope, better in zip(
            stats.is_best, stats.p_worse, stats.p_rope, stats.p_better, strict=True
        )
    ]
    stats["verdict"] = pd.Series(verdicts, index=stats.index, dtype=str)
    stats["half_width"] = (stats.ci_high - stats.ci_low) / 2
    # The rope the verdicts were made with, for `summary_sentence`.
    stats.attrs["rope"] = float(rope)
    return stats


def infer_folds_per_repeat(per_fold: pd.DataFrame) -> int:
    """k of a per-fold table: the number of distinct folds within a repeat (of every trial
    together), or of the table without a `repeat` column.

    Counted within each repeat, fold labels may start again in every repeat (0..4, 0..4,
    ...) or run on across them (0..4, 5..9, ...): both give k = 5. Every repeat must hold the
    same number of folds; a repeat that does not is an error that names it.
    """
    if "repeat" not in per_fold:
        return int(per_fold["fold"].nunique())
    counts = per_fold.groupby("repeat", sort=True)["fold"].nunique()
    # The most common number of folds (of equally common ones, the first repeat's) is k;
    # the first repeat with another number is the one to name.
    usual = max(dict.fromkeys(counts), key=list(counts).count)
    odd = counts[counts != usual]
    if len(odd):
        raise ValueError(
            f"repeat {_show(odd.index[0])} has {odd.iloc[0]} folds, repeat "
            f"{_show(counts[counts == usual].index[0])} has {usual}: every repeat must hold the "
            "same k folds (fold labels starting again in each repeat, or numbered on across "
            "repeats); give k (--folds) if some are missing from every trial"
        )
    return int(usual)


def validate_per_fold(
    per_fold: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    row_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """per_fold with str trial ids and numeric metric columns, after the checks every input
    gets (see `read_per_fold`); errors are ValueErrors that name the row.

    * `trial_id` and `fold` columns, at least one row, no empty key (trial_id, fold, and
      repeat where there is a column) and no (trial, repeat, fold) twice;
    * the metric columns: `metrics`, or by default every column but the keys that holds a
      number (a column of text only, a label or a configuration, is not a metric; nor a
      bool column). An empty cell (NaN, None, "") is a missing value; any other cell of a
      metric column must be a finite number: text or an infinity is an error naming the
      row, trial, fold and column. Text in a column that is not among `metrics` is left
      alone. Metric columns of text that all reads as numbers come back as numbers.

    row_names: what the messages call each row (e.g. "line 7" of a CSV), default "row i"
    (0-based position).
    """
    for column in ("trial_id", "fold"):
        if column not in per_fold:
            raise ValueError(f"the per-fold table has no {column!r} column")
    if per_fold.empty:
        raise ValueError("the per-fold table is empty")
    if row_names is None:
        row_names = [f"row {i}" for i in range(len(per_fold))]
    _check_keys(per_fold, row_names)
    per_fold = per_fold.assign(trial_id=per_fold["trial_id"].astype(str))
    _check_duplicates(per_fold, row_names)
    if metrics is not None:
        _chosen_metrics(per_fold, metrics, checked=False)  # unknown names first
    chosen = set(_as_list(metrics)) if metrics is not None else None
    for column in per_fold.columns:
        if column in KEY_COLUMNS or (chosen is not None and column not in chosen):
            continue
        numbers = _metric_values(per_fold, column, row_names, named=chosen is not None)
        if numbers is not None:
            per_fold[column] = numbers
    if not _chosen_metrics(per_fold, metrics):
        raise ValueError(
            "the per-fold table has no numeric metric column (an integer column, a count, "
            "is compared only when named as a metric)"
        )
    return per_fold


def _check_keys(per_fold: pd.DataFrame, row_names: Sequence[str]) -> None:
    """Every row has a trial, a fold (and a repeat, with that column): an empty one would
    count in a mean while no fold says so."""
    for column in (c for c in KEY_COLUMNS if c in per_fold):
        empty = _empty_cells(per_fold[column])
        if empty.any():
            position = int(np.flatnonzero(empty.to_numpy())[0])
            needed = [f"a {c}" for c in KEY_COLUMNS if c in per_fold]
            raise ValueError(
                f"{_where(per_fold, position, row_names)}: the {column} is empty; every row "
                f"needs {', '.join(needed[:-1])} and {needed[-1]}"
            )


def _check_duplicates(per_fold: pd.DataFrame, row_names: Sequence[str]) -> None:
    keys = [c for c in KEY_COLUMNS if c in per_fold]
    duplicated = per_fold.duplicated(keys).to_numpy()
    if not duplicated.any():
        return
    second = int(np.flatnonzero(duplicated)[0])  # positional: the index may repeat
    same = (per_fold[keys] == per_fold[keys].iloc[second]).all(axis=1).to_numpy()
    first = int(np.flatnonzero(same)[0])
    row = per_fold.iloc[second]
    where = ", ".join(f"{KEY_NAMES[c]} {_show(row[c])}" for c in keys[1:])
    raise ValueError(
        f"trial {row['trial_id']!r} has more than one row for {where}: "
        f"{row_names[first]} and {row_names[second]}"
    )


def _metric_values(
    per_fold: pd.DataFrame, column: str, row_names: Sequence[str], named: bool
) -> pd.Series | None:
    """The column as numbers if it is a metric column (see `validate_per_fold`), None if it
    is not (text only, bools, dates); named: the caller chose it as a metric."""
    values = per_fold[column]
    if _is_numeric(values):
        numbers = values
    elif pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        present = ~_empty_cells(values)
        numbers = pd.to_numeric(values.astype(object).where(present), errors="coerce")
        text = (present & numbers.isna()).to_numpy()
        if text.any() and not named and numbers.isna().all():
            return None  # text only: a label or a configuration, not a metric
        if text.any():
            # One text cell must not make a whole metric disappear: it is an error.
            _text_cell_error(per_fold, column, int(np.flatnonzero(text)[0]), row_names, named)
    else:
        return None
    infinite = np.isinf(numbers.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        position = int(np.flatnonzero(infinite)[0])
        raise ValueError(
            f"column {column!r}: {_where(per_fold, position, row_names)} holds "
            f"{numbers.iloc[position]}, not a finite number"
        )
    return numbers


def _text_cell_error(
    per_fold: pd.DataFrame, column: str, position: int, row_names: Sequence[str], named: bool
) -> NoReturn:
    cell = f"{_where(per_fold, position, row_names)} holds {per_fold[column].iloc[position]!r}"
    if named:
        raise ValueError(f"column {column!r} is not numeric: {cell}, not a number")
    raise ValueError(
        f"column {column!r}: {cell}, not a number (a column that holds numbers is a metric; "
        "name the metrics to compare (--metric) to leave it out)"
    )


def _empty_cells(column: pd.Series) -> pd.Series:
    """NaN, None and blank text: a missing value, not a text cell."""
    if _is_numeric(column):
        return column.isna()
    return column.map(_is_empty).astype(bool)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _where(per_fold: pd.DataFrame, position: int, row_names: Sequence[str]) -> str:
    """A row by its name and those of its keys it has: "line 7 (trial 'b', fold 'C')"."""
    row = per_fold.iloc[position]
    keys = [
        f"{KEY_NAMES[c]} {_show(row[c])}"
        for c in KEY_COLUMNS
        if c in per_fold and not _is_empty(row[c])
    ]
    return f"{row_names[position]} ({', '.join(keys)})" if keys else row_names[position]


def _show(value) -> str:
    """A key as the user wrote it: strings quoted, numbers plain (not np.int64(2))."""
    if isinstance(value, str):
        return repr(value)
    return str(value.item() if isinstance(value, np.generic) else value)


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _as_list(metrics: Sequence[str]) -> list[str]:
    # A single name is a sequence of letters: not what is meant.
    return [metrics] if isinstance(metrics, str) else list(metrics)


def _chosen_metrics(
    per_fold: pd.DataFrame, metrics: Sequence[str] | None, *, checked: bool = True
) -> list[str]:
    """`metrics` (each a numeric column), or by default every floating-point column but the
    keys: integer columns hold counts (a test-set size `n`), not scores to compare.
    checked: False to check the names only (the cells are not numbers yet)."""
    numeric = [c for c in per_fold if c not in KEY_COLUMNS and _is_numeric(per_fold[c])]
    if metrics is None:
        return [c for c in numeric if pd.api.types.is_float_dtype(per_fold[c])]
    metrics = _as_list(metrics)
    for metric in metrics:
        if metric not in per_fold or metric in KEY_COLUMNS:
            raise ValueError(
                f"unknown metric {metric!r}; available: {', '.join(map(str, numeric))}"
            )
        if checked and metric not in numeric:
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

    Configurations established better than the best on the folds they share (verdict
    `better`, see `choose_best`) are counted apart, never among those that cannot be told
    apart: "...: 1 better on the folds shared with the best, 0 equivalent ...", only when
    there is one. title: the metric's name in the sentence (default the column name); the
    folds are the median n_folds of the other configurations; rope: the one the verdicts
    were made with (default the one `compare_to_best` recorded, else DEFAULT_ROPE).
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
        else pd.Series(map(verdict, others.p_worse, others.p_rope, others.p_better))
    )
    counts = verdicts.value_counts()
    better, equivalent, undecided, worse = (
        int(counts.get(v, 0)) for v in ("better", "equivalent", "undecided", "worse")
    )
    folds = float(others.n_folds.median())
    folds_text = f"{folds:g} fold{'' if folds == 1 else 's'}"
    configurations = "configuration" if len(others) == 1 else "configurations"
    better_text = f"{better} better on the folds shared with the best, " if better else ""
    sentence = (
        f"{equivalent + undecided} of {len(others)} other {configurations} cannot be told apart "
        f"from the best ({title or metric}, {folds_text}): {better_text}{equivalent} equivalent "
        f"within ±{rope:g}, {undecided} undecided, {worse} worse"
    )
    detectable = detectable_difference(stats, metric)
    if math.isnan(detectable):
        return sentence + "; too few shared folds to say how small a difference they could detect."
    return (
        sentence + f"; the smallest difference these folds could detect is about {detectable:.2g}."
    )


def fold_marks(stats: pd.DataFrame) -> pd.Series:
    """Per row of `compare_to_best`: "4/5 folds" where the trial lacks folds of the
    cross-validation (missing_folds > 0), else "". A trial that lacks a hard fold has a mean
    that flatters it: every table marks it. The folds of a metric's cross-validation are
    n_folds + missing_folds of its best row.
    """
    if "missing_folds" not in stats or stats.empty:
        return pd.Series("", index=stats.index, dtype=str)
    missing = pd.to_numeric(stats.missing_folds).fillna(0).astype(int)
    best = stats[stats.is_best.astype(bool)]
    # The best shares all its own folds with itself and lacks the rest.
    totals = best.n_folds + missing[best.index]
    folds = stats.metric.map(dict(zip(best.metric, totals, strict=True)))
    return pd.Series(
        [
            f"{int(total) - lacks}/{int(total)} folds" if lacks > 0 and pd.notna(total) else ""
            for lacks, total in zip(missing, folds, strict=True)
        ],
        index=stats.index,
        dtype=str,
    )


def best_choice_sentence(
    stats: pd.DataFrame, metric: str, title: str | None = None, labels=None
) -> str | None:
    """Why the best of `metric` is not the configuration with the highest mean (None when it
    is): that mean is over its own folds, and `choose_best` compares on shared folds.
    labels: trial_id -> the name to show (default the trial id)."""
    rows = stats[stats.metric == metric]
    if rows.empty or not rows.is_best.any() or rows["mean"].isna().all():
        return None
    best, top = rows[rows.is_best].iloc[0], rows.loc[rows["mean"].idxmax()]
    if top.trial_id == best.trial_id or top["mean"] == best["mean"]:
        return None
    marks = fold_marks(stats)

    def name(row) -> str:
        label = labels.get(row.trial_id, row.trial_id) if labels is not None else row.trial_id
        mark = marks[row.name]
        return f"{label} ({row['mean']:.3f}{' over ' + mark if mark else ''})"

    return (
        f"The best {title or metric} is {name(best)}, not the highest mean, {name(top)}: "
        f"on the {int(top.n_folds)} folds they share it is {top.diff_vs_best:+.3f} against the "
        f"best (95% interval [{top.ci_low:+.3f}, {top.ci_high:+.3f}], {top.verdict})."
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
