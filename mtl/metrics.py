"""The sums and votes that produce an epoch's metrics (`mtl.schema.SplitMetrics`).

Patch level: pixel accuracy over both classes (the original study's "mask accuracy"),
foreground Dice and IoU over all pixels of the split, pattern accuracy and mean class
accuracy, the 7x7 pattern and 2x2 intensity confusion matrices (rows true, columns
predicted, fixed labels). Image level (the patches of a specimen) and patient level (all of
a patient's patches): pattern and intensity by majority vote of the patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch

from mtl.labels import INTENSITIES, PATTERNS
from mtl.model import MultiTaskOutput
from mtl.schema import NAN, VOTE_LEVELS, SplitMetrics, recalls


def mean_class_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes present: every class counts alike, whatever its size."""
    recalls_ = recalls(confusion)
    return float(np.nanmean(recalls_)) if np.isfinite(recalls_).any() else NAN


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
        tp, fp, fn, tn = self.pixel_stats.view(4, 1, 1).cpu()
        pixel_scores = {
            name: float(fn_(tp, fp, fn, tn, reduction="micro")) if n else NAN
            for name, fn_ in (
                ("pixel_acc", smp.metrics.accuracy),
                ("dice", smp.metrics.f1_score),
                ("iou", smp.metrics.iou_score),
            )
        }
        return SplitMetrics(
            patches=n,
            loss=seg + pattern + intensity,
            loss_seg=seg,
            loss_pattern=pattern,
            loss_intensity=intensity,
            **pixel_scores,
            pattern_acc=float(np.trace(pattern_cm) / n) if n else NAN,
            pattern_mca=mean_class_accuracy(pattern_cm),
            intensity_acc=float(np.trace(intensity_cm) / n) if n else NAN,
            pattern_confusion=tuple(map(tuple, pattern_cm.tolist())),
            intensity_confusion=tuple(map(tuple, intensity_cm.tolist())),
            **votes,
        )


def majority_votes(
    index: pd.DataFrame, pattern_probs: np.ndarray, intensity_probs: np.ndarray
) -> dict[str, object]:
    """Image- and patient-level accuracy and mean class accuracy by majority vote, and the
    patient-level confusion matrices.

    `index` has one row per patch (patient, specimen, pattern, intensity), aligned with the
    predicted probabilities (patches x 7 patterns; patches of P(positive)). Each specimen
    (image) and each patient gets the label most of its patches predict; a tie goes to the
    tied label with the larger summed probability.
    """
    patches = pd.DataFrame(
        {
            "image": index.patient.astype(str).to_numpy()
            + "/"
            + index.specimen.astype(str).to_numpy(),
            "patient": index.patient.to_numpy(),
            "pattern": index.pattern.map(PATTERNS.index).to_numpy(),
            "intensity": index.intensity.map(INTENSITIES.index).to_numpy(),
        }
    )
    intensity_probs = np.stack([1 - intensity_probs, intensity_probs], 1)
    result = {}
    for level in VOTE_LEVELS:
        for task, probs, classes in (
            ("pattern", pattern_probs, len(PATTERNS)),
            ("intensity", intensity_probs, len(INTENSITIES)),
        ):
            predicted = vote(patches[level].to_numpy(), probs)
            true = patches.groupby(level)[task].first().loc[predicted.index].to_numpy()
            cm = confusion(true, predicted.to_numpy(), classes)
            result[f"{level}_{task}_acc"] = float(np.trace(cm) / cm.sum())
            if task == "pattern":
                result[f"{level}_pattern_mca"] = mean_class_accuracy(cm)
            if level == "patient":
                result[f"patient_{task}_confusion"] = tuple(map(tuple, cm.tolist()))
    return result


def vote(groups: np.ndarray, probs: np.ndarray) -> pd.Series:
    """The class most of each group's patches predict, indexed by group (sorted).

    `probs` is patches x classes. A tie goes to the tied class with the larger summed
    probability: counts come first, the summed probability (< 1 per patch) only breaks ties.
    """
    votes = np.eye(probs.shape[1])[probs.argmax(1)]
    score = votes + probs / (len(probs) + 1)
    grouped = pd.DataFrame(score).groupby(groups).sum()
    return pd.Series(grouped.to_numpy().argmax(1), index=grouped.index)
