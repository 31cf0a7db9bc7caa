"""A trainer with no model, for testing and timing what drives trainers: a study's fold
workers, Tune's scheduling, the epoch loop. It keeps the Trainer contract (mtl/loop.py); every
metric of an epoch is one number, `score()`, which a subclass scripts from the configuration,
the fold and the epoch. The tests' doubles and bench/study_scale.py build on it.
"""

from __future__ import annotations

import math

from mtl.schema import TASKS, EpochMetrics, SplitMetrics

PATTERN_COUNTS = tuple(tuple(0 for _ in range(7)) for _ in range(7))
INTENSITY_COUNTS = ((0, 0), (0, 0))


def uniform_epoch(epoch: int, value: float, tasks: tuple[str, ...] = TASKS) -> EpochMetrics:
    """An epoch whose every accuracy, Dice and IoU of `tasks` is `value` on both splits
    (losses 1 - value), with empty confusion counts and unit task weights; the other tasks'
    metrics and weights null, as a fold that does not train them reports them."""
    split = SplitMetrics(
        patches=1, loss=0.0, loss_seg=1 - value, loss_pattern=1 - value,
        loss_intensity=1 - value, pixel_acc=value, dice=value, iou=value, pattern_acc=value,
        pattern_mca=value, intensity_acc=value, pattern_confusion=PATTERN_COUNTS,
        intensity_confusion=INTENSITY_COUNTS,
    ).only(tasks)  # fmt: skip
    weights = tuple(1.0 if task in tasks else math.nan for task in TASKS)
    return EpochMetrics(epoch=epoch, train=split, val=split, weights=weights, seconds=0.0)


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
        return uniform_epoch(self.epoch, self.score(), self.config.tasks)

    def state_dict(self) -> dict:
        # Plain values, no tensor: a process stepping it never loads torch (mtl/loop.py).
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
