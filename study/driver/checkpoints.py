"""Checkpoints kept and dropped, by the driver (Tune itself keeps every one: CheckpointConfig
without num_to_keep, study/driver/tuner.py). While a trial trains it keeps its latest two, and
the ones the last two saved experiment states name; once finished, only the
`keep_checkpoints` best trials keep one, their latest (every fold's final weights, for
study.results.export and the test estimate). Works on any storage pyarrow reaches (a folder,
s3://, gs://).
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections import deque

import pandas as pd
from pyarrow import fs
from ray.tune import Callback

from study.results.tables import status, train_overrides
from study.spec.presets import StudyConfig
from study.storage import filesystem_and_path

logger = logging.getLogger(__name__)
TRIAL_ID = re.compile(r"_([0-9a-z]+_\d{5})_")  # Tune's trial ids: PREFIX_NNNNN
LATEST_KEPT = 2  # a running trial's latest two: one that fails to load gives way to the other
SAVES_REMEMBERED = 2  # experiment states whose checkpoints stay: the last, and the one before


class CheckpointKeeper(Callback):
    """Drops checkpoints as the study goes, at a cost that does not grow with it.

    A running trial, at each new checkpoint: all but its latest two and those named by the
    last two saved experiment states (from which a killed driver resumes: Tune saves that
    state now and then, so it may name an older checkpoint; the one before the last, in case
    the last never reached the storage). Tune's own `num_to_keep` does the first but forces
    a save of the whole experiment state whenever a trial has checkpointed that often, which
    makes a study's cost grow with the square of its trials (docs/performance.md).

    A finished trial, as it ends: beyond the `keep_checkpoints` best, all; among them, all
    but the latest. The disk holds the running trials' checkpoints and the kept ones
    (study.driver.memory.disk_need), not every finished trial's. A trial outside the best N
    when it is dropped can never re-enter them: later trials only push it down. A trial end
    touches the folders of that trial and of the one it pushes out, no others."""

    def __init__(self, study: StudyConfig, experiment: str):
        self.study, self.experiment = study, experiment
        self.kept: list[tuple[tuple, object]] = []  # (rank, trial) of the best, best first
        # trial id -> (the running trial, the checkpoints the last saved states name)
        self.running: dict[str, tuple[object, deque]] = {}

    def __getstate__(self) -> dict:
        # Trials are the driver's; a restore starts anew
        return {**self.__dict__, "kept": [], "running": {}}

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        _, named = self.running.setdefault(trial.trial_id, (trial, deque(maxlen=SAVES_REMEMBERED)))
        self.drop(trial, keep_latest=LATEST_KEPT, keep=named)

    def get_state(self) -> None:
        """Called by Tune as it saves its experiment state: each running trial's latest
        checkpoint is the one that state names. Nothing of this callback is saved."""
        for trial, named in self.running.values():
            if trial.checkpoint is not None:
                named.append(trial.checkpoint.path)
        return None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.finished(trial, "ERROR")

    def finished(self, trial, tune_status: str) -> None:
        self.running.pop(trial.trial_id, None)
        keep = self.study.keep_checkpoints
        if keep == 0:  # every trial keeps its latest two
            self.drop(trial, keep_latest=LATEST_KEPT)
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

    def drop(self, trial, keep_latest: int, keep=()) -> None:
        try:
            filesystem = trial.storage.storage_filesystem
            drop_trial_checkpoints(filesystem, trial.path, keep_latest, keep)
        except OSError as error:  # e.g. a storage hiccup: a later checkpoint or end retries
            logger.warning("checkpoints of trial %s not dropped yet: %s", trial.trial_id, error)


def _first(item: tuple) -> tuple:
    return item[0]


def rank(status: str, cv_score: float | None) -> tuple:
    """Sorts finished trials best first: completed before pruned and errored, then by
    cross-validated score, highest first (none last)."""
    score = cv_score if cv_score is not None and math.isfinite(cv_score) else -math.inf
    return (status != "completed", -score)


def trial_checkpoints(filesystem: fs.FileSystem, folder: str) -> list[str]:
    """A trial's checkpoint folders, oldest first."""
    items = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in items if i.base_name.startswith("checkpoint_"))


def drop_trial_checkpoints(
    filesystem: fs.FileSystem, folder: str, keep_latest: int, keep=()
) -> list[str]:
    """Delete a trial's checkpoints but its `keep_latest` latest and the paths in `keep`;
    the paths deleted."""
    checkpoints = trial_checkpoints(filesystem, folder)
    older = checkpoints[: len(checkpoints) - keep_latest] if keep_latest else checkpoints
    kept = {path.rstrip("/") for path in keep}
    doomed = [path for path in older if path.rstrip("/") not in kept]
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
