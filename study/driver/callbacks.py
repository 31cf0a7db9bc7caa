"""Driver-side Tune callbacks: a live view of the study, and its Parquet tables kept current.

Tune pickles its callbacks when it starts; neither holds a rich Console or Live (they have
locks) until `setup()` runs in the driver.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mtl import TASKS, is_active
from study.results.files import write_trial
from study.results.foldlog import FoldLogReader
from study.results.rebuild import driver_provenance
from study.results.tables import record, status, study_tables, train_overrides
from study.spec.presets import StudyConfig

STATUS_STYLE = {"completed": "green", "pruned": "yellow", "errored": "red", "running": "cyan"}


class ResultsWriter(Callback):
    """Writes each trial's rows of epochs, trials and confusions as the trial ends, as the
    trial's own files (study/results/files.py): a crash of the driver never loses a finished
    trial, and a trial end costs that trial's rows alone, however many came before.
    `experiment`: where the fold logs are (the study's experiment folder or URI: a local
    folder, file://, s3://, gs://). The end of the study compacts them (tuner.execute)."""

    def __init__(self, study: StudyConfig, folder: Path, experiment: str):
        self.study, self.folder, self.experiment = study, folder, experiment
        self.fold_logs: FoldLogReader | None = None  # made in the driver, not pickled
        self.provenance: dict | None = None  # study.json's, read once

    def __getstate__(self) -> dict:
        return {**self.__dict__, "fold_logs": None, "provenance": None}

    def write(self, trial) -> None:
        if self.fold_logs is None:
            self.fold_logs = FoldLogReader(self.experiment)
            study_file = json.loads((self.folder / "study.json").read_text())
            self.provenance = driver_provenance(study_file)
        # live: a trial's result.json is current in the driver's staging folder, and only
        # copied to the experiment's storage (maybe a bucket) now and then (trial_folders).
        tables = study_tables(
            [record(trial, self.fold_logs, live=True)],
            self.study.train,
            self.study.score_metrics,
            self.provenance,
        )
        write_trial(self.folder, tables, self.study.name, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.write(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.write(trial)


class LiveView(Callback):
    """One row per trial: configuration, status, epoch, cross-validated score; and the best.
    Every running trial is shown and, up to MAX_ROWS, the latest to end; the caption counts
    the rest. A refresh costs the rows shown, not the study's trials."""

    MAX_ROWS = 20

    def __init__(self, study: StudyConfig):
        self.study = study
        self.rows: dict[str, dict] = {}  # by trial, in the order they started
        self.running: dict[str, None] = {}  # an ordered set
        self.ended: dict[str, None] = {}  # the latest MAX_ROWS to end, oldest first
        self.best: tuple[float, str] | None = None  # (score, configuration)
        self.live: Live | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "live": None}

    def setup(self, **info) -> None:
        self.live = Live(self.render(), console=Console(), refresh_per_second=2)
        self.live.start()

    def _row(self, trial) -> dict:
        config = train_overrides(trial.config)
        epochs = self.study.train.replace(**config).epochs
        balancer = config.get("balancer", self.study.train.balancer)
        label = ", ".join(
            f"{k}={_short(config[k])}"
            for k in self.study.varying
            if k in config and is_active(k, balancer)
            and not (k == "tasks" and tuple(_short(config[k]).split(",")) == TASKS)
        )  # fmt: skip
        return self.rows.setdefault(
            trial.trial_id,
            {"label": label or "base", "status": "running", "epoch": 0, "epochs": epochs,
             "score": None, "best": None},
        )  # fmt: skip

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["status"] = "running"
        self.running[trial.trial_id] = None
        self.refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row.update(epoch=int(result["epoch"]), score=float(result["cv_score"]), status="running")
        row["best"] = max(row["best"] or row["score"], row["score"])
        if row["best"] == row["best"] and (self.best is None or row["best"] > self.best[0]):
            self.best = (row["best"], row["label"])  # NaN never is
        self.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        self._end(trial, status("TERMINATED", row["epoch"], row["epochs"]))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "errored")

    def _end(self, trial, ended: str) -> None:
        self._row(trial)["status"] = ended
        self.running.pop(trial.trial_id, None)
        self.ended[trial.trial_id] = None
        while len(self.ended) > self.MAX_ROWS:
            del self.ended[next(iter(self.ended))]
        self.refresh()

    def on_experiment_end(self, trials, **info) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live.console.print()  # the caption ends without a newline

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def render(self) -> Table:
        table = Table(
            title=f"study {self.study.name}: {len(self.rows)}/{self.study.num_trials} trials"
        )
        for column in ("trial", "configuration", "status", "epoch", "cv score", "best"):
            table.add_column(
                column, justify="right" if column in ("epoch", "cv score", "best") else "left"
            )
        room = max(self.MAX_ROWS - len(self.running), 0)
        ended = list(self.ended)[-room:] if room else []
        shown = [*ended, *self.running]
        for trial_id in shown:
            row = self.rows[trial_id]
            style = STATUS_STYLE.get(row["status"], "")
            table.add_row(
                trial_id,
                row["label"],
                f"[{style}]{row['status']}[/]" if style else row["status"],
                f"{row['epoch']}/{row['epochs']}",
                _score(row["score"]),
                _score(row["best"]),
            )
        captions = []
        if len(self.rows) > len(shown):
            captions.append(f"{len(self.rows) - len(shown)} earlier trials not shown")
        if self.best is not None:
            captions.append(f"best so far: {self.best[1]} (cv score {self.best[0]:.3f})")
        table.caption = "; ".join(captions) or None
        return table


def _short(value) -> str:
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # tasks, as --set writes them
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _score(value: float | None) -> str:
    """A score as the live view shows it: '-' for none yet, or none at all (a single-task
    baseline's score, the mean of three tasks' metrics, is NaN)."""
    return "-" if value is None or value != value else f"{value:.3f}"
