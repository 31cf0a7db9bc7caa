"""From what the trials record to the study's tables, and those tables to typed Parquet.

Every epoch, a trial writes every fold's rows and confusion counts to its fold log (one JSON
file per epoch under EXPERIMENT/folds/TRIAL_ID/, beside Ray's experiment, so on the same
shared storage as the checkpoints), and reports to Tune only what scheduling, the search and
the live view need: the cross-validated scalars and each fold's score. epochs.parquet,
confusions.parquet and trials.parquet are derived from the fold logs and Tune's reports,
so they can be rebuilt from the experiment at any time (`python -m study.results rebuild`).
Their schemas are mtl.tables'; `load` reads the tables of many studies at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mtl import (
    CV_METRICS,
    ID_COLUMNS,
    SCHEMA_VERSION,
    SCORE_METRICS,
    EpochMetrics,
    TrainConfig,
    add_version_option,
    confusion_matrix_cells,
    is_active,
    order_columns,
    table_schema,
    to_arrow,
    write_parquet,
)
from study.storage import filesystem_and_path

FOLD_SCORE = "fold_score/"  # + fold: a fold's score in a Tune report
FOLD_LOG = "folds"  # EXPERIMENT/folds/TRIAL_ID/epoch-NNNN.json
NAN = float("nan")


def epoch_report(
    by_fold: Mapping[str, EpochMetrics], score_metrics: Sequence[str] = SCORE_METRICS
) -> dict[str, float]:
    """The dict a trial reports to Tune for one epoch of all its folds.

    `cv_<metric>` is the mean over folds of a validation metric; `cv_score`, what ASHA and
    Optuna maximise, is the mean of the `cv_` values of `score_metrics`; `fold_score/<fold>`
    is each fold's own score. Nothing else: every fold's full rows go to the fold log.
    """
    epochs = {m.epoch for m in by_fold.values()}
    if len(epochs) != 1:  # not an assert: `python -O` would drop it
        raise RuntimeError(f"folds out of lockstep: epochs {sorted(epochs)}")
    report: dict[str, float] = {"epoch": epochs.pop()}
    for metric in dict.fromkeys((*CV_METRICS, *score_metrics)):
        values = [getattr(m.val, metric) for m in by_fold.values()]
        report[f"cv_{metric}"] = float(np.nanmean(values)) if np.isfinite(values).any() else NAN
    report["cv_score"] = float(np.mean([report[f"cv_{m}"] for m in score_metrics]))
    for fold, metrics in by_fold.items():
        report[f"{FOLD_SCORE}{fold}"] = float(
            np.mean([getattr(metrics.val, m) for m in score_metrics])
        )
    return report


def fold_log_entry(
    by_fold: Mapping[str, EpochMetrics], nodes: Mapping[str, Mapping], environment: Mapping
) -> dict:
    """One epoch of a trial's fold log: every fold's rows (with the node that trained it),
    its confusion cells, and the trial process's environment (study.provenance)."""
    rows, matrices = [], []
    for fold, metrics in by_fold.items():
        rows += [{"fold": fold, **row, **nodes[fold]} for row in metrics.rows()]
        # Matrices, not cells: the log stays small; study_tables makes the long cells.
        matrices += [
            {"fold": fold, "split": split, "level": level, "task": task, "counts": matrix}
            for split, m in (("train", metrics.train), ("val", metrics.val))
            for level, task, matrix in m.matrices()
        ]
    epoch = next(iter(by_fold.values())).epoch
    return {"epoch": epoch, "rows": rows, "confusions": matrices, "environment": dict(environment)}


def confusion_cells(entry: Mapping) -> pd.DataFrame:
    """The long confusion cells of one fold log entry (confusions.parquet's rows)."""
    return pd.DataFrame(
        [
            {"fold": m["fold"], "epoch": entry["epoch"], "split": m["split"], **cell}
            for m in entry["confusions"]
            for cell in confusion_matrix_cells(m["level"], m["task"], m["counts"])
        ]
    )


def write_fold_log(experiment: str, trial_id: str, entry: Mapping) -> None:
    """Write one epoch of a trial's fold log, atomically (a re-run epoch replaces it)."""
    filesystem, root = filesystem_and_path(experiment)
    folder = f"{root}/{FOLD_LOG}/{trial_id}"
    filesystem.create_dir(folder, recursive=True)
    path = f"{folder}/epoch-{entry['epoch']:04d}.json"
    data = json.dumps(entry, default=_json_value).encode()
    if isinstance(filesystem, pafs.LocalFileSystem):  # an object store's put is atomic already
        tmp = f"{path}.tmp-{os.getpid()}"
        with filesystem.open_output_stream(tmp) as out:
            out.write(data)
        filesystem.move(tmp, path)
    else:
        with filesystem.open_output_stream(path) as out:
            out.write(data)


def _json_value(value):
    return value.item() if hasattr(value, "item") else str(value)


