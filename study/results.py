"""From reported epochs to the study's long tables, and those tables to Parquet.

A trial reports, once per epoch, the fold-mean validation metrics (`cv_*`) and every fold's
metrics under flat keys `fold/<fold>/<split>/<metric>`. Everything in epochs.parquet and
trials.parquet is derived from those reports, so both files can be rebuilt from Ray's
experiment folder at any time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.metrics import EpochMetrics
from mtl.tables import order_columns, write_parquet

__all__ = ["epoch_report", "epoch_rows", "fold_summary", "write_parquet"]

# The study's score: the mean of the three patch-level validation accuracies.
SCORE_METRICS = ("pixel_acc", "pattern_acc", "intensity_acc")
CV_METRICS = (
    "loss", "loss_seg", "loss_pattern", "loss_intensity",
    "pixel_acc", "dice", "iou", "pattern_acc", "pattern_mca", "intensity_acc",
    "image_pattern_acc", "image_intensity_acc",
    "patient_pattern_acc", "patient_pattern_mca", "patient_intensity_acc",
)  # fmt: skip
FOLD_PREFIX = "fold/"


def epoch_report(by_fold: Mapping[str, EpochMetrics]) -> dict[str, float]:
    """The dict a trial reports for one epoch of all its folds."""
    epochs = {m.epoch for m in by_fold.values()}
    assert len(epochs) == 1, f"folds out of lockstep: epochs {epochs}"
    report: dict[str, float] = {"epoch": epochs.pop()}
    for metric in CV_METRICS:
        report[f"cv_{metric}"] = float(np.mean([getattr(m.val, metric) for m in by_fold.values()]))
    report["cv_score"] = float(np.mean([report[f"cv_{m}"] for m in SCORE_METRICS]))
    for fold, metrics in by_fold.items():
        for row in metrics.rows():
            split = row.pop("split")
            row.pop("epoch")
            for key, value in row.items():
                report[f"{FOLD_PREFIX}{fold}/{split}/{key}"] = value
    return report


def epoch_rows(trial_id: str, reports: pd.DataFrame) -> pd.DataFrame:
    """Long rows (trial_id, fold, epoch, split, metrics...) from one trial's reports.

    An epoch reported twice (a trial resumed from a checkpoint older than its last report)
    keeps its last report, so no (fold, epoch, split) appears twice.
    """
    fold_columns = [c for c in reports.columns if c.startswith(FOLD_PREFIX)]
    if reports.empty or not fold_columns:
        return pd.DataFrame()
    long = reports[["epoch", *fold_columns]].melt(id_vars="epoch", var_name="key")
    parts = long.key.str[len(FOLD_PREFIX) :].str.split("/", n=2, expand=True)
    long = long.assign(fold=parts[0], split=parts[1], metric=parts[2])
    long = long.drop_duplicates(["fold", "epoch", "split", "metric"], keep="last")
    table = long.pivot(index=["fold", "epoch", "split"], columns="metric", values="value")
    table = table.reset_index().rename_axis(columns=None)
    table.insert(0, "trial_id", trial_id)
    counts = ["epoch", "patches", "skipped_steps", *(c for c in table if c.startswith("cm_"))]
    table = table.astype({c: int for c in counts if c in table})
    metric_order = list(dict.fromkeys(parts[2]))  # as reported: EpochMetrics.rows() order
    table = order_columns(table, metric_order)
    return table.sort_values(["fold", "epoch", "split"], ignore_index=True)


def fold_summary(epochs: pd.DataFrame, metrics: Sequence[str] = SCORE_METRICS) -> pd.DataFrame:
    """Per trial: mean and std over folds of each validation metric at the trial's last epoch."""
    val = epochs[epochs.split == "val"]
    last = val[val.epoch == val.groupby("trial_id").epoch.transform("max")]
    grouped = last.groupby("trial_id")[list(metrics)]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    summary = mean.add_prefix("cv_").join(std.add_prefix("cv_").add_suffix("_std"))
    summary["cv_score"] = mean.mean(axis=1)
    summary["cv_folds"] = last.groupby("trial_id").fold.nunique()
    return summary.reset_index()
