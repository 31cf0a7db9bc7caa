import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtl.labels import PATTERNS
from mtl.metrics import RunningSums, majority_votes, voted_labels
from mtl.model import MultiTaskOutput


def _output(mask_logits, pattern_classes, intensity_logits):
    pattern = torch.full((len(pattern_classes), 7), -5.0)
    pattern[torch.arange(len(pattern_classes)), torch.tensor(pattern_classes)] = 5.0
    return MultiTaskOutput(
        mask=mask_logits, pattern=pattern, intensity=torch.tensor(intensity_logits)
    )


def _batch(mask, patterns, intensities):
    return {"mask": mask, "pattern": torch.tensor(patterns), "intensity": torch.tensor(intensities)}


def test_running_sums_give_hand_counted_values():
    sums = RunningSums(torch.device("cpu"), threshold=0.5)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    mask[0, 0, 0, :] = 1  # two cell pixels in patch 0
    logits = torch.full((2, 1, 2, 2), -1.0)
    logits[0, 0, 0, 0] = 2.0  # a cell found
    logits[1, 0, 1, 1] = 0.5  # a cell predicted on background
    output = _output(logits, [0, 0], [1.0, 1.0])
    batch = _batch(mask, [0, 4], [1.0, 0.0])
    sums.update(output, batch, torch.tensor([0.3, 1.0, 0.5]).unbind())
    sums.update(output, batch, torch.tensor([0.1, 2.0, 0.7]).unbind())
    r = sums.result()
    # Per update: tp 1, fn 1, fp 1, tn 5.
    assert r.patches == 4
    assert r.pixel_acc == pytest.approx(12 / 16)
    assert r.dice == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert r.iou == pytest.approx(2 / (2 + 2 + 2))
    assert r.pattern_acc == pytest.approx(0.5)
    assert r.intensity_acc == pytest.approx(0.5)
    assert r.loss_seg == pytest.approx(0.2) and r.loss == pytest.approx(0.2 + 1.5 + 0.6)
    assert r.intensity_confusion == ((0, 2), (0, 2))


def test_pixel_accuracy_and_dice_disagree_on_an_all_background_patch():
    sums = RunningSums(torch.device("cpu"))
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    logits = torch.full((1, 1, 4, 4), -3.0)
    logits[0, 0, 0, 0] = 3.0  # one false cell pixel
    sums.update(_output(logits, [0], [0.0]), _batch(mask, [0], [0.0]), torch.zeros(3).unbind())
    r = sums.result()
    assert r.pixel_acc == pytest.approx(15 / 16)  # nearly perfect
    assert r.dice == 0.0 and r.iou == 0.0  # no cell found


def test_undefined_metrics_of_a_split_are_nan():
    nothing = RunningSums(torch.device("cpu")).result().flat()
    counted = ("patches", "loss", "loss_seg", "loss_pattern", "loss_intensity")
    assert nothing["patches"] == 0
    assert all(math.isnan(value) for key, value in nothing.items() if key not in counted)
    # Patches without a cell, none predicted: pixel accuracy 1, Dice and IoU undefined.
    sums = RunningSums(torch.device("cpu"))
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    empty = _output(torch.full((1, 1, 4, 4), -3.0), [0], [0.0])
    sums.update(empty, _batch(mask, [0], [0.0]), torch.zeros(3).unbind())
    r = sums.result()
    assert r.pixel_acc == 1.0 and math.isnan(r.dice) and math.isnan(r.iou)


def test_a_fold_without_golgi_keeps_the_seven_by_seven_matrix():
    sums = RunningSums(torch.device("cpu"))
    mask = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    true = [0, 1, 6]  # no golgi (4)
    output = _output(torch.zeros(3, 1, 2, 2), [0, 4, 6], [0.0, 0.0, 0.0])
    sums.update(output, _batch(mask, true, [0.0, 0.0, 0.0]), torch.zeros(3).unbind())
    r = sums.result()
    cm = np.asarray(r.pattern_confusion)
    assert cm.shape == (7, 7) and cm.sum() == 3
    assert cm[1, 4] == 1  # speckled taken for golgi
    assert math.isnan(r.pattern_recall[PATTERNS.index("golgi")])
    assert r.pattern_mca == pytest.approx((1 + 0 + 1) / 3)  # over the classes present
    cells = {(c["level"], c["task"], c["true"], c["predicted"]): c["count"] for c in r.confusions()}
    assert cells["patch", "pattern", "speckled", "golgi"] == 1
    assert sum(count for key, count in cells.items() if key[:2] == ("patch", "pattern")) == 3


