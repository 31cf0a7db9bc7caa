"""The fold log: every epoch, a trial writes every fold's rows and confusion counts to
EXPERIMENT/folds/TRIAL_ID/epoch-NNNN.json (beside Ray's experiment, on the same storage as the
checkpoints), and reports to Tune only what scheduling, the search and the live view need."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pyarrow import fs as pafs

from mtl import (
    CV_METRICS,
    SCORE_METRICS,
    EpochMetrics,
    confusion_matrix_cells,
    score,
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
    report["cv_score"] = score({m: report[f"cv_{m}"] for m in score_metrics}, score_metrics)
    for fold, metrics in by_fold.items():
        report[f"{FOLD_SCORE}{fold}"] = score(vars(metrics.val), score_metrics)
    return report


def fold_log_entry(
    by_fold: Mapping[str, EpochMetrics], nodes: Mapping[str, Mapping], environment: Mapping
) -> dict:
    """One epoch of a trial's fold log: every fold's rows (with the node that trained it),
    its confusion cells, and the environment where the folds train (study.provenance)."""
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
