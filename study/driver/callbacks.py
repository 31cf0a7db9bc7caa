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

from mtl import is_active
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
    """One row per trial: configuration, status, epoch, cross-validated score; and the best."""

    def __init__(self, study: StudyConfig):
        self.study = study
        self.rows: dict[str, dict] = {}
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
        )
        return self.rows.setdefault(
            trial.trial_id,
            {"label": label or "base", "status": "running", "epoch": 0, "epochs": epochs,
             "score": None, "best": None},
        )  # fmt: skip

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["status"] = "running"
        self.refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        row.update(epoch=int(result["epoch"]), score=float(result["cv_score"]), status="running")
        row["best"] = max(row["best"] or row["score"], row["score"])
        self.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        row["status"] = status("TERMINATED", row["epoch"], row["epochs"])
        self.refresh()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial)["status"] = "errored"
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
        for trial_id, row in self.rows.items():
            style = STATUS_STYLE.get(row["status"], "")
            table.add_row(
                trial_id,
                row["label"],
                f"[{style}]{row['status']}[/]" if style else row["status"],
                f"{row['epoch']}/{row['epochs']}",
                "-" if row["score"] is None else f"{row['score']:.3f}",
                "-" if row["best"] is None else f"{row['best']:.3f}",
            )
        scored = [(r["best"], r["label"]) for r in self.rows.values() if r["best"] is not None]
        if scored:
            best, label = max(scored)
            table.caption = f"best so far: {label} (cv score {best:.3f})"
        return table


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
