"""What every result table holds, without torch: the metric records, the metric lists, the
study's score and the column names. Training, the study, the report and the results reader
all import these from here, so that each is defined once and reading results needs no torch.

`EpochMetrics` is what `study` receives from a fold, once per epoch: a frozen dataclass
with the training split (running means over the epoch) and the validation split.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from mtl.labels import INTENSITIES, PATTERNS

NAN = math.nan
TASKS = ("seg", "pattern", "intensity")  # the order of losses and task weights everywhere
VOTE_LEVELS = ("image", "patient")

# The study's score, what ASHA and Optuna maximise: the mean of these validation accuracies.
SCORE_METRICS = ("pixel_acc", "pattern_acc", "intensity_acc")
# Validation metrics averaged over folds (`cv_<metric>`) in every trial's report.
CV_METRICS = (
    "loss", "loss_seg", "loss_pattern", "loss_intensity",
    "pixel_acc", "dice", "iou", "pattern_acc", "pattern_mca", "intensity_acc",
    "image_pattern_acc", "image_intensity_acc",
    "patient_pattern_acc", "patient_pattern_mca", "patient_intensity_acc",
)  # fmt: skip
# Every metric a comparison or a test estimate reports, with its level; `score` first.
METRIC_LEVELS = {
    "score": "patch",
    "pixel_acc": "patch",
    "dice": "patch",
    "iou": "patch",
    "pattern_acc": "patch",
    "pattern_mca": "patch",
    "intensity_acc": "patch",
    "image_pattern_acc": "image",
    "image_pattern_mca": "image",
    "image_intensity_acc": "image",
    "patient_pattern_acc": "patient",
    "patient_pattern_mca": "patient",
    "patient_intensity_acc": "patient",
}
# The identifying columns of epochs.parquet (and of `python -m mtl.train`'s epochs table).
ID_COLUMNS = ("trial_id", "fold", "epoch", "split")


def score(values) -> float:
    """The score of a row or mapping of metrics: the mean of SCORE_METRICS (NaN if any is)."""
    return float(np.mean([values[m] for m in SCORE_METRICS]))


@dataclass(frozen=True, kw_only=True)
class SplitMetrics:
    patches: int
    loss: float  # the unweighted sum of the three task losses
    loss_seg: float
    loss_pattern: float
    loss_intensity: float
    pixel_acc: float  # both classes, as the original study's "mask accuracy"
    dice: float  # foreground (cells), over all pixels of the split
    iou: float
    pattern_acc: float
    pattern_mca: float  # mean class accuracy: the mean recall of the classes present
    intensity_acc: float
    pattern_confusion: tuple[tuple[int, ...], ...]  # 7x7, rows true, columns predicted
    intensity_confusion: tuple[tuple[int, ...], ...]  # 2x2
    # Majority votes; validation only (NaN for the training split).
    image_pattern_acc: float = NAN
    image_pattern_mca: float = NAN
    image_intensity_acc: float = NAN
    patient_pattern_acc: float = NAN
    patient_pattern_mca: float = NAN
    patient_intensity_acc: float = NAN
    patient_pattern_confusion: tuple[tuple[int, ...], ...] = ()  # 7x7, validation only
    patient_intensity_confusion: tuple[tuple[int, ...], ...] = ()  # 2x2, validation only

    @property
    def pattern_recall(self) -> tuple[float, ...]:
        """Recall of every pattern (NaN for a pattern absent from the split)."""
        return tuple(recalls(np.asarray(self.pattern_confusion)))

    def flat(self) -> dict[str, float]:
        """Scalars only: confusion matrices and recalls become one column per cell."""
        row = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.name.endswith("_confusion")
        }
        row.update({f"recall_{p}": r for p, r in zip(PATTERNS, self.pattern_recall, strict=True)})
        for name, labels in (
            ("pattern", PATTERNS),
            ("intensity", INTENSITIES),
            ("patient_pattern", PATTERNS),
            ("patient_intensity", INTENSITIES),
        ):
            matrix = getattr(self, f"{name}_confusion")  # () for the training split's votes
            for t, true in enumerate(labels):
                for p, predicted in enumerate(labels):
                    row[f"cm_{name}_{true}_{predicted}"] = matrix[t][p] if matrix else NAN
        return row


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    epoch: int  # 1-based
    train: SplitMetrics
    val: SplitMetrics
    weights: tuple[float, ...]  # task weights at the end of the epoch, TASKS order
    skipped_steps: int = 0  # steps with a non-finite task loss, left out of the update
    seconds: float  # training and validation wall time
    data_seconds: float = 0.0  # of which the training loop waited for the data loader

    def rows(self) -> list[dict]:
        """One flat row per split, the layout of epochs.parquet."""
        shared = {f"weight_{task}": w for task, w in zip(TASKS, self.weights, strict=True)}
        shared["skipped_steps"] = self.skipped_steps
        shared["seconds"] = self.seconds
        shared["data_seconds"] = self.data_seconds
        return [
            {"epoch": self.epoch, "split": split, **metrics.flat(), **shared}
            for split, metrics in (("train", self.train), ("val", self.val))
        ]


def recalls(confusion: np.ndarray) -> np.ndarray:
    """Recall of every class of a confusion matrix (rows true); NaN for a class without examples."""
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)
