"""From what the trials record (Tune's reports, error files, fold logs) to the study's three
tables: epochs, trials and confusions (schemas: mtl.tables)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from pyarrow import fs as pafs

from mtl import (
    CV_METRICS,
    ID_COLUMNS,
    SCORE_METRICS,
    TrainConfig,
    is_active,
    order_columns,
    score,
)
from study.results.foldlog import FoldLogReader, confusion_cells
from study.storage import filesystem_and_path

# The key of a searched trial's configuration that holds its Optuna trial number (set by
# study.search.ConditionalSpace); not a TrainConfig field.
OPTUNA_TRIAL = "optuna_trial"
# The Optuna user attribute of a repeated proposal (study.search): the Tune trial whose
# configuration it repeats, and whose result it was told instead of being trained.
REPEATS = "repeats_tune_trial"


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
    fold_log: list[dict] = field(default_factory=list)  # fold_log_entry's, by epoch


RESULT_FILE = "result.json"  # Tune's: one JSON object per tune.report
ERROR_FILE = "error.txt"  # Tune's: the trial's last error, at the end


def read_text(
    folder: str | os.PathLike, name: str, filesystem: pafs.FileSystem | None = None
) -> str | None:
    """The text of the file NAME in FOLDER, or None when there is none. FOLDER is a local
    folder or a URI (s3://, gs://, file://), or a path on `filesystem` when it is given."""
    if filesystem is None:
        filesystem, folder = filesystem_and_path(folder)
    try:
        with filesystem.open_input_stream(f"{str(folder).rstrip('/')}/{name}") as stream:
            return stream.read().decode()
    except FileNotFoundError:
        return None


def parse_reports(text: str | None) -> pd.DataFrame:
    """A trial's reports, one row per line of its result.json (empty for None)."""
    rows = [json.loads(line) for line in (text or "").splitlines() if line.strip()]
    return pd.DataFrame(rows)


def last_error(text: str | None) -> str | None:
    """The line of a trial's error.txt that says what failed (its last), None for None."""
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "error"


def read_reports(
    folder: str | os.PathLike, filesystem: pafs.FileSystem | None = None
) -> pd.DataFrame:
    """A trial's reports from the result.json in FOLDER (a local folder, a URI, or a path on
    `filesystem`); empty when it has none."""
    return parse_reports(read_text(folder, RESULT_FILE, filesystem))


def read_error(folder: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> str | None:
    """The last line of the error.txt in FOLDER (as read_reports), None when there is none."""
    return last_error(read_text(folder, ERROR_FILE, filesystem))


def trial_folders(trial, *, live: bool) -> list[tuple[pafs.FileSystem, str]]:
    """Where a Tune trial's own files (result.json, error.txt) are, the freshest first.

    Ray 2.60 writes them on the driver, in its staging folder (`trial.local_path`: Tune's
    JsonLoggerCallback appends every result there and flushes it; error.txt is written
    there), and copies that folder to the trial's folder in the experiment's storage
    (`trial.path` on `trial.storage.storage_filesystem`: a local folder or a bucket) at each
    experiment checkpoint, and once more, waiting for it, before fit() returns. So while
    fit() runs (`live`: the driver's callbacks) the staging folder is the current one, but
    only for the trials this driver ran: a resumed study's earlier trials are in the storage
    alone. After fit(), and in another process, the storage is read (the staging folder is
    the Ray session's, gone with it).
    """
    if trial.storage.trial_dir_name is None:  # never started: no files yet
        return []
    stored = (trial.storage.storage_filesystem, trial.path)
    return [(pafs.LocalFileSystem(), trial.local_path), stored] if live else [stored]


def read_trial_file(trial, name: str, *, live: bool = False) -> str | None:
    """The text of one of a Tune trial's files from the first of its trial_folders that has
    it; None when none has."""
    for filesystem, folder in trial_folders(trial, live=live):
        text = read_text(folder, name, filesystem)
        if text is not None:
            return text
    return None


def record(trial, fold_logs: FoldLogReader, *, live: bool = False) -> TrialRecord:
    """A TrialRecord of a Tune Trial, its result.json and error.txt read where Ray keeps
    them (trial_folders; `live`: in the driver while fit() runs)."""
    failed = trial.status == "ERROR"
    return TrialRecord(
        trial_id=trial.trial_id,
        overrides=dict(trial.config),
        tune_status=trial.status,
        error=last_error(read_trial_file(trial, ERROR_FILE, live=live)) if failed else None,
        reports=parse_reports(read_trial_file(trial, RESULT_FILE, live=live)),
        fold_log=fold_logs.read(trial.trial_id),
    )


def status(tune_status: str, epochs_run: int, epochs: int) -> str:
    """completed, pruned (stopped early by ASHA), errored, or unfinished."""
    if tune_status == "ERROR":
        return "errored"
    if tune_status == "TERMINATED":
        return "completed" if epochs_run >= epochs else "pruned"
    return "unfinished"


@dataclass(frozen=True)
class TrialTables:
    epochs: pd.DataFrame
    trials: pd.DataFrame
    confusions: pd.DataFrame


def study_tables(
    records: Sequence[TrialRecord],
    base: TrainConfig,
    score_metrics: Sequence[str] = SCORE_METRICS,
    run: Mapping | None = None,
) -> TrialTables:
    """epochs, trials and confusions of a study, from its trials' records. `run`: the
    driver's side of the provenance (store_hash, store_path, command), on every trial row.

    A fold log epoch that Tune never received (the trial died between the two) is left out,
    so the tables agree with the trial's status; an epoch reported twice (a trial resumed
    from an older checkpoint) was rewritten in the log and appears once.
    """
    epochs, confusions, rows = [], [], []
    for r in records:
        config = base.replace(**train_overrides(r.overrides))
        reports = r.reports
        epochs_run = int(reports.epoch.max()) if "epoch" in reports and len(reports) else 0
        log = [e for e in r.fold_log if e["epoch"] <= epochs_run]
        epochs += [pd.DataFrame(e["rows"]).assign(trial_id=r.trial_id) for e in log]
        confusions += [confusion_cells(e).assign(trial_id=r.trial_id) for e in log]
        environment = log[-1]["environment"] if log else {}
        # A balancer's fields mean nothing to the other balancers: null there, not a number.
        fields = {
            k: v if is_active(k, config.balancer) else None
            for k, v in dataclasses.asdict(config).items()
        }
        row = {
            "trial_id": r.trial_id,
            OPTUNA_TRIAL: r.overrides.get(OPTUNA_TRIAL),
            **fields,
            "status": status(r.tune_status, epochs_run, config.epochs),
            "epochs_run": epochs_run,
            "error": r.error,
            **dict(run or {}),
            **environment,
        }
        if "timestamp" in reports and len(reports):
            row["started"] = pd.to_datetime(reports.timestamp.min(), unit="s", utc=True)
            row["ended"] = pd.to_datetime(reports.timestamp.max(), unit="s", utc=True)
        rows.append(row)
    epochs = _concat(epochs, ID_COLUMNS)
    confusions = _concat(confusions, ("trial_id", "fold", "epoch", "split"))
    trials = pd.DataFrame(rows, columns=None if rows else ["trial_id", "status"])
    if not epochs.empty:
        trials = trials.merge(fold_summary(epochs, score_metrics), on="trial_id", how="left")
        devices = epochs.dropna(subset=["device"]).groupby("trial_id").device
        gpus = devices.agg(lambda d: ", ".join(sorted(set(d) - {"cpu"})) or None)
        trials["gpu"] = trials.trial_id.map(gpus)
    return TrialTables(epochs, trials.sort_values("trial_id", ignore_index=True), confusions)


def _concat(frames: list[pd.DataFrame], keys: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(keys))
    table = order_columns(pd.concat(frames, ignore_index=True))
    return table.sort_values(list(keys), ignore_index=True, kind="stable")


def fold_summary(epochs: pd.DataFrame, metrics: Sequence[str] = SCORE_METRICS) -> pd.DataFrame:
    """Per trial: mean and standard deviation over folds of every cross-validated metric and
    of the score (`metrics`' mean), at the trial's last epoch (`cv_*`) and at its best epoch
    (`best_cv_*`, the epoch of the highest fold-mean score), and the best epoch."""
    val = epochs[epochs.split == "val"]
    val = val.assign(score=score(val, metrics))
    columns = ["score", *dict.fromkeys(m for m in CV_METRICS if m in val)]
    per_epoch = val.groupby(["trial_id", "epoch"])[columns]
    mean, std = per_epoch.mean(), per_epoch.std(ddof=1)
    mean["score"] = score(mean, metrics)  # the mean of the fold means, as reported
    epochs_of = mean.reset_index()[["trial_id", "epoch"]]
    last = pd.MultiIndex.from_frame(epochs_of.groupby("trial_id", as_index=False).epoch.max())
    best = pd.MultiIndex.from_tuples(
        mean.score.dropna().groupby(level="trial_id").idxmax(), names=["trial_id", "epoch"]
    )

    def pick(index: pd.MultiIndex, prefix: str) -> pd.DataFrame:
        picked = mean.loc[index].add_prefix(f"{prefix}cv_")
        picked = picked.join(std.loc[index].add_prefix(f"{prefix}cv_").add_suffix("_std"))
        return picked.reset_index("epoch", drop=True)

    summary = pick(last, "").join(pick(best, "best_"))
    summary["best_epoch"] = pd.Series(
        best.get_level_values("epoch"), index=best.get_level_values(0)
    )
    at_last = val.merge(last.to_frame(index=False), on=["trial_id", "epoch"])
    summary["cv_folds"] = at_last.groupby("trial_id").fold.nunique()
    return summary.reset_index()
