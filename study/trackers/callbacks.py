"""The Tune callbacks of the experiment trackers (study/trackers/backends.py says what they log)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.result import TRAINING_ITERATION

from study.spec.presets import StudyConfig
from study.trackers.backends import (
    cv_metrics,
    find_runs,
    mlflow_target,
    trial_params,
    trial_tags,
    wandb_mode,
    wandb_project,
    wandb_run_id,
    wandb_tags,
)

logger = logging.getLogger(__name__)


def never_fatal(method):
    """A tracker's failure during the study (a server gone away) is logged once and switches
    that tracker off, instead of raising: the study's own tables are the record, Tune would end
    the study on a callback's error, and a dead server would cost minutes of retries a call."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if getattr(self, "failed", False):
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any tracker error, by design
            self.failed = True
            logger.warning(
                "%s: %s failed, so this tracker is off for the rest of the study (the study "
                "goes on; its folder has every number): %s",
                type(self).__name__, method.__name__, error,
            )  # fmt: skip
            return None

    return guarded


def tracker_callbacks(names: Sequence[str], study: StudyConfig, folder: Path) -> list:
    """The Tune callbacks of the trackers NAMES (already checked by check_trackers)."""
    factories = {"mlflow": StudyMLflowCallback, "wandb": StudyWandbCallback}
    return [factories[name](study, folder) for name in names]


class StudyMLflowCallback(MLflowLoggerCallback):
    """One MLflow run per trial: active parameters, cv_* per epoch, study and trial tags."""

    def __init__(self, study: StudyConfig, folder: Path):
        uri, experiment, self.artifact_location = mlflow_target(study.name, folder)
        super().__init__(tracking_uri=uri, experiment_name=experiment)
        self.study_name, self.base, self.folder = study.name, study.train, Path(folder)

    def setup(self, *args, **kwargs) -> None:
        # Not guarded: a tracker that cannot be reached stops the study before any trial.
        self.mlflow_util.setup_mlflow(
            tracking_uri=self.tracking_uri,
            experiment_name=self.experiment_name,
            artifact_location=self.artifact_location,
        )
        self.tags = {}
        self._trial_runs = {}

    @never_fatal
    def log_trial_start(self, trial) -> None:
        if trial in self._trial_runs:
            return
        client = self.mlflow_util._get_client()
        tags = trial_tags(self.study_name, self.folder, trial)
        # A resumed driver continues the trial's run instead of starting a second one.
        (run,) = find_runs(client, self.mlflow_util.experiment_id, tags) or [
            client.create_run(self.mlflow_util.experiment_id, run_name=trial.trial_id, tags=tags)
        ]
        self._trial_runs[trial] = run.info.run_id
        from mlflow.entities import Param

        params = trial_params(self.base, trial.config)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    @never_fatal
    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        step, timestamp = int(result["epoch"]), int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, v, timestamp, step) for k, v in cv_metrics(result).items()]
        self.mlflow_util._get_client().log_batch(self._trial_runs[trial], metrics=metrics)

    @never_fatal
    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_runs:  # Tune ends trials that never started, too
            super().log_trial_end(trial, failed)


class StudyWandbCallback(WandbLoggerCallback):
    """One W&B run per trial, grouped by study: active parameters and trial ids in its
    config, cv_* per epoch."""

    def __init__(self, study: StudyConfig, folder: Path):
        self.mode = wandb_mode()
        super().__init__(
            project=wandb_project(),
            group=study.name,
            log_config=False,
            # Ray waits this long for the runs to finish uploading when the study ends.
            upload_timeout=300,
            dir=str(Path(folder).resolve()),
            mode=self.mode,
            tags=wandb_tags(study.name),
        )
        self.study_name, self.base, self.folder = study.name, study.train, Path(folder)

    def setup(self, *args, **kwargs) -> None:
        # Ray's setup insists on an API key unless WANDB_MODE says offline or disabled; the
        # variable is set for that check only, not left in the caller's environment.
        before = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = self.mode
        try:
            super().setup(*args, **kwargs)
        finally:
            if before is None:
                del os.environ["WANDB_MODE"]
            else:
                os.environ["WANDB_MODE"] = before

    @never_fatal
    def log_trial_start(self, trial) -> None:
        tags = trial_tags(self.study_name, self.folder, trial)
        self._start_logging_actor(
            trial,
            [*self._exclude_results, *self.excludes, "config"],
            id=wandb_run_id(self.folder, trial.trial_id),
            name=trial.trial_id,
            resume="allow",  # a resumed driver continues the trial's run
            allow_val_change=True,
            group=self.group,
            project=self.project,
            config={**trial_params(self.base, trial.config), **tags},
            **self.kwargs,
        )

    @never_fatal
    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        # Only the cross-validated metrics; the epoch is the step.
        epoch = int(result["epoch"])
        super().log_trial_result(
            iteration, trial, {**cv_metrics(result), "epoch": epoch, TRAINING_ITERATION: epoch}
        )

    @never_fatal
    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_queues:  # Tune ends trials that never started, too
            super().log_trial_end(trial, failed)

    @never_fatal
    def on_experiment_end(self, trials, **info) -> None:
        # A study stopped by a signal ends its running trials without log_trial_end: their
        # logging actors are told to finish here, or Ray would wait out upload_timeout.
        for trial in list(self._trial_queues):
            if trial in self._trial_logging_futures:
                self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
