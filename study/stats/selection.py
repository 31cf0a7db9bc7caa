"""Which validation rows a comparison uses: one per (trial, fold), at the fold's final or
best epoch, at patch, image or patient level, with the fold's score; and a study's per-fold
table of its completed trials (what the fold-paired statistics compare)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtl import METRIC_LEVELS, TASKS, score, score_metrics_at
from study.stats import KEY_COLUMNS, STUDY_METRICS

LEVELS = {
    "patch": "patch level",
    "image": "image level (majority vote over a specimen's patches)",
    "patient": "patient level (majority vote over a patient's patches)",
}
EPOCH_CHOICES = {
    "final": "final epoch",
    "best": "best epoch per fold (by the fold's validation score)",
}
# How a fold's epoch is chosen: the one where this key is largest (the first of ties). `best`
# by the score; a trial that trains fewer tasks (a single-task baseline) has none, and its
# best epoch is that of the mean of the score metrics it has.
EPOCH_KEYS = {
    "final": lambda val, metrics: val.epoch,
    "best": lambda val, metrics: val.score.fillna(val[metrics].mean(axis=1)).fillna(-np.inf),
}
NO_VOTED_PIXELS = (
    "Majority votes label specimens and patients, not pixels: there is no image- or "
    "patient-level pixel accuracy or Dice; the patch-level values are shown, so labelled."
)


def level_column(metric: str, level: str) -> str:
    """The epochs column of a voted metric at `level`: pattern_acc at patient level is
    patient_pattern_acc (the patch level's has no prefix)."""
    return metric if level == "patch" else f"{level}_{metric}"


def voted_column(metric: str, level: str) -> str:
    """`metric` by the votes of `level` where votes have it (pattern and intensity), else the
    patch level's (pixel accuracy and Dice: votes label specimens, not pixels)."""
    voted = level_column(metric, level)
    return voted if voted in METRIC_LEVELS else metric


def level_metrics(level: str) -> dict[str, str]:
    """Column of epochs.parquet -> row title. A fold's score is the mean of
    `mtl.score_metrics_at(level)`.

    Votes label whole specimens or patients, not pixels: pixel accuracy and Dice exist at
    patch level only and are shown, so labelled, at every level.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if level == "patch":
        return {
            "pixel_acc": "pixel accuracy",
            "pattern_acc": "pattern accuracy",
            "intensity_acc": "intensity accuracy",
            "dice": "Dice (cells)",
            "pattern_mca": "pattern mean class acc.",
        }
    return {
        "pixel_acc": "pixel acc. (patch level)",
        f"{level}_pattern_acc": "pattern accuracy",
        f"{level}_intensity_acc": "intensity accuracy",
        "dice": "Dice (patch level)",
        f"{level}_pattern_mca": "pattern mean class acc.",
    }


def row_titles(level: str) -> dict[str, str]:
    return {**level_metrics(level), "score": "score (mean of first 3)", "epoch": "epoch"}


def select_epochs(epochs: pd.DataFrame, level: str = "patch", epoch: str = "final") -> pd.DataFrame:
    """One validation row per (trial, fold), with a `score` column: the mean of the fold's
    pixel, pattern and intensity accuracy at `level`.

    `final`: the fold's last epoch (for a pruned trial, the last one it ran). `best`: the
    epoch of the fold's highest score, the earliest of ties: a retrospective choice, an
    optimistic estimate, which every title says.
    """
    metrics = list(level_metrics(level))
    if epoch not in EPOCH_CHOICES:
        raise ValueError(f"unknown epoch {epoch!r}; expected one of {', '.join(EPOCH_CHOICES)}")
    val = epochs[epochs.split == "val"].sort_values(["trial_id", "fold", "epoch"])
    val = val.reset_index(drop=True).reindex(columns=list(dict.fromkeys([*val, *metrics])))
    val["score"] = score(val, score_metrics_at(level))
    if val.empty:
        return val
    key = EPOCH_KEYS[epoch](val, list(score_metrics_at(level)))
    chosen = key.groupby([val.trial_id, val.fold]).idxmax()
    return val.loc[chosen.to_numpy()].reset_index(drop=True)


def task_counts(trials: pd.DataFrame) -> pd.Series:
    """How many tasks each trial trains (all three in a table written before `tasks`)."""
    if "tasks" not in trials:
        return pd.Series(len(TASKS), index=trials.index)
    return trials.tasks.map(lambda tasks: len(TASKS) if tasks is None else len(tasks))


def study_per_fold(epochs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """A study's per-fold table: the validation rows of its completed trials at each (trial,
    fold)'s last epoch.

    Pruned trials stopped early, at an epoch the completed ones went past: comparing them
    would compare training lengths, not configurations; errored and unfinished ones have no
    final epoch. Columns: trial_id, fold, `repeat` if epochs has one, `score` (the mean of
    pixel, pattern and intensity accuracy, NaN if any is NaN: the study's cv_score per fold),
    then the STUDY_METRICS present in epochs (`select_epochs` at patch level, final epoch).
    Sorted by trial_id, (repeat,) fold.
    """
    for table, name, columns in (
        (epochs, "epochs", ("trial_id", "fold", "epoch", "split")),
        (trials, "trials", ("trial_id", "status")),
    ):
        for column in columns:
            if column not in table:
                raise ValueError(f"the {name} table has no {column!r} column")
    completed = trials.loc[trials.status == "completed", "trial_id"]
    last = select_epochs(epochs[epochs.trial_id.isin(completed)], "patch", "final")
    keys = [c for c in KEY_COLUMNS if c in last]
    metrics = [c for c in STUDY_METRICS[1:] if c in epochs]
    return last[[*keys, "score", *metrics]].sort_values(keys, kind="stable", ignore_index=True)
