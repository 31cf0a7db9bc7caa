"""The Tune trainable: one trial is one configuration, trained on every fold in lockstep.

It adapts `mtl.train.train_fold` to `tune.report` and does nothing else: each epoch, every
fold trains and validates once, and the trial reports the fold-mean (cross-validated)
metrics that ASHA and Optuna see, plus each fold's metrics for the Parquet tables.
"""

from __future__ import annotations

import torch
from ray import tune

from mtl.config import TrainConfig
from mtl.train import train_fold
from study.results import epoch_report


def run_trial(
    overrides: dict, *, base: TrainConfig, folds: tuple[str, ...], threads: int = 1
) -> None:
    torch.set_num_threads(threads)
    config = base.replace(**overrides)
    runs = {fold: train_fold(config, fold) for fold in folds}
    for _ in range(config.epochs):
        tune.report(epoch_report({fold: next(run) for fold, run in runs.items()}))
