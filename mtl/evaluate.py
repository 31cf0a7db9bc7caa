"""A fold ensemble on held-out patients: metrics, and their bootstrap interval over patients.

The cross-validated score of the configuration a search picked is biased upwards by the
picking. Patients held out of every fold (`TrainConfig.held_out`) give an estimate free of
that: the trial's fold models predict every patch of those patients, their probabilities are
averaged (as `mtl.predict` does for new specimens), and the patch, image and patient metrics
follow. Everything a metric needs is summed per patient, so the metric of any resample of the
patients is a ratio of weighted sums, and the bootstrap over patients (the unit that was
sampled; Efron & Tibshirani 1993) costs one matrix product per metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from mtl.config import TrainConfig
from mtl.data import PatchStore
from mtl.labels import INTENSITIES, PATTERNS
from mtl.metrics import vote
from mtl.model import MultiTaskUNet
from mtl.predict import ensemble_probabilities
from mtl.schema import METRIC_LEVELS

K = len(PATTERNS)


def load_models(
    config: TrainConfig, states: Sequence[dict], device: torch.device
) -> list[MultiTaskUNet]:
    """The fold models of a trial from their state dicts, in eval mode on `device`."""
    models = []
    for state in states:
        model = MultiTaskUNet.from_config(config.replace(encoder_weights=None))
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    return models


def patient_sums(
    config: TrainConfig,
    models: list[MultiTaskUNet],
    store: PatchStore,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 32,
) -> pd.DataFrame:
    """One row per patient of `rows` (the held-out patches): the counts every held-out
    metric is a ratio of (pixel tp/fp/fn/tn, correct patches, votes, confusion cells)."""
    if not len(rows):
        raise ValueError("no held-out patches to evaluate")
    index = store.index.iloc[rows].reset_index(drop=True)
    masks = np.asarray(store.masks[rows]) > 0
    mask_probs, pattern_probs, intensity_probs = ensemble_probabilities(
        models, np.asarray(store.images[rows]), device, batch_size
    )
    cells = mask_probs > config.threshold
    true_pattern = index.pattern.map(PATTERNS.index).to_numpy()
    true_intensity = index.intensity.map(INTENSITIES.index).to_numpy()
    patches = pd.DataFrame(
        {
            "patient": index.patient.to_numpy(),
            "patches": 1,
            "tp": (cells & masks).sum((1, 2)),
            "fp": (cells & ~masks).sum((1, 2)),
            "fn": (~cells & masks).sum((1, 2)),
            "tn": (~cells & ~masks).sum((1, 2)),
            "pattern_correct": pattern_probs.argmax(1) == true_pattern,
            "intensity_correct": (intensity_probs > 0.5) == true_intensity,
        }
    )
    patches = patches.join(_confusion_cells("cm", true_pattern, pattern_probs.argmax(1)))
    sums = patches.groupby("patient").sum()

    # Votes: one label per specimen (image) and per patient, as in validation.
    two_class = np.stack([1 - intensity_probs, intensity_probs], 1)
    images = index.patient.astype(str) + "/" + index.specimen.astype(str)
    for level, groups in (("image", images.to_numpy()), ("patient", index.patient.to_numpy())):
        first = index.groupby(groups)[["patient"]].first()
        pattern = vote(groups, pattern_probs).loc[first.index].to_numpy()
        intensity = vote(groups, two_class).loc[first.index].to_numpy()
        truth = pd.DataFrame({"pattern": true_pattern, "intensity": true_intensity})
        truth = truth.groupby(groups).first().loc[first.index]
        voted = pd.DataFrame(
            {
                "patient": first.patient.to_numpy(),
                f"{level}s": 1,
                f"{level}_pattern_correct": pattern == truth.pattern.to_numpy(),
                f"{level}_intensity_correct": intensity == truth.intensity.to_numpy(),
            }
        ).join(_confusion_cells(f"{level}_cm", truth.pattern.to_numpy(), pattern))
        sums = sums.join(voted.groupby("patient").sum())
    return sums.astype(np.int64)


def _confusion_cells(prefix: str, true: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One-hot 7x7 confusion cells per row, columns `<prefix>_<t>_<p>` (row-major)."""
    onehot = np.zeros((len(true), K * K), np.int64)
    onehot[np.arange(len(true)), np.asarray(true) * K + np.asarray(predicted)] = 1
    return pd.DataFrame(onehot, columns=[f"{prefix}_{t}_{p}" for t in range(K) for p in range(K)])


def heldout_metrics(sums: pd.DataFrame, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Every METRIC_LEVELS value for each row of `weights` (resamples x patients: how often
    each patient of `sums` is drawn; None: each patient once). Columns: the metrics."""
    w = np.ones((1, len(sums))) if weights is None else np.atleast_2d(weights)
    total = pd.DataFrame(w @ sums.to_numpy(dtype=np.float64), columns=sums.columns)

    def ratio(numerator, denominator):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(numerator, float) / np.asarray(denominator, float)

    def mca(prefix: str) -> np.ndarray:
        cm = total[[f"{prefix}_{t}_{p}" for t in range(K) for p in range(K)]].to_numpy()
        cm = cm.reshape(-1, K, K)
        support = cm.sum(2)
        recall = ratio(np.diagonal(cm, axis1=1, axis2=2), support)
        recall[support == 0] = np.nan  # a class absent from the resample does not count
        with _no_empty_warning():
            return np.nanmean(recall, axis=1)

    tp, fp, fn, tn = (total[c] for c in ("tp", "fp", "fn", "tn"))
    out = {
        "pixel_acc": ratio(tp + tn, tp + fp + fn + tn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "pattern_acc": ratio(total.pattern_correct, total.patches),
        "pattern_mca": mca("cm"),
        "intensity_acc": ratio(total.intensity_correct, total.patches),
    }
    for level in ("image", "patient"):
        out[f"{level}_pattern_acc"] = ratio(total[f"{level}_pattern_correct"], total[f"{level}s"])
        out[f"{level}_pattern_mca"] = mca(f"{level}_cm")
        out[f"{level}_intensity_acc"] = ratio(
            total[f"{level}_intensity_correct"], total[f"{level}s"]
        )
    out["score"] = (out["pixel_acc"] + out["pattern_acc"] + out["intensity_acc"]) / 3
    return pd.DataFrame(out)[list(METRIC_LEVELS)]


def bootstrap(
    sums: pd.DataFrame, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Each metric on all held-out patients, with its percentile bootstrap interval over
    patients: one row per metric (metric, level, value, ci_low, ci_high)."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=resamples)
    point = heldout_metrics(sums).iloc[0]
    drawn = heldout_metrics(sums, weights)
    tail = (1 - confidence) / 2 * 100
    with _no_empty_warning():
        low, high = np.nanpercentile(drawn.to_numpy(), [tail, 100 - tail], axis=0)
    return pd.DataFrame(
        {
            "metric": list(METRIC_LEVELS),
            "level": list(METRIC_LEVELS.values()),
            "value": point.to_numpy(),
            "ci_low": low,
            "ci_high": high,
        }
    )


@contextmanager
def _no_empty_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": NaN is meant
        yield
