"""What a configuration buys on one task at the cost of another: the per-task front, and
which configurations the folds establish as dominated.

Each completed configuration that trains every task has, per task, its headline metric
(the study's `task_metrics`) on every fold. Two fronts:

* **by means**: a configuration is on it when no other is at least as good on every task's
  mean and better on one (directions from `mtl.METRIC_DIRECTIONS`);
* **established dominated**: some other configuration is established better-or-equivalent
  on every task and established better on one, each by the fold-paired verdict of the two
  on that task (`study.stats.paired_test` of the per-fold differences, the verdict rule of
  `study.stats.verdict`, rope ±`rope`). A configuration dominated by means can stay
  undominated here: the folds may not tell the two apart.

Each configuration's mean per task also gets the corrected resampled 95% interval of that
mean (the figure's error bars). The rows go to front.parquet (mtl.tables' `front` schema).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mtl import METRIC_DIRECTIONS
from study.stats import DEFAULT_ROPE, paired_test, verdict
from study.stats.gain import check_directions, fold_ratio

FRONT_COLUMNS = ("trial_id", "task", "metric", "n_folds", "mean", "ci_low", "ci_high",
                 "on_front", "established_dominated", "dominated_by")  # fmt: skip


def task_front(
    per_fold: pd.DataFrame,
    metrics: Mapping[str, str],
    *,
    folds_per_repeat: int | None = None,
    rope: float = DEFAULT_ROPE,
) -> pd.DataFrame:
    """One row per (trial, task) of the trials with a value for every task's metric:
    FRONT_COLUMNS. `on_front`: on the front of the means; `established_dominated`: some other
    trial is established better-or-equivalent on every task and better on one;
    `dominated_by`: those trials' ids, comma-separated (empty when none).

    per_fold: one row per trial and fold (`trial_id`, `fold`, optionally `repeat`) with the
    metrics' columns. metrics: task -> its headline metric (a key of METRIC_DIRECTIONS).
    """
    check_directions(metrics)
    ratio = fold_ratio(per_fold, folds_per_repeat)
    keys = [c for c in ("repeat", "fold") if c in per_fold]
    tasks = list(metrics)
    # Per task: trials x folds, oriented so that higher is better.
    wide = {
        task: per_fold.pivot(index="trial_id", columns=keys, values=metric).astype(float)
        * METRIC_DIRECTIONS[metric]
        for task, metric in metrics.items()
    }
    complete = [t for t in pd.unique(per_fold.trial_id)
                if all(wide[task].loc[t].notna().any() for task in tasks)]  # fmt: skip
    means = pd.DataFrame({task: wide[task].loc[complete].mean(axis=1) for task in tasks})

    # Trials x folds per task as arrays: the pairs below are quadratic in the trials.
    oriented = {task: wide[task].loc[complete].to_numpy() for task in tasks}

    def verdict_of(better: int, worse: int, task: str) -> str:
        a, b = oriented[task][better], oriented[task][worse]
        shared = ~np.isnan(a) & ~np.isnan(b)
        test = paired_test(a[shared] - b[shared], ratio, rope)
        return verdict(test.p_worse, test.p_rope, test.p_better)

    def dominators(trial: int) -> list[int]:
        """The trials established better-or-equivalent than `trial` on every task and
        better on one. A verdict needs a posterior probability of DECISION (> 1/2) on one
        side of the mean difference: "better" needs a mean above rope, "equivalent" one
        within ±rope. Only the pairs whose means allow it get the test (each some 0.6 ms,
        minutes for every pair of a 1,000-trial study), with a margin for the means'
        rounding; the test decides, task by task, until one fails."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no shared fold: a NaN mean
            mean = np.stack([np.nanmean(oriented[t] - oriented[t][trial], axis=1) for t in tasks])
        margin = 1e-9
        possible = (mean >= -rope - margin).all(axis=0) & (mean > rope - margin).any(axis=0)
        possible[trial] = False
        by = []
        for other in np.flatnonzero(possible):
            verdicts = []
            for task in tasks:
                verdicts.append(verdict_of(other, trial, task))
                if verdicts[-1] not in ("better", "equivalent"):
                    break
            else:
                if "better" in verdicts:
                    by.append(other)
        return by

    mean_of = means.to_numpy()  # trials x tasks
    rows = []
    for position, trial in enumerate(complete):
        mine = mean_of[position]
        # Dominated by means: another at least as good on every task, better on one.
        on_front = not ((mean_of >= mine).all(axis=1) & (mean_of > mine).any(axis=1)).any()
        by = [complete[other] for other in dominators(position)]
        for task, metric in metrics.items():
            values = wide[task].loc[trial].dropna() * METRIC_DIRECTIONS[metric]
            interval = paired_test(values.to_numpy(), ratio, rope)
            rows.append({
                "trial_id": trial, "task": task, "metric": metric, "n_folds": len(values),
                "mean": float(values.mean()), "ci_low": interval.ci_low,
                "ci_high": interval.ci_high, "on_front": on_front,
                "established_dominated": bool(by), "dominated_by": ",".join(by),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(FRONT_COLUMNS))
