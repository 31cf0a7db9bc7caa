"""The synthetic data must not be solvable by a brightness shortcut."""

import numpy as np
import pytest

from mtl.data import SynthSpec, assign_folds, build_synthetic_store
from mtl.labels import PATTERNS


def _qda_accuracy(features, labels, train, test) -> float:
    """A Gaussian per class (quadratic discriminant), priors from the training patches."""
    scores = []
    for c in range(len(PATTERNS)):
        x = features[train & (labels == c)]
        if len(x) < 3:
            scores.append(np.full(test.sum(), -np.inf))
            continue
        mean, cov = x.mean(0), np.cov(x.T) + 1e-6 * np.eye(features.shape[1])
        d = features[test] - mean
        log_likelihood = -0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
        scores.append(
            log_likelihood - 0.5 * np.log(np.linalg.det(cov)) + np.log(len(x) / train.sum())
        )
    return float((np.argmax(np.stack(scores, 1), 1) == labels[test]).mean())


@pytest.mark.parametrize("size", [64, 128])
def test_mean_and_std_of_a_patch_do_not_tell_the_pattern(tmp_path, size):
    store = build_synthetic_store(
        tmp_path / "s", SynthSpec(patients=120, size=size, specimens=1, seed=3)
    )
    pixels = store.images.reshape(len(store), -1).astype(np.float64)
    features = np.stack([pixels.mean(1), pixels.std(1)], 1)
    labels = store.index.pattern.map(PATTERNS.index).to_numpy()
    folds = store.index.patient.map(assign_folds(store.index, "stratified", 5, 0)).to_numpy()
    accuracy = np.mean([_qda_accuracy(features, labels, folds != f, folds == f) for f in "ABCDE"])
    # Chance with the class balance is 0.21 (always "homogeneous"); the texture is the signal.
    assert accuracy < 0.4, f"mean/std classifier reaches {accuracy:.3f}"
