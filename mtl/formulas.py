"""Every metric from its counts, each in one function: the epoch loop's metrics (training and
validation, `mtl.metrics`), the majority votes and the held-out test estimate
(`mtl.evaluate`) all compute them here, so that a metric means the same wherever it is read.

Counts are pixel counts (tp, fp, fn, tn; foreground = cells) or confusion matrices (rows
true, columns predicted). Every function takes arrays with any leading axes (the bootstrap
passes one count per resample) and returns NaN, not 0, where the metric is undefined: no
pixels, no patches, no foreground anywhere, no class present. numpy only, no torch.
"""

from __future__ import annotations

import numpy as np


def ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator as floats; NaN where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)


def pixel_accuracy(tp, fp, fn, tn) -> np.ndarray:
    """The share of pixels of both classes classified right (the original "mask accuracy")."""
    return ratio(np.add(tp, tn), np.add(np.add(tp, fp), np.add(fn, tn)))


def dice(tp, fp, fn) -> np.ndarray:
    """Foreground Dice (F1 of the cell pixels): 2 tp / (2 tp + fp + fn); NaN with no cell
    predicted and none true."""
    return ratio(np.multiply(2, tp), np.add(np.multiply(2, tp), np.add(fp, fn)))


def iou(tp, fp, fn) -> np.ndarray:
    """Foreground intersection over union: tp / (tp + fp + fn)."""
    return ratio(tp, np.add(tp, np.add(fp, fn)))


def accuracy(confusion) -> np.ndarray:
    """The share of examples on the diagonal of a (..., K, K) confusion matrix."""
    confusion = np.asarray(confusion)
    return ratio(np.trace(confusion, axis1=-2, axis2=-1), confusion.sum((-2, -1)))


def recalls(confusion) -> np.ndarray:
    """The recall of every class of a (..., K, K) confusion matrix, shape (..., K); NaN for a
    class without examples."""
    confusion = np.asarray(confusion)
    return ratio(np.diagonal(confusion, axis1=-2, axis2=-1), confusion.sum(-1))


def mean_class_accuracy(confusion) -> np.ndarray:
    """Balanced accuracy: the mean recall of the classes present, every class alike whatever
    its size; a class absent from the examples does not count, and with none present it is
    NaN."""
    per_class = recalls(confusion)
    present = ~np.isnan(per_class)
    return ratio(np.where(present, per_class, 0.0).sum(-1), present.sum(-1))
