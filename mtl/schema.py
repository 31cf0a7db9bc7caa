"""What every result table holds, without torch: the metric records, the metric lists, the
study's score and the column names. Training, the study, the report and the results reader
all import these from here, so that each is defined once and reading results needs no torch.

`EpochMetrics` is what `study` receives from a fold, once per epoch: a frozen dataclass
with the training split (running means over the epoch) and the validation split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtl.formulas import recalls
from mtl.labels import INTENSITIES, PATTERNS

NAN = math.nan
TASKS = ("seg", "pattern", "intensity")  # the order of losses and task weights everywhere
# The SplitMetrics numbers and confusion matrices of each task: null (NaN, no matrix) where
# a fold does not train the task (TrainConfig.tasks: a single-task baseline, or a pair).
TASK_METRICS = {
    "seg": ("loss_seg", "pixel_acc", "dice", "iou"),
    "pattern": ("loss_pattern", "pattern_acc", "pattern_mca", "image_pattern_acc",
                "image_pattern_mca", "patient_pattern_acc", "patient_pattern_mca"),
    "intensity": ("loss_intensity", "intensity_acc", "image_intensity_acc",
                  "patient_intensity_acc"),
}  # fmt: skip
TASK_CONFUSIONS = {
    "seg": (),
    "pattern": ("pattern_confusion", "patient_pattern_confusion"),
    "intensity": ("intensity_confusion", "patient_intensity_confusion"),
}
# Which way each metric is better: +1 higher (accuracies, Dice, IoU), -1 lower (losses).
# Δm, the per-task fronts and a multi-objective search read it.
METRIC_DIRECTIONS = {
    **{m: 1 for task in TASKS for m in TASK_METRICS[task] if not m.startswith("loss")},
    **{f"loss_{task}": -1 for task in TASKS},
    "loss": -1,
}
VOTE_LEVELS = ("image", "patient")

# The study's score, what ASHA and Optuna maximise: the mean of these validation accuracies.
SCORE_METRICS = ("pixel_acc", "pattern_acc", "intensity_acc")
# Each task's headline metric by default (a study's task_metrics): the score's, task by task.
TASK_HEADLINES = dict(zip(TASKS, SCORE_METRICS, strict=True))
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
# The confusion matrices a split keeps: (level, task, labels); confusions.parquet's rows.
CONFUSION_MATRICES = (
    ("patch", "pattern", PATTERNS),
    ("patch", "intensity", INTENSITIES),
    ("patient", "pattern", PATTERNS),
    ("patient", "intensity", INTENSITIES),
)
CONFUSION_LABELS = {(level, task): labels for level, task, labels in CONFUSION_MATRICES}
# The identifying columns of epochs.parquet (and of `python -m mtl.train`'s epochs table).
ID_COLUMNS = ("trial_id", "fold", "epoch", "split")


def score_metrics_at(level: str) -> tuple[str, ...]:
    """The metrics whose mean is the score at `level` (METRIC_LEVELS' levels): at a vote level,
    each of SCORE_METRICS by that level's votes where there is one (pixels are not voted on,
    so pixel accuracy stays the patch level's)."""
    if level == "patch":
        return SCORE_METRICS
    if level not in VOTE_LEVELS:
        raise ValueError(
            f"unknown level {level!r}; expected one of patch, {', '.join(VOTE_LEVELS)}"
        )
    return tuple(f"{level}_{m}" if f"{level}_{m}" in METRIC_LEVELS else m for m in SCORE_METRICS)


def score(values, metrics: Sequence[str] = SCORE_METRICS):
    """The study's score: the mean of `metrics` (by default SCORE_METRICS; a study's own
    `score_metrics`, or `score_metrics_at(level)`) in `values`, NaN where any of them is NaN.

    `values` is anything indexed by metric name: a mapping or a table row gives a float; a
    table (DataFrame: a Series, index kept) or a mapping of arrays gives one score per row.
    """
    if not metrics:
        raise ValueError("a score needs at least one metric")
    mean = sum(values[m] for m in metrics) / len(metrics)  # NaN propagates, unlike nanmean
    return float(mean) if np.ndim(mean) == 0 else mean


@dataclass(frozen=True, kw_only=True)
class SplitMetrics:
    patches: int
    loss: float  # the unweighted sum of the task losses (of the tasks trained)
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

    def only(self, tasks: Sequence[str]) -> SplitMetrics:
        """These metrics of a fold that trains `tasks` only: every other task's numbers NaN
        and its confusion matrices gone (null in every table, never zero), and `loss` the
        sum of the trained tasks' losses."""
        absent = [task for task in TASKS if task not in tasks]
        changes: dict[str, object] = {m: NAN for task in absent for m in TASK_METRICS[task]}
        changes |= {m: () for task in absent for m in TASK_CONFUSIONS[task]}
        changes["loss"] = sum(getattr(self, f"loss_{task}") for task in tasks)
        return dataclasses.replace(self, **changes)

    @property
    def pattern_recall(self) -> tuple[float, ...]:
        """Recall of every pattern (NaN for a pattern absent from the split, and all NaN in
        a fold that does not train the pattern)."""
        if not self.pattern_confusion:
            return (NAN,) * len(PATTERNS)
        return tuple(recalls(np.asarray(self.pattern_confusion)))

    def flat(self) -> dict[str, float]:
        """Scalars only, the columns of epochs.parquet: the recall of every pattern instead
        of the matrices (those go to confusions.parquet, `confusions()`)."""
        row = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.name.endswith("_confusion")
        }
        row.update({f"recall_{p}": r for p, r in zip(PATTERNS, self.pattern_recall, strict=True)})
        return row

    def matrices(self) -> list[tuple[str, str, tuple[tuple[int, ...], ...]]]:
        """(level, task, matrix) of every confusion matrix the split has (in
        CONFUSION_MATRICES order; the training split has no patient votes)."""
        found = []
        for level, task, _ in CONFUSION_MATRICES:
            prefix = "" if level == "patch" else f"{level}_"
            matrix = getattr(self, f"{prefix}{task}_confusion")
            if matrix:
                found.append((level, task, matrix))
        return found

    def confusions(self) -> list[dict]:
        """Every cell of the confusion matrices, long: level (patch or patient), task, true,
        predicted, count."""
        return [
            cell
            for level, task, matrix in self.matrices()
            for cell in confusion_matrix_cells(level, task, matrix)
        ]


