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

from mtl import formulas
from mtl.config import TrainConfig
from mtl.data import PatchStore
from mtl.labels import INTENSITIES, PATTERNS
from mtl.metrics import VOTED_TASKS, voted_labels
from mtl.model import MultiTaskUNet
from mtl.predict import ensemble_probabilities
from mtl.schema import METRIC_LEVELS, VOTE_LEVELS, score

# The levels whose confusion cells patient_sums counts: every patch, then the votes.
LEVELS = ("patch", *VOTE_LEVELS)


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
    metric is computed from (pixel tp/fp/fn/tn; patches, images and patients; the cells of
    each level's pattern and intensity confusion matrices, `confusion_columns`)."""
    if not len(rows):
        raise ValueError("no held-out patches to evaluate")
    index = store.index.iloc[rows].reset_index(drop=True)
    masks = np.asarray(store.masks[rows]) > 0
    mask_probs, pattern_probs, intensity_probs = ensemble_probabilities(
        models, np.asarray(store.images[rows]), device, batch_size
    )
    found = mask_probs > config.threshold  # the pixels predicted to be cells
    patches = pd.DataFrame(
        {
            "patient": index.patient.to_numpy(),
            "patches": 1,
            "tp": (found & masks).sum((1, 2)),
            "fp": (found & ~masks).sum((1, 2)),
            "fn": (~found & masks).sum((1, 2)),
            "tn": (~found & ~masks).sum((1, 2)),
        }
    )
    predicted = {"pattern": pattern_probs.argmax(1), "intensity": intensity_probs > 0.5}
    true = {
        "pattern": index.pattern.map(PATTERNS.index).to_numpy(),
        "intensity": index.intensity.map(INTENSITIES.index).to_numpy(),
    }
    for task, classes in VOTED_TASKS:
        cells = _confusion_cells("patch", task, classes, true[task], predicted[task])
        patches = patches.join(cells)
    sums = patches.groupby("patient").sum()

    # Votes: one label per specimen (image) and per patient, as in validation.
    for level in VOTE_LEVELS:
        voted = voted_labels(index, pattern_probs, intensity_probs, level)
        counts = pd.DataFrame({"patient": voted.patient.to_numpy(), f"{level}s": 1})
        for task, classes in VOTED_TASKS:
            cells = _confusion_cells(level, task, classes, voted[task], voted[f"predicted_{task}"])
            counts = counts.join(cells)
        sums = sums.join(counts.groupby("patient").sum())
    return sums.astype(np.int64)


def confusion_columns(level: str, task: str, classes: int) -> list[str]:
    """patient_sums' columns of a confusion matrix, `<level>_<task>_<true>_<predicted>` (label
    indices), row-major."""
    return [f"{level}_{task}_{t}_{p}" for t in range(classes) for p in range(classes)]


def _confusion_cells(
    level: str, task: str, classes: int, true: np.ndarray, predicted: np.ndarray
) -> pd.DataFrame:
    """One-hot confusion cells, one row per example (confusion_columns)."""
    onehot = np.zeros((len(true), classes * classes), np.int64)
    flat = np.asarray(true, np.int64) * classes + np.asarray(predicted, np.int64)
    onehot[np.arange(len(true)), flat] = 1
    return pd.DataFrame(onehot, columns=confusion_columns(level, task, classes))


def heldout_metrics(sums: pd.DataFrame, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Every METRIC_LEVELS value for each row of `weights` (resamples x patients: how often
    each patient of `sums` is drawn; None: each patient once). Columns: the metrics."""
    w = np.ones((1, len(sums))) if weights is None else np.atleast_2d(weights)
    total = pd.DataFrame(w @ sums.to_numpy(dtype=np.float64), columns=sums.columns)

    def matrices(level: str, task: str, classes: int) -> np.ndarray:
        columns = confusion_columns(level, task, classes)
        return total[columns].to_numpy().reshape(-1, classes, classes)

    tp, fp, fn, tn = (total[c].to_numpy() for c in ("tp", "fp", "fn", "tn"))
    out = {
        "pixel_acc": formulas.pixel_accuracy(tp, fp, fn, tn),
        "dice": formulas.dice(tp, fp, fn),
        "iou": formulas.iou(tp, fp, fn),
    }
    for level in LEVELS:
        prefix = "" if level == "patch" else f"{level}_"
        for task, classes in VOTED_TASKS:
            cm = matrices(level, task, classes)
            out[f"{prefix}{task}_acc"] = formulas.accuracy(cm)
            if task == "pattern":
                out[f"{prefix}pattern_mca"] = formulas.mean_class_accuracy(cm)
    out["score"] = score(out)
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
