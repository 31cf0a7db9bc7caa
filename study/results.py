"""From reported epochs to the study's long tables, and those tables to Parquet.

A trial reports, once per epoch, the fold-mean validation metrics (`cv_*`) and every fold's
metrics under flat keys `fold/<fold>/<split>/<metric>`. Everything in epochs.parquet and
trials.parquet is derived from those reports, so both files can be rebuilt from Ray's
experiment folder at any time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl import (
    CV_METRICS,
    ID_COLUMNS,
    SCORE_METRICS,
    EpochMetrics,
    TrainConfig,
    is_active,
    order_columns,
    write_parquet,
)

FOLD_PREFIX = "fold/"
NAN = float("nan")


def epoch_report(
    by_fold: Mapping[str, EpochMetrics],
    score_metrics: Sequence[str] = SCORE_METRICS,
    nodes: Mapping[str, str] | None = None,
) -> dict[str, float | str]:
    """The dict a trial reports for one epoch of all its folds.

    `cv_<metric>` is the mean over folds of a validation metric; `cv_score`, what ASHA and
    Optuna maximise, is the mean of the `cv_` values of `score_metrics`. Every fold's rows
    follow under `fold/<fold>/<split>/<metric>`, with the node that trained it.
    """
    epochs = {m.epoch for m in by_fold.values()}
    assert len(epochs) == 1, f"folds out of lockstep: epochs {epochs}"
    report: dict[str, float | str] = {"epoch": epochs.pop()}
    for metric in dict.fromkeys((*CV_METRICS, *score_metrics)):
        values = [getattr(m.val, metric) for m in by_fold.values()]
        report[f"cv_{metric}"] = float(np.nanmean(values)) if np.isfinite(values).any() else NAN
    report["cv_score"] = float(np.mean([report[f"cv_{m}"] for m in score_metrics]))
    for fold, metrics in by_fold.items():
        for row in metrics.rows():
            split = row.pop("split")
            row.pop("epoch")
            if nodes is not None:
                row["node"] = nodes[fold]
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
    # Values arrived in one object column (the node id is text): restore the number types.
    numbers = [c for c in table.columns if c not in ("trial_id", "fold", "split", "node")]
    table[numbers] = table[numbers].apply(pd.to_numeric)
    counts = ["epoch", "patches", "skipped_steps"]
    counts += [c for c in table if c.startswith(("cm_pattern_", "cm_intensity_"))]
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


# The key of a searched trial's configuration that holds its Optuna trial number (set by
# study.search.ConditionalSpace); not a TrainConfig field.
OPTUNA_TRIAL = "optuna_trial"


def train_overrides(config: Mapping) -> dict:
    """A Tune trial's configuration without the searcher's bookkeeping: TrainConfig fields."""
    return {k: v for k, v in config.items() if k != OPTUNA_TRIAL}


@dataclass(frozen=True)
class TrialRecord:
    """What the tables need of one Tune trial, wherever it was read from."""

    trial_id: str
    overrides: dict  # the trial's configuration: TrainConfig fields that differ from the base
    tune_status: str  # TERMINATED, ERROR, RUNNING, PENDING or PAUSED
    error: str | None
    reports: pd.DataFrame  # one row per tune.report


def read_reports(folder: str | os.PathLike) -> pd.DataFrame:
    """A trial's reports from its result.json (one JSON object per line)."""
    path = Path(folder) / "result.json"
    if not path.exists():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def read_error(folder: str | os.PathLike) -> str | None:
    path = Path(folder) / "error.txt"
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "error"


def record(trial, folder: str | os.PathLike) -> TrialRecord:
    """A TrialRecord of a Tune Trial whose files (result.json, error.txt) are in `folder`."""
    return TrialRecord(
        trial_id=trial.trial_id,
        overrides=dict(trial.config),
        tune_status=trial.status,
        error=read_error(folder) if trial.status == "ERROR" else None,
        reports=read_reports(folder),
    )


def status(tune_status: str, epochs_run: int, epochs: int) -> str:
    """completed, pruned (stopped early by ASHA), errored, or unfinished."""
    if tune_status == "ERROR":
        return "errored"
    if tune_status == "TERMINATED":
        return "completed" if epochs_run >= epochs else "pruned"
    return "unfinished"


def study_tables(
    records: Sequence[TrialRecord], base: TrainConfig, score_metrics: Sequence[str] = SCORE_METRICS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """epochs.parquet and trials.parquet of a study, from its trials' records."""
    frames = [epoch_rows(r.trial_id, r.reports) for r in records]
    frames = [f for f in frames if not f.empty]
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ID_COLUMNS)
    rows = []
    for r in records:
        config = base.replace(**train_overrides(r.overrides))
        reports = r.reports
        epochs_run = int(reports.epoch.max()) if "epoch" in reports and len(reports) else 0
        # A balancer's fields mean nothing to the other balancers: null there, not a number.
        fields = {
            k: v if is_active(k, config.balancer) else None
            for k, v in dataclasses.asdict(config).items()
        }
        row = {
            "trial_id": r.trial_id,
            **(
                {OPTUNA_TRIAL: int(r.overrides[OPTUNA_TRIAL])}
                if OPTUNA_TRIAL in r.overrides
                else {}
            ),
            **fields,
            "status": status(r.tune_status, epochs_run, config.epochs),
            "epochs_run": epochs_run,
            "error": r.error,
        }
        if "timestamp" in reports and len(reports):  # when it first reported (unix seconds)
            row["first_report"] = float(reports.timestamp.min())
        if "cv_score" in reports and reports.cv_score.notna().any():
            best = reports.loc[reports.cv_score.idxmax()]
            row["best_epoch"] = int(best.epoch)
            row.update({f"best_{c}": best[c] for c in reports if c.startswith("cv_")})
        rows.append(row)
    trials = pd.DataFrame(rows, columns=None if rows else ["trial_id", "status"])
    if not epochs.empty:
        trials = trials.merge(fold_summary(epochs, score_metrics), on="trial_id", how="left")
    return epochs, trials.sort_values("trial_id", ignore_index=True)


def write_tables(folder: Path, epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    write_parquet(epochs, folder / "epochs.parquet")
    write_parquet(trials, folder / "trials.parquet")


def rebuild(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild a study's Parquet tables from its Ray experiment folder (FOLDER/tune, or where
    FOLDER/run.json says)."""
    from ray.tune import ExperimentAnalysis

    folder = Path(folder)
    study = json.loads((folder / "study.json").read_text())
    base = TrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in study["train"].items()}
    )
    # run.json names the experiment when it lives elsewhere (--storage s3://...).
    run = folder / "run.json"
    experiment = json.loads(run.read_text())["experiment"] if run.exists() else folder / "tune"
    analysis = ExperimentAnalysis(str(experiment))
    records = [record(t, t.path) for t in analysis.trials]
    epochs, trials = study_tables(records, base, tuple(study["score_metrics"]))
    write_tables(folder, epochs, trials)
    return epochs, trials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.results",
        description="Study result tables. `rebuild RESULTS/NAME` rewrites epochs.parquet and "
        "trials.parquet from the Ray experiment folder RESULTS/NAME/tune.",
    )
    parser.add_argument("command", choices=["rebuild"])
    parser.add_argument("folder", help="the study's results folder, RESULTS/NAME")
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "study.json").exists():
        print(f"error: {args.folder} is not a study folder (no study.json)", file=sys.stderr)
        return 2
    epochs, trials = rebuild(args.folder)
    print(f"{args.folder}: {len(trials)} trials, {len(epochs)} epoch rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
