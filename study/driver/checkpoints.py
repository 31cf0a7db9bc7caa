"""Checkpoints kept and dropped: a trial keeps its latest two while it trains (Tune's
CheckpointConfig, study/driver/tuner.py); once finished, only the `keep_checkpoints` best trials
keep one, their latest (every fold's final weights, for study.results.export and the test estimate).
Works on any storage pyarrow reaches (a folder, s3://, gs://).
"""

from __future__ import annotations

import logging

import pandas as pd
from pyarrow import fs
from ray.tune import Callback

from study.results.tables import status, train_overrides
from study.spec.presets import StudyConfig
from study.storage import filesystem_and_path

logger = logging.getLogger(__name__)


class CheckpointKeeper(Callback):
    """Drops finished trials' checkpoints beyond the `keep_checkpoints` best as each trial
    ends, not only when the study does: the disk holds the running trials' checkpoints and
    the kept ones (study.driver.memory.disk_need), not every finished trial's. A trial outside the
    best N when it is dropped can never re-enter them: later trials only push it down."""

    def __init__(self, study: StudyConfig, experiment: str):
        self.study, self.experiment = study, experiment

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rows = []
        for t in trials:
            tune_status = "TERMINATED" if t is trial else t.status
            if tune_status not in ("TERMINATED", "ERROR"):
                continue
            result = t.last_result or {}
            epochs = self.study.train.replace(**train_overrides(t.config)).epochs
            rows.append({
                "trial_id": t.trial_id,
                "status": status(tune_status, int(result.get("epoch", 0)), epochs),
                "cv_score": result.get("cv_score", float("nan")),
            })  # fmt: skip
        try:
            drop_checkpoints(
                f"{self.experiment}/tune", pd.DataFrame(rows), self.study.keep_checkpoints
            )
        except OSError as error:  # e.g. a checkpoint Tune removed meanwhile: the end retries
            logger.warning("checkpoints of finished trials not dropped yet: %s", error)


def drop_checkpoints(experiment: str, trials: pd.DataFrame, keep: int) -> list[str]:
    """Delete the checkpoints of finished trials beyond the `keep` best (0: keep all), and
    all but the latest of the kept ones; completed trials rank before pruned and errored
    ones, then by cross-validated score.

    Unfinished trials keep theirs: a later --resume continues from them.
    """
    if keep == 0:
        return []
    finished = trials[trials.status.isin(["completed", "pruned", "errored"])]
    if "cv_score" not in finished:  # no trial ever reported
        finished = finished.assign(cv_score=float("nan"))
    ranked = finished.assign(rank=finished.status.ne("completed")).sort_values(
        ["rank", "cv_score"], ascending=[True, False]
    )
    filesystem, root = filesystem_and_path(experiment)
    trial_folders = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    dropped = []
    kept = set(ranked.trial_id.iloc[:keep])
    for trial_id in ranked.trial_id:
        for folder in trial_folders:
            if folder.type == fs.FileType.Directory and f"_{trial_id}_" in folder.base_name:
                items = filesystem.get_file_info(fs.FileSelector(folder.path))
                checkpoints = sorted(i.path for i in items if i.base_name.startswith("checkpoint_"))
                # A kept finished trial needs its latest checkpoint only (no fallback).
                doomed = checkpoints[:-1] if trial_id in kept else checkpoints
                for path in doomed:
                    filesystem.delete_dir(path)
                    dropped.append(path)
    return dropped