def test_majority_votes_per_image_and_patient():
    # Patient 1: two specimens of 3 patches, truly speckled (1), intensity positive.
    # Patient 2: one specimen of 3 patches, truly homogeneous (0), intermediate.
    index = pd.DataFrame(
        {
            "patient": [1] * 6 + [2] * 3,
            "specimen": [0, 0, 0, 1, 1, 1, 0, 0, 0],
            "pattern": ["speckled"] * 6 + ["homogeneous"] * 3,
            "intensity": ["positive"] * 6 + ["intermediate"] * 3,
        }
    )
    predicted = [1, 1, 0, 0, 0, 1, 0, 2, 3]  # image 1/1 loses 2:1; image 2/0 is a 1:1:1 tie
    pattern_probs = np.full((9, 7), 0.01)
    pattern_probs[np.arange(9), predicted] = 0.9
    pattern_probs[0, 1] = 0.95  # patient 1's 3:3 tie goes to speckled (2.78 vs 2.73)
    pattern_probs[7, 2] = 0.95  # image 2/0's 1:1:1 tie goes to class 2 (0.97 vs 0.92)
    intensity_probs = np.array([0.9, 0.8, 0.2, 0.9, 0.1, 0.35, 0.1, 0.2, 0.9])
    votes = majority_votes(index, pattern_probs, intensity_probs)
    # Images: 1/0 -> speckled (right), 1/1 -> homogeneous (wrong), 2/0 -> nucleolar (wrong).
    assert votes["image_pattern_acc"] == pytest.approx(1 / 3)
    # Patient 1: 3:3, speckled by probability (right); patient 2 is image 2/0 (wrong).
    assert votes["patient_pattern_acc"] == pytest.approx(1 / 2)
    assert votes["patient_pattern_mca"] == pytest.approx((1 + 0) / 2)
    # Intensity: images 1/0 positive (2:1, right), 1/1 intermediate (wrong), 2/0 right.
    assert votes["image_intensity_acc"] == pytest.approx(2 / 3)
    assert votes["patient_intensity_acc"] == pytest.approx(
        1.0
    )  # patient 1: 3:3, positive by 3.05 to 2.95


def test_voted_labels_give_one_row_per_group_sorted():
    index = pd.DataFrame(
        {"patient": [2, 2, 1], "specimen": [0, 1, 0], "pattern": ["golgi", "golgi", "numem"],
         "intensity": ["positive", "positive", "intermediate"]}
    )  # fmt: skip
    probs = np.full((3, 7), 0.01)
    probs[[0, 1, 2], [4, 4, 0]] = 0.9
    images = voted_labels(index, probs, np.array([0.9, 0.2, 0.1]), "image")
    assert list(images.index) == ["1/0", "2/0", "2/1"]
    assert images.patient.tolist() == [1, 2, 2]
    assert images.pattern.tolist() == [PATTERNS.index("numem"), 4, 4]
    assert images.predicted_pattern.tolist() == [0, 4, 4]
    assert images.intensity.tolist() == [0, 1, 1]
    assert images.predicted_intensity.tolist() == [0, 1, 0]
    patients = voted_labels(index, probs, np.array([0.9, 0.2, 0.1]), "patient")
    assert list(patients.index) == [1, 2] and patients.predicted_pattern.tolist() == [0, 4]
    with pytest.raises(ValueError, match="image, patient"):
        voted_labels(index, probs, np.zeros(3), "specimen")


def test_patient_votes_keep_a_confusion_matrix():
    index = pd.DataFrame(
        {"patient": [1, 1, 2], "specimen": [0, 0, 0], "pattern": ["golgi", "golgi", "numem"],
         "intensity": ["positive", "positive", "positive"]}
    )  # fmt: skip
    probs = np.full((3, 7), 0.01)
    probs[[0, 1, 2], [4, 4, 4]] = 0.9  # everything called golgi
    votes = majority_votes(index, probs, np.array([0.9, 0.9, 0.1]))
    cm = np.asarray(votes["patient_pattern_confusion"])
    assert cm.shape == (7, 7) and cm[4, 4] == 1 and cm[5, 4] == 1 and cm.sum() == 2
    assert votes["patient_intensity_confusion"] == ((0, 0), (1, 1))
