"""A compact progress display for the driver, instead of Ray's raw status tables."""

from __future__ import annotations

from ray.tune import Callback
from rich.console import Console

from study.presets import StudyConfig


class StudyProgress(Callback):
    """One line per trial and epoch: configuration, epoch, cross-validated score."""

    def __init__(self, study: StudyConfig):
        self.study = study  # no Console here: Tune pickles its callbacks, a Console has locks

    @property
    def console(self) -> Console:
        from study.run import console

        return console

    def _label(self, trial) -> str:
        return ", ".join(f"{k}={trial.config.get(k)}" for k in self.study.grid) or trial.trial_id

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epochs = self.study.train.replace(**trial.config).epochs
        self.console.print(
            f"  {self._label(trial)}  epoch {result['epoch']}/{epochs}  "
            f"score {result['cv_score']:.3f}  (pixel {result['cv_pixel_acc']:.3f}, "
            f"pattern {result['cv_pattern_acc']:.3f}, intensity {result['cv_intensity_acc']:.3f})"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.console.print(f"  [red]{self._label(trial)} failed[/red]")