class FoldLogReader:
    """Reads the trials' fold logs; an epoch file already read is not read again (the driver
    rereads the logs whenever a trial ends)."""

    def __init__(self, experiment: str):
        self.filesystem, self.root = filesystem_and_path(experiment)
        self.cache: dict[str, tuple[int, dict]] = {}  # path -> (size, entry)

    def read(self, trial_id: str) -> list[dict]:
        """The trial's fold log entries, by epoch."""
        selector = pafs.FileSelector(f"{self.root}/{FOLD_LOG}/{trial_id}", allow_not_found=True)
        entries = []
        for info in sorted(self.filesystem.get_file_info(selector), key=lambda i: i.path):
            if not info.base_name.endswith(".json") or info.type != pafs.FileType.File:
                continue
            cached = self.cache.get(info.path)
            if cached is None or cached[0] != info.size:
                with self.filesystem.open_input_stream(info.path) as stream:
                    cached = (info.size, json.loads(stream.read()))
                self.cache[info.path] = cached
            entries.append(cached[1])
        return entries


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
class StudyTables:
    epochs: pd.DataFrame
    trials: pd.DataFrame
    confusions: pd.DataFrame


def study_tables(
    records: Sequence[TrialRecord],
    base: TrainConfig,
    score_metrics: Sequence[str] = SCORE_METRICS,
    run: Mapping | None = None,
) -> StudyTables:
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
    return StudyTables(epochs, trials.sort_values("trial_id", ignore_index=True), confusions)


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
    val = val.assign(score=val[list(metrics)].mean(axis=1))
    columns = ["score", *dict.fromkeys(m for m in CV_METRICS if m in val)]
    per_epoch = val.groupby(["trial_id", "epoch"])[columns]
    mean, std = per_epoch.mean(), per_epoch.std(ddof=1)
    mean["score"] = mean[list(metrics)].mean(axis=1)  # the mean of the fold means, as reported
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


TABLES = ("epochs", "trials", "confusions")


def write_tables(folder: Path, tables: StudyTables, study: str) -> None:
    for name in TABLES:
        write_parquet(getattr(tables, name), folder / f"{name}.parquet", name, study)


def run_files(folder: Path) -> tuple[str, str]:
    """(Ray's experiment folder, the fold log's root) of the study in FOLDER, from run.json
    (they live elsewhere with --storage s3://...)."""
    run = folder / "run.json"
    experiment = json.loads(run.read_text())["experiment"] if run.exists() else str(folder / "tune")
    return experiment, experiment.rsplit("/", 1)[0]


def driver_provenance(study_file: Mapping) -> dict:
    """The provenance every trial row repeats from study.json: the data, the last command."""
    provenance = study_file.get("provenance", {})
    runs = provenance.get("runs") or [{}]
    return {
        "store_hash": provenance.get("store_hash"),
        "store_path": provenance.get("store_path"),
        "command": runs[-1].get("command"),
    }


def rebuild(folder: str | os.PathLike) -> StudyTables:
    """Rebuild a study's Parquet tables from its Ray experiment and fold logs."""
    from ray.tune import ExperimentAnalysis

    folder = Path(folder)
    study = json.loads((folder / "study.json").read_text())
    base = TrainConfig.from_dict(study["train"])
    experiment, root = run_files(folder)
    analysis = ExperimentAnalysis(experiment)
    fold_logs = FoldLogReader(root)
    # Tune's own reader of the experiment (local or remote); the trials' files are read from
    # the storage, where fit() left them.
    records = [record(t, fold_logs) for t in analysis.trials]
    tables = study_tables(records, base, tuple(study["score_metrics"]), driver_provenance(study))
    write_tables(folder, tables, study["name"])
    return tables


# Readers' pandas types: integers and booleans that may be null stay integers and booleans.
NULLABLE = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype(),
}


def load(studies: str | os.PathLike | Sequence[str | os.PathLike], table: str = "trials"):
    """The `table` (trials, epochs, confusions, stats, test) of many studies as one typed
    DataFrame: `studies` are study folders or glob patterns of them, e.g. "results/*".
    Studies without the table (no test set, say) are passed over; a file written by a newer
    schema version is refused."""
    target = table_schema(table)
    patterns = [studies] if isinstance(studies, str | os.PathLike) else list(studies)
    paths = [
        Path(match) / f"{table}.parquet"
        for pattern in patterns
        for match in sorted(glob.glob(str(pattern))) or [str(pattern)]
    ]
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise FileNotFoundError(f"no {table}.parquet in {', '.join(map(str, patterns))}")
    tables = [_read(path, target) for path in paths]
    return pa.concat_tables(tables).to_pandas(types_mapper=NULLABLE.get)


def _read(path: Path, target: pa.Schema) -> pa.Table:
    table = pq.read_table(path)
    version = int((table.schema.metadata or {}).get(b"schema_version", b"1"))
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path} was written with schema version {version}; this hep2-mtl reads versions "
            f"up to {SCHEMA_VERSION}: upgrade hep2-mtl to read it"
        )
    if version < SCHEMA_VERSION:  # an older table: its columns that kept their name
        frame = table.to_pandas()
        return to_arrow(
            frame[[c for c in frame if c in target.names]], target.metadata[b"table"].decode()
        )
    for column in target:  # a column added since the file was written: null there
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return table.select(target.names).cast(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.results",
        description="Study result tables. `rebuild RESULTS/NAME` rewrites epochs.parquet, "
        "trials.parquet and confusions.parquet from the study's Ray experiment and fold logs.",
    )
    parser.add_argument("command", choices=["rebuild"])
    parser.add_argument("folder", help="the study's results folder, RESULTS/NAME")
    add_version_option(parser)
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "study.json").exists():
        print(f"error: {args.folder} is not a study folder (no study.json)", file=sys.stderr)
        return 2
    tables = rebuild(args.folder)
    print(f"{args.folder}: {len(tables.trials)} trials, {len(tables.epochs)} epoch rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