def confusion_matrix_cells(level: str, task: str, matrix) -> list[dict]:
    """The cells of one confusion matrix (rows true, columns predicted), long."""
    labels = CONFUSION_LABELS[level, task]
    return [
        {"level": level, "task": task, "true": true, "predicted": predicted,
         "count": int(matrix[t][p])}
        for t, true in enumerate(labels)
        for p, predicted in enumerate(labels)
    ]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    epoch: int  # 1-based
    train: SplitMetrics
    val: SplitMetrics
    weights: tuple[float, ...]  # task weights at the end of the epoch, TASKS order (NaN:
    # a task the fold does not train)
    skipped_steps: int = 0  # steps with a non-finite task loss, left out of the update
    seconds: float  # training and validation wall time
    data_seconds: float = 0.0  # of which the training loop waited for the data loader

    def rows(self) -> list[dict]:
        """One flat row per split, the layout of epochs.parquet. What belongs to the epoch
        rather than to a split (task weights, skipped steps, wall-clock seconds) is on the
        training row only, so that summing a column never counts an epoch twice."""
        epoch = {f"weight_{task}": w for task, w in zip(TASKS, self.weights, strict=True)}
        epoch["skipped_steps"] = self.skipped_steps
        epoch["seconds"] = self.seconds
        epoch["data_seconds"] = self.data_seconds
        return [
            {"epoch": self.epoch, "split": "train", **self.train.flat(), **epoch},
            {"epoch": self.epoch, "split": "val", **self.val.flat(), **dict.fromkeys(epoch)},
        ]

    def confusion_rows(self) -> list[dict]:
        """The confusion cells of both splits, the layout of confusions.parquet."""
        return [
            {"epoch": self.epoch, "split": split, **cell}
            for split, metrics in (("train", self.train), ("val", self.val))
            for cell in metrics.confusions()
        ]
