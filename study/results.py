"""From reported epochs to the study's long tables, and those tables to Parquet.

A trial reports, once per epoch, the fold-mean validation metrics (`cv_*`) and every fold's
metrics under flat keys `fold/<fold>/<split>/<metric>`. Everything in epochs.parquet and
trials.parquet is derived from those reports, so both files can be rebuilt from Ray's
experiment folder at any time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mtl.losses import TASKS
from mtl.metrics import EpochMetrics, SplitMetrics

# The study's score: the mean of the three patch-level validation accuracies.
SCORE_METRICS = ("pixel_acc", "pattern_acc", "intensity_acc")
CV_METRICS = ("loss", "loss_seg", "loss_pattern", "loss_intensity", *SCORE_METRICS)
FOLD_PREFIX = "fold/"
EPOCH_COLUMNS = (
    "trial_id", "fold", "epoch", "split",
    *(f.name for f in dataclasses.fields(SplitMetrics)),
    *(f"weight_{task}" for task in TASKS),
    "skipped_steps",
    "seconds",
)  # fmt: skip


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
    """Long rows (trial_id, fold, epoch, split, metrics...) from one trial's reports."""
    fold_columns = [c for c in reports.columns if c.startswith(FOLD_PREFIX)]
    if reports.empty or not fold_columns:
        return pd.DataFrame()
    long = reports[["epoch", *fold_columns]].melt(id_vars="epoch", var_name="key")
    parts = long.key.str[len(FOLD_PREFIX) :].str.split("/", n=2, expand=True)
    long = long.assign(fold=parts[0], split=parts[1], metric=parts[2])
    table = long.pivot_table(
        index=["fold", "epoch", "split"], columns="metric", values="value", aggfunc="last"
    ).reset_index()
    table.columns.name = None
    table.insert(0, "trial_id", trial_id)
    table["epoch"] = table["epoch"].astype(int)
    table["patches"] = table["patches"].astype(int)
    ordered = [c for c in EPOCH_COLUMNS if c in table] + [
        c for c in table if c not in EPOCH_COLUMNS
    ]
    return table[ordered].sort_values(["fold", "epoch", "split"], ignore_index=True)


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


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
