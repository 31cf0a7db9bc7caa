"""Each metric from hand-countable counts, and NaN (not 0) where it is undefined."""

import math

import numpy as np
import pandas as pd
import pytest

from mtl.formulas import accuracy, dice, iou, mean_class_accuracy, pixel_accuracy, recalls
from mtl.schema import SCORE_METRICS, score, score_metrics_at

# Rows true, columns predicted. Class 0: 2 of 3 right; class 1: 1 of 2; class 2: 3 of 3.
THREE = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 3]])


def test_accuracy_recalls_and_mean_class_accuracy_of_a_three_class_matrix():
    assert accuracy(THREE) == pytest.approx(6 / 8)
    np.testing.assert_allclose(recalls(THREE), [2 / 3, 1 / 2, 1])
    assert mean_class_accuracy(THREE) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_mean_class_accuracy_ignores_class_frequency_and_absent_classes():
    # Class 0: 98 patches, all right; class 1: 2, both taken for class 0; class 2 absent.
    cm = np.array([[98, 0, 0], [2, 0, 0], [0, 0, 0]])
    assert accuracy(cm) == pytest.approx(0.98)
    per_class = recalls(cm)
    assert per_class[:2].tolist() == [1.0, 0.0] and math.isnan(per_class[2])
    assert mean_class_accuracy(cm) == pytest.approx(0.5)  # over the two classes present


def test_a_two_by_two_matrix():
    cm = np.array([[3, 1], [2, 4]])  # intermediate 3 of 4 right, positive 4 of 6
    assert accuracy(cm) == pytest.approx(7 / 10)
    assert mean_class_accuracy(cm) == pytest.approx((3 / 4 + 4 / 6) / 2)


def test_pixel_metrics_from_tp_fp_fn_tn():
    tp, fp, fn, tn = 6, 2, 4, 8
    assert pixel_accuracy(tp, fp, fn, tn) == pytest.approx(14 / 20)
    assert dice(tp, fp, fn) == pytest.approx(12 / 18)
    assert iou(tp, fp, fn) == pytest.approx(6 / 12)


def test_undefined_metrics_are_nan_not_zero():
    empty = np.zeros((3, 3), int)
    assert math.isnan(accuracy(empty)) and math.isnan(mean_class_accuracy(empty))
    assert np.isnan(recalls(empty)).all()
    assert math.isnan(pixel_accuracy(0, 0, 0, 0))  # no pixels
    # No cell predicted and none true: pixel accuracy is perfect, Dice and IoU undefined.
    assert pixel_accuracy(0, 0, 0, 16) == 1.0
    assert math.isnan(dice(0, 0, 0)) and math.isnan(iou(0, 0, 0))
    # A false cell and no true one: defined, and 0.
    assert dice(0, 1, 0) == 0.0 and iou(0, 1, 0) == 0.0


def test_counts_with_leading_axes_give_one_metric_per_resample():
    stacked = np.stack([THREE, np.zeros((3, 3), int), np.diag([1, 0, 0])])
    np.testing.assert_allclose(accuracy(stacked), [6 / 8, np.nan, 1.0])
    np.testing.assert_allclose(mean_class_accuracy(stacked), [(2 / 3 + 1 / 2 + 1) / 3, np.nan, 1])
    tp, fp, fn = np.array([6, 0]), np.array([2, 0]), np.array([4, 0])
    np.testing.assert_allclose(dice(tp, fp, fn), [12 / 18, np.nan])


def test_the_score_is_the_mean_of_the_score_metrics_and_nan_if_one_is():
    row = {"pixel_acc": 0.9, "pattern_acc": 0.6, "intensity_acc": 0.3, "dice": 0.0}
    assert score(row) == pytest.approx(0.6)
    assert score(row, ("pixel_acc", "dice")) == pytest.approx(0.45)  # a study's own metrics
    assert math.isnan(score({**row, "pattern_acc": math.nan}))
    table = pd.DataFrame([row, {**row, "intensity_acc": math.nan}], index=["a", "b"])
    scores = score(table)
    assert list(scores.index) == ["a", "b"] and scores["a"] == pytest.approx(0.6)
    assert math.isnan(scores["b"])
    assert score(table.loc["a"]) == pytest.approx(0.6)  # a table's row
    arrays = {m: np.array([0.3, 0.6]) for m in SCORE_METRICS}
    np.testing.assert_allclose(score(arrays), [0.3, 0.6])
    with pytest.raises(ValueError, match="at least one metric"):
        score(row, ())


def test_the_score_metrics_of_each_level():
    assert score_metrics_at("patch") == SCORE_METRICS
    # Pixels are not voted on: the pixel accuracy of the patches at every level.
    assert score_metrics_at("patient") == (
        "pixel_acc", "patient_pattern_acc", "patient_intensity_acc",
    )  # fmt: skip
    assert score_metrics_at("image")[1:] == ("image_pattern_acc", "image_intensity_acc")
    with pytest.raises(ValueError, match="patch, image, patient"):
        score_metrics_at("specimen")
