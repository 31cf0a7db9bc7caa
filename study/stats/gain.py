"""Does training the tasks together help, and which task pays: Δm against single-task
baselines, paired by fold.

Δm (Maninis, Radosavovic and Kokkinos 2019, "Attentive single-tasking of multiple tasks";
LibMTL's summary of a multi-task method) is the mean over the tasks of the signed relative
difference between a multi-task model's headline metric and that of the model trained on
the task alone:

    Δm = 1/T sum_t s_t (M_t - B_t) / B_t,   s_t = +1 if higher is better, -1 if lower

Every configuration and every baseline is trained on the same folds with the same seeds, so
Δm is computed per fold (the configuration's fold j against each baseline's fold j) and the
per-fold values are compared with 0 by the fold-paired statistics of every other comparison
(`study.stats.paired_test`: the corrected resampled t-test's interval and the correlated
Bayesian t-test's posterior, with a rope of ±`rope` in relative terms, 0.01 = 1%). Verdicts:
`helps` (P(Δm > rope) >= 0.95), `hurts` (P(Δm < -rope) >= 0.95), `equivalent` (P(|Δm| <=
rope) >= 0.95), else `undecided`. Each task's own relative difference gets the same test,
so that a reader sees which task pays for a Δm.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mtl import METRIC_DIRECTIONS
from study.stats import DEFAULT_ROPE, infer_folds_per_repeat, paired_test, verdict

GAIN_VERDICTS = {"better": "helps", "worse": "hurts", "equivalent": "equivalent",
                 "undecided": "undecided"}  # fmt: skip
GAIN_COLUMNS = ("trial_id", "term", "metric", "n_folds", "mean", "ci_low", "ci_high",
                "p_value", "p_hurts", "p_rope", "p_helps", "verdict")  # fmt: skip


def check_directions(metrics: Mapping[str, str]) -> None:
    """Raise unless every metric has a declared direction (mtl's METRIC_DIRECTIONS)."""
    unknown = [m for m in metrics.values() if m not in METRIC_DIRECTIONS]
    if unknown:
        known = ", ".join(METRIC_DIRECTIONS)
        raise ValueError(f"no direction declared for {unknown}; known: {known}")


def fold_ratio(per_fold: pd.DataFrame, folds_per_repeat: int | None) -> float:
    """n_test/n_train = 1/(k-1) of the cross-validation, k as compare_to_best takes it."""
    k = infer_folds_per_repeat(per_fold) if folds_per_repeat is None else folds_per_repeat
    if k < 2:
        raise ValueError(f"the fold-paired test needs at least 2 folds per repeat, got {k}")
    return 1 / (k - 1)


def relative_differences(
    per_fold: pd.DataFrame, baselines: Mapping[str, str], metrics: Mapping[str, str]
) -> pd.DataFrame:
    """Per (trial, fold) of every trial that is not a baseline, one column per task:
    s_t (M_t - B_t) / B_t against the baseline of that task on the same fold (NaN where
    either lacks the fold or the baseline's value is 0), and `delta_m`, their mean (NaN
    where any task's is).

    per_fold: one row per trial and fold (`trial_id`, `fold`, optionally `repeat`) with the
    metrics' columns. baselines: task -> the trial id of its single-task baseline.
    metrics: task -> its headline metric (a key of mtl's METRIC_DIRECTIONS).
    """
    if set(baselines) != set(metrics):
        raise ValueError(f"baselines for {sorted(baselines)} but metrics for {sorted(metrics)}")
    check_directions(metrics)
    keys = [c for c in ("repeat", "fold") if c in per_fold]
    trials = set(per_fold.trial_id)
    if missing := sorted(set(baselines.values()) - trials):
        raise ValueError(f"the baseline trials {missing} have no rows in the per-fold table")
    others = per_fold[~per_fold.trial_id.isin(set(baselines.values()))]
    frame = others[["trial_id", *keys]].reset_index(drop=True)
    for task, metric in metrics.items():
        baseline = per_fold.loc[per_fold.trial_id == baselines[task], [*keys, metric]]
        # The baseline's value on each row's fold (a left merge keeps the rows' order).
        base = frame[keys].merge(baseline, on=keys, how="left")[metric].to_numpy(dtype=float)
        value = others[metric].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = METRIC_DIRECTIONS[metric] * (value - base) / base
        frame[task] = np.where(base == 0, np.nan, relative)
    frame["delta_m"] = frame[list(metrics)].mean(axis=1, skipna=False)
    return frame


def delta_m(
    per_fold: pd.DataFrame,
    baselines: Mapping[str, str],
    metrics: Mapping[str, str],
    *,
    folds_per_repeat: int | None = None,
    rope: float = DEFAULT_ROPE,
) -> pd.DataFrame:
    """Δm of every trial that is not a baseline, and each task's relative difference, with
    their fold-paired statistics: one row per (trial, term), term `delta_m` first and then
    the tasks in `metrics` order. Columns GAIN_COLUMNS: `metric` the task's headline metric
    (empty for delta_m); mean, the 95% interval and the two-sided p of the per-fold values
    (relative: 0.05 is 5%); p_hurts, p_rope, p_helps the posterior's; `verdict`.

    k (the correction n_test/n_train = 1/(k-1)) as `study.stats.compare_to_best` takes it.
    """
    relative = relative_differences(per_fold, baselines, metrics)
    ratio = fold_ratio(per_fold, folds_per_repeat)
    rows = []
    for trial, values in relative.groupby("trial_id", sort=False):
        for term in ("delta_m", *metrics):
            test = paired_test(values[term].to_numpy(), ratio, rope)
            rows.append({
                "trial_id": trial, "term": term, "metric": metrics.get(term, ""),
                "n_folds": test.n, "mean": test.mean_diff, "ci_low": test.ci_low,
                "ci_high": test.ci_high, "p_value": test.p_value, "p_hurts": test.p_worse,
                "p_rope": test.p_rope, "p_helps": test.p_better,
                "verdict": GAIN_VERDICTS[verdict(test.p_worse, test.p_rope, test.p_better)],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(GAIN_COLUMNS))
