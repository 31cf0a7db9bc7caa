"""The sums and votes that produce an epoch's metrics (`mtl.schema.SplitMetrics`).

Patch level: pixel accuracy over both classes (the original study's "mask accuracy"),
foreground Dice and IoU over all pixels of the split, pattern accuracy and mean class
accuracy, the 7x7 pattern and 2x2 intensity confusion matrices (rows true, columns
predicted, fixed labels). Image level (the patches of a specimen) and patient level (all of
a patient's patches): pattern and intensity by majority vote of the patches. Here the
counts are kept and the votes taken; `mtl.formulas` turns counts into metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch

from mtl import formulas
from mtl.labels import INTENSITIES, PATTERNS
from mtl.model import MultiTaskOutput
from mtl.schema import VOTE_LEVELS, SplitMetrics

# The tasks voted on: (task, number of classes).
VOTED_TASKS = (("pattern", len(PATTERNS)), ("intensity", len(INTENSITIES)))


def confusion(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """classes x classes counts, rows true, columns predicted; a missing class keeps its row."""
    flat = np.asarray(true, np.int64) * classes + np.asarray(predicted, np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


class RunningSums:
    """Per-epoch sums kept on the device, so that a step needs no host synchronisation."""

    def __init__(self, device: torch.device, threshold: float = 0.5):
        self.device = device
        self.logit_threshold = math.log(threshold / (1 - threshold))
        self.steps = 0  # batches added
        self.losses = torch.zeros(3, dtype=torch.float64, device=device)
        self.pixel_stats = torch.zeros(4, dtype=torch.int64, device=device)  # tp, fp, fn, tn
        k, m = len(PATTERNS), len(INTENSITIES)
        self.pattern_cm = torch.zeros(k * k, dtype=torch.int64, device=device)
        self.intensity_cm = torch.zeros(m * m, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(
        self,
        output: MultiTaskOutput,
        batch: dict[str, torch.Tensor],
        losses: Sequence[torch.Tensor],
    ) -> None:
        n = batch["pattern"].shape[0]
        self.steps += 1
        self.losses += torch.stack([loss.detach().double() for loss in losses]) * n
        # Binarise here: smp's `threshold` would binarise the target too, and a logit
        # threshold of 0 turns an all-background target into all cells.
        predicted = (output.mask.detach() > self.logit_threshold).long()
        stats = smp.metrics.get_stats(predicted, batch["mask"].long(), mode="binary")
        self.pixel_stats += torch.stack([s.sum() for s in stats])
        k, m = len(PATTERNS), len(INTENSITIES)
        # Counted into the fixed-size matrices by index_add_: torch.bincount sizes its output
        # from the data, which on a GPU waits for the device.
        pattern = batch["pattern"] * k + output.pattern.argmax(1)
        self.pattern_cm.index_add_(0, pattern, torch.ones_like(pattern))
        intensity = batch["intensity"].long() * m + (output.intensity > 0).long()
        self.intensity_cm.index_add_(0, intensity, torch.ones_like(intensity))

    def result(self, **votes: float) -> SplitMetrics:
        k, m = len(PATTERNS), len(INTENSITIES)
        pattern_cm = self.pattern_cm.view(k, k).cpu().numpy()
        intensity_cm = self.intensity_cm.view(m, m).cpu().numpy()
        n = int(pattern_cm.sum())
        seg, pattern, intensity = (self.losses / max(n, 1)).tolist()
        tp, fp, fn, tn = self.pixel_stats.cpu().numpy()
        return SplitMetrics(
            patches=n,
            loss=seg + pattern + intensity,
            loss_seg=seg,
            loss_pattern=pattern,
            loss_intensity=intensity,
            pixel_acc=float(formulas.pixel_accuracy(tp, fp, fn, tn)),
            dice=float(formulas.dice(tp, fp, fn)),
            iou=float(formulas.iou(tp, fp, fn)),
            pattern_acc=float(formulas.accuracy(pattern_cm)),
            pattern_mca=float(formulas.mean_class_accuracy(pattern_cm)),
            intensity_acc=float(formulas.accuracy(intensity_cm)),
            pattern_confusion=tuple(map(tuple, pattern_cm.tolist())),
            intensity_confusion=tuple(map(tuple, intensity_cm.tolist())),
            **votes,
        )


def majority_votes(
    index: pd.DataFrame, pattern_probs: np.ndarray, intensity_probs: np.ndarray
) -> dict[str, object]:
    """Image- and patient-level accuracy and mean class accuracy by majority vote (see
    `voted_labels`), and the patient-level confusion matrices."""
    result = {}
    for level in VOTE_LEVELS:
        voted = voted_labels(index, pattern_probs, intensity_probs, level)
        for task, classes in VOTED_TASKS:
            cm = confusion(voted[task], voted[f"predicted_{task}"], classes)
            result[f"{level}_{task}_acc"] = float(formulas.accuracy(cm))
            if task == "pattern":
                result[f"{level}_pattern_mca"] = float(formulas.mean_class_accuracy(cm))
            if level == "patient":
                result[f"patient_{task}_confusion"] = tuple(map(tuple, cm.tolist()))
    return result


def voted_labels(
    index: pd.DataFrame, pattern_probs: np.ndarray, intensity_probs: np.ndarray, level: str
) -> pd.DataFrame:
    """One row per specimen (`level` "image") or patient ("patient") of the patches of
    `index`, sorted: its patient, its true pattern and intensity and the predicted ones
    (`predicted_pattern`, `predicted_intensity`), as label indices.

    `index` has one row per patch (patient, specimen, pattern, intensity), aligned with the
    predicted probabilities (patches x 7 patterns; patches of P(positive)). Each group gets
    the label most of its patches predict (`vote`).
    """
    if level not in VOTE_LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(VOTE_LEVELS)}")
    if level == "patient":
        groups = index.patient.to_numpy()
    else:  # a specimen is known by its patient and its number
        groups = index.patient.astype(str).to_numpy() + "/" + index.specimen.astype(str).to_numpy()
    patches = pd.DataFrame(
        {
            "patient": index.patient.to_numpy(),
            "pattern": index.pattern.map(PATTERNS.index).to_numpy(),
            "intensity": index.intensity.map(INTENSITIES.index).to_numpy(),
        }
    )
    voted = patches.groupby(groups).first()  # a patient's (so a specimen's) labels are one
    two_class = np.stack([1 - intensity_probs, intensity_probs], 1)
    voted["predicted_pattern"] = vote(groups, pattern_probs)
    voted["predicted_intensity"] = vote(groups, two_class)
    return voted


def vote(groups: np.ndarray, probs: np.ndarray) -> pd.Series:
    """The class most of each group's patches predict, indexed by group (sorted).

    `probs` is patches x classes. A tie goes to the tied class with the larger summed
    probability: counts come first, the summed probability (< 1 per patch) only breaks ties.
    """
    votes = np.eye(probs.shape[1])[probs.argmax(1)]
    score = votes + probs / (len(probs) + 1)
    grouped = pd.DataFrame(score).groupby(groups).sum()
    return pd.Series(grouped.to_numpy().argmax(1), index=grouped.index)
