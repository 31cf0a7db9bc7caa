"""Checkpoints kept and dropped: a trial keeps its latest two while it trains (Tune's
CheckpointConfig, study/driver/tuner.py); once finished, only the `keep_checkpoints` best trials
keep one, their latest (every fold's final weights, for study.results.export and the test estimate).
Works on any storage pyarrow reaches (a folder, s3://, gs://).
"""

from __future__ import annotations

import bisect
import logging
import math
import re

import pandas as pd
from pyarrow import fs
from ray.tune import Callback

from study.results.tables import status, train_overrides
from study.spec.presets import StudyConfig
from study.storage import filesystem_and_path

logger = logging.getLogger(__name__)
TRIAL_ID = re.compile(r"_([0-9a-z]+_\d{5})_")  # Tune's trial ids: PREFIX_NNNNN


class CheckpointKeeper(Callback):
    """Drops finished trials' checkpoints beyond the `keep_checkpoints` best as each trial
    ends, not only when the study does: the disk holds the running trials' checkpoints and
    the kept ones (study.driver.memory.disk_need), not every finished trial's. A trial
    outside the best N when it is dropped can never re-enter them: later trials only push it
    down. A trial end touches the folders of that trial and of the one it pushes out, no
    others: the cost does not grow with the study."""

    def __init__(self, study: StudyConfig, experiment: str):
        self.study, self.experiment = study, experiment
        self.kept: list[tuple[tuple, object]] = []  # (rank, trial) of the best, best first

    def __getstate__(self) -> dict:
        return {**self.__dict__, "kept": []}  # Trials are the driver's; a restore starts anew

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.finished(trial, "ERROR")

    def finished(self, trial, tune_status: str) -> None:
        keep = self.study.keep_checkpoints
        if keep == 0:
            return
        result = trial.last_result or {}
        epochs = self.study.train.replace(**train_overrides(trial.config)).epochs
        ended = status(tune_status, int(result.get("epoch", 0)), epochs)
        bisect.insort(self.kept, (rank(ended, result.get("cv_score")), trial), key=_first)
        pushed_out = [t for _, t in self.kept[keep:]]
        del self.kept[keep:]
        if trial not in pushed_out:  # among the best: its latest checkpoint stays, no fallback
            self.drop(trial, keep_latest=1)
        for t in pushed_out:
            self.drop(t, keep_latest=0)

    def drop(self, trial, keep_latest: int) -> None:
        try:
            drop_trial_checkpoints(trial.storage.storage_filesystem, trial.path, keep_latest)
        except OSError as error:  # e.g. a checkpoint Tune removed meanwhile: the end retries
            logger.warning("checkpoints of trial %s not dropped yet: %s", trial.trial_id, error)


def _first(item: tuple) -> tuple:
    return item[0]


def rank(status: str, cv_score: float | None) -> tuple:
    """Sorts finished trials best first: completed before pruned and errored, then by
    cross-validated score, highest first (none last)."""
    score = cv_score if cv_score is not None and math.isfinite(cv_score) else -math.inf
    return (status != "completed", -score)


def drop_trial_checkpoints(filesystem: fs.FileSystem, folder: str, keep_latest: int) -> list[str]:
    """Delete a trial's checkpoints but its `keep_latest` latest; the paths deleted."""
    items = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    checkpoints = sorted(i.path for i in items if i.base_name.startswith("checkpoint_"))
    doomed = checkpoints[: len(checkpoints) - keep_latest] if keep_latest else checkpoints
    for path in doomed:
        filesystem.delete_dir(path)
    return doomed


def drop_checkpoints(experiment: str, trials: pd.DataFrame, keep: int) -> list[str]:
    """Delete the checkpoints of finished trials beyond the `keep` best (0: keep all), and
    all but the latest of the kept ones; completed trials rank before pruned and errored
    ones, then by cross-validated score.

    Unfinished trials keep theirs: a later --resume continues from them.
    """
    if keep == 0:
        return []
    finished = trials[trials.status.isin(["completed", "pruned", "errored"])]
    scores = finished.cv_score if "cv_score" in finished else [None] * len(finished)
    ranked = sorted(
        zip(finished.trial_id, finished.status, scores, strict=True),
        key=lambda row: rank(row[1], None if pd.isna(row[2]) else float(row[2])),
    )
    filesystem, root = filesystem_and_path(experiment)
    folders = {}  # trial id -> its folder: Tune names it TRAINABLE_TRIALID_N_PARAMS_DATE
    for info in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True)):
        found = TRIAL_ID.search(info.base_name) if info.type == fs.FileType.Directory else None
        if found:
            folders[found.group(1)] = info.path
    dropped = []
    for position, (trial_id, _, _) in enumerate(ranked):
        if trial_id in folders:
            latest = 1 if position < keep else 0
            dropped += drop_trial_checkpoints(filesystem, folders[trial_id], keep_latest=latest)
    return dropped
