"""A trainer with no model, for testing and timing what drives trainers: a study's fold
workers, Tune's scheduling, the epoch loop. It keeps the Trainer contract (mtl/loop.py); every
metric of an epoch is one number, `score()`, which a subclass scripts from the configuration,
the fold and the epoch. The tests' doubles and bench/study_scale.py build on it.
"""

from __future__ import annotations

import torch

from mtl.schema import EpochMetrics, SplitMetrics

PATTERN_COUNTS = tuple(tuple(0 for _ in range(7)) for _ in range(7))
INTENSITY_COUNTS = ((0, 0), (0, 0))


def uniform_epoch(epoch: int, value: float) -> EpochMetrics:
    """An epoch whose every accuracy, Dice and IoU is `value` on both splits (loss 1 - value),
    with empty confusion counts and unit task weights."""
    split = SplitMetrics(
        patches=1, loss=1 - value, loss_seg=0.0, loss_pattern=0.0, loss_intensity=0.0,
        pixel_acc=value, dice=value, iou=value, pattern_acc=value, pattern_mca=value,
        intensity_acc=value, pattern_confusion=PATTERN_COUNTS,
        intensity_confusion=INTENSITY_COUNTS,
    )  # fmt: skip
    return EpochMetrics(epoch=epoch, train=split, val=split, weights=(1.0, 1.0, 1.0), seconds=0.0)


class ScriptedTrainer:
    """The Trainer contract with no model: each epoch's metrics are all `score()`."""

    device = "cpu"

    def __init__(self, config, fold: str):
        self.config, self.fold, self.epoch = config, fold, 0

    def score(self) -> float:
        """The value of every metric this epoch (self.epoch is the epoch being run)."""
        return 0.5

    def run_epoch(self, progress=None) -> EpochMetrics:
        self.epoch += 1
        return uniform_epoch(self.epoch, self.score())

    def state_dict(self) -> dict:
        return {"epoch": torch.tensor(self.epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
