import dataclasses
import math

import pytest

from mtl.metrics import EpochMetrics
from mtl.train import train_fold


def test_train_fold_yields_one_epoch_metrics_per_epoch(tiny_config):
    epochs = list(train_fold(tiny_config, "B"))
    assert [m.epoch for m in epochs] == [1, 2]
    for metrics in epochs:
        assert isinstance(metrics, EpochMetrics)
        for split in (metrics.train, metrics.val):
            values = dataclasses.asdict(split)
            assert all(math.isfinite(v) for v in values.values())
            for name in ("pixel_acc", "pattern_acc", "intensity_acc"):
                assert 0.0 <= values[name] <= 1.0
        assert metrics.val.patches == 30  # two of ten patients, 15 patches each
        assert metrics.weights == (1.0, 1.0, 1.0)
        assert [row["split"] for row in metrics.rows()] == ["train", "val"]


def test_the_same_seed_gives_the_same_metrics(tiny_config):
    config = tiny_config.replace(epochs=1)
    assert list(train_fold(config, "A"))[0].train == list(train_fold(config, "A"))[0].train


def test_bad_fold_and_mismatched_size_are_clear_errors(tiny_config):
    with pytest.raises(ValueError, match="fold must be one of A, B, C, D, E"):
        next(train_fold(tiny_config, "F"))
    with pytest.raises(ValueError, match="image_size is 96"):
        next(train_fold(tiny_config.replace(image_size=96), "A"))


def test_gradnorm_weights_are_reported_per_epoch(tiny_config):
    config = tiny_config.replace(balancer="gradnorm", alpha=1.5, balancer_lr=0.05)
    epochs = list(train_fold(config, "C"))
    for metrics in epochs:
        assert sum(metrics.weights) == pytest.approx(3.0, abs=1e-4)
        assert min(metrics.weights) > 0 and metrics.skipped_steps == 0
    assert epochs[-1].weights != (1.0, 1.0, 1.0)
    assert epochs[-1].rows()[0]["weight_seg"] == epochs[-1].weights[0]
