"""Studies from Python (a notebook, a script): the command line's study, as functions.

    from study import load, run_preset

    tables = run_preset("smoke", results="results", overrides={"epochs": 3})
    tables.trials[["seg_loss", "cv_score", "cv_score_std"]]
    trials = load("results/*")                     # every study in the folder, typed

`run_preset` is `python -m study.run` without the report: the same checks, the same study
folder, resumed when it exists.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study.results.files import load
from study.spec.presets import StudyConfig, apply_overrides, get_preset


@dataclass(frozen=True)
class StudyTables:
    """A study's tables, typed as `study.results.load` reads them."""

    folder: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    confusions: pd.DataFrame
    stats: pd.DataFrame | None  # after the trials: the fold-paired comparison with the best


def run_preset(
    study: str | StudyConfig = "demo",
    results: str | os.PathLike = "results",
    *,
    overrides: Mapping[str, object] | None = None,
    name: str | None = None,
    cpus: int | None = None,
    trackers: Sequence[str] = (),
) -> StudyTables:
    """Run (or resume) a preset by name, or a StudyConfig, with TrainConfig `overrides` as
    typed values (`{"epochs": 3, "decoder_channels": (64, 32, 16, 8, 8)}`), on the Ray
    instance already started or on a new local one sized to `cpus` (default: every CPU),
    which is shut down afterwards. `trackers`: "mlflow", "wandb", as --tracker (the
    study-level run gets the statistics; the report is study.report's). Raises
    StudyInterrupted, after the tables are written, when a signal stopped it."""
    from study.driver.prepare import StudyRequest
    from study.driver.tuner import run_study
    from study.trackers.backends import log_study

    config = get_preset(study) if isinstance(study, str) else study
    config = apply_overrides(config, overrides or {})
    if name:
        config = dataclasses.replace(config, name=name)
    request = StudyRequest(config, Path(results), cpus=cpus, trackers=tuple(trackers))
    run_study(request)
    if request.trackers:
        log_study(request.trackers, config.name, request.folder, ())
    return tables(request.folder)


def tables(folder: str | os.PathLike) -> StudyTables:
    """The tables of one study folder, typed."""
    folder = Path(folder)
    has_stats = (folder / "stats.parquet").is_file()
    return StudyTables(
        folder=folder,
        trials=load(folder, "trials"),
        epochs=load(folder, "epochs"),
        confusions=load(folder, "confusions"),
        stats=load(folder, "stats") if has_stats else None,
    )
