"""The test set: chosen before any fold, stratified by pattern, in no fold's rows; and the
held-out metrics of an ensemble, checked by hand."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl.config import tiny
from mtl.data import fold_labels, heldout_rows, holdout_patients, split_label, split_rows
from mtl.data.folds import patient_labels
from mtl.evaluate import bootstrap, confusion_columns, heldout_metrics, patient_sums
from mtl.labels import INTENSITIES, PATTERNS
from mtl.model import MultiTaskOutput
from mtl.schema import METRIC_LEVELS
from mtl.trainer import FoldTrainer


@st.composite
def indexes(draw):
    patients = draw(st.lists(st.integers(1, 10_000), min_size=5, max_size=80, unique=True))
    rows = []
    for patient in patients:
        pattern = draw(st.sampled_from(PATTERNS))
        rows += [(patient, pattern, draw(st.sampled_from(INTENSITIES)))] * draw(st.integers(1, 5))
    return pd.DataFrame(rows, columns=["patient", "pattern", "intensity"])


@settings(max_examples=100, deadline=None)
@given(indexes(), st.floats(0.05, 0.5), st.integers(0, 2**16))
def test_the_test_set_is_a_stratified_share_that_leaves_every_pattern_in_the_folds(
    index, fraction, seed
):
    chosen = holdout_patients(index, fraction, seed)
    assert chosen == holdout_patients(index, fraction, seed)  # seeded
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(index.patient)
    labels = patient_labels(index)
    assert len(chosen) <= round(fraction * len(labels))  # at most the share asked for
    for _, group in labels.groupby("pattern"):
        taken = group.index.isin(chosen).sum()
        assert taken < len(group) or len(group) == 0  # one patient stays in the folds
        assert taken <= int(fraction * len(group)) + 1  # its share, rounded up at most


def test_the_share_is_exact_when_no_pattern_is_too_small(tiny_store):
    index = tiny_store.index  # 10 patients
    assert len(holdout_patients(index, 0.0)) == 0
    with pytest.raises(ValueError, match="test_patients"):
        holdout_patients(index, 1.0)
    big = pd.DataFrame(
        {"patient": range(100), "pattern": np.repeat(PATTERNS[:4], 25), "intensity": "positive"}
    )
    chosen = holdout_patients(big, 0.2, seed=3)
    assert len(chosen) == 20
    assert patient_labels(big).loc[list(chosen)].pattern.value_counts().tolist() == [5] * 4


def test_no_test_patient_reaches_a_training_or_validation_row(tiny_store):
    index = tiny_store.index
    held_out = holdout_patients(index, 0.3, seed=1)
    assert held_out
    config = tiny().replace(data=str(tiny_store.path), held_out=held_out, batch_size=4)
    seen = set()
    for fold in "ABCDE":
        train, val = split_rows(config, index, fold)
        assert not set(index.patient.iloc[train]) & set(held_out)
        assert not set(index.patient.iloc[val]) & set(held_out)
        seen |= set(index.patient.iloc[val])
        # ... and what the trainer really reads is the same.
        trainer = FoldTrainer(config, fold, tiny_store)
        for loader in (trainer.train_loader, trainer.val_loader):
            patients = set(index.patient.iloc[loader.dataset.rows])
            assert not patients & set(held_out)
    # Every other patient is validated on exactly once; the held-out ones are the test rows.
    assert seen == set(index.patient) - set(held_out)
    assert set(index.patient.iloc[heldout_rows(config, index)]) == set(held_out)


def test_repeated_folds_are_labelled_by_repeat():
    assert fold_labels(3) == ("A", "B", "C")
    assert fold_labels(2, 2) == ("1A", "1B", "2A", "2B")
    assert [split_label(x) for x in ("C", "1A", "2B")] == [(0, "C"), (0, "A"), (1, "B")]


class Constant(torch.nn.Module):
    """Every patch: cell probability 0.9 everywhere, pattern homogeneous, intensity
    positive with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, image):
        n, _, h, w = image.shape
        pattern = torch.full((n, len(PATTERNS)), -5.0)
        pattern[:, 0] = 5.0
        logit = float(np.log(self.p / (1 - self.p)))
        return MultiTaskOutput(torch.full((n, 1, h, w), 2.2), pattern, torch.full((n,), logit))


def test_held_out_metrics_of_a_constant_ensemble_by_hand(tiny_store):
    index = tiny_store.index
    held_out = holdout_patients(index, 0.5, seed=0)
    config = tiny().replace(data=str(tiny_store.path), held_out=held_out)
    rows = heldout_rows(config, index)
    # Two models whose positive probabilities average to 0.55: positive.
    sums = patient_sums(config, [Constant(0.3), Constant(0.8)], tiny_store, rows, "cpu")
    assert list(sums.index) == sorted(held_out)
    counts = {"patches", "images", "patients", "tp", "fp", "fn", "tn"}
    assert set(sums.columns) == counts | set(sums_columns())
    metrics = heldout_metrics(sums).iloc[0]

    test = index.iloc[rows]
    masks = np.asarray(tiny_store.masks[rows])
    cells = (masks > 0).mean()  # every pixel predicted "cell"
    homogeneous = (test.pattern == "homogeneous").mean()
    positive = (test.intensity == "positive").mean()
    assert metrics.pixel_acc == pytest.approx(cells)
    assert metrics.dice == pytest.approx(2 * cells / (2 * cells + (1 - cells)))
    assert metrics.iou == pytest.approx(cells)
    assert metrics.pattern_acc == pytest.approx(homogeneous)
    assert metrics.intensity_acc == pytest.approx(positive)
    assert metrics.score == pytest.approx((cells + homogeneous + positive) / 3)
    # Mean class accuracy: recall 1 for homogeneous (if present), 0 for every other class.
    present = test.pattern.unique()
    assert metrics.pattern_mca == pytest.approx(("homogeneous" in present) / len(present))
    per_patient = test.groupby("patient").first()
    assert metrics.patient_pattern_acc == pytest.approx(
        (per_patient.pattern == "homogeneous").mean()
    )
    assert metrics.patient_intensity_acc == pytest.approx(
        (per_patient.intensity == "positive").mean()
    )


def test_resampling_weights_and_the_bootstrap_interval():
    # Two patients, hand-made: A has 2 homogeneous patches (both right), B 1 speckled patch
    # (called homogeneous); intensity right for 1 of A's and for B's.
    columns = {c: [0, 0] for c in sums_columns()}
    columns.update(
        patches=[2, 1], tp=[10, 0], fp=[0, 5], fn=[0, 5], tn=[10, 10],
        patch_pattern_0_0=[2, 0], patch_pattern_1_0=[0, 1],
        patch_intensity_1_1=[1, 0], patch_intensity_1_0=[1, 0], patch_intensity_0_0=[0, 1],
        images=[1, 1], image_pattern_0_0=[1, 0], image_pattern_1_0=[0, 1],
        image_intensity_1_1=[1, 0], image_intensity_0_0=[0, 1],
        patients=[1, 1], patient_pattern_0_0=[1, 0], patient_pattern_1_0=[0, 1],
        patient_intensity_1_1=[1, 0], patient_intensity_0_1=[0, 1],
    )  # fmt: skip
    sums = pd.DataFrame(columns, index=[1, 2])
    both = heldout_metrics(sums).iloc[0]
    assert both.pattern_acc == pytest.approx(2 / 3)  # patches, not patients, are averaged
    assert both.pattern_mca == pytest.approx((1 + 0) / 2)
    assert both.intensity_acc == pytest.approx(2 / 3)
    assert both.pixel_acc == pytest.approx(30 / 40)
    assert both.dice == pytest.approx(20 / 30)
    assert both.image_intensity_acc == 1.0
    assert both.patient_intensity_acc == pytest.approx(0.5)
    assert both.score == pytest.approx((30 / 40 + 2 / 3 + 2 / 3) / 3)
    # A resample that draws A twice and B never is A alone.
    twice_a = heldout_metrics(sums, np.array([[2, 0]])).iloc[0]
    assert twice_a.pattern_acc == 1.0 and twice_a.pixel_acc == 1.0
    assert twice_a.pattern_mca == 1.0  # speckled is absent from this resample: not counted
    table = bootstrap(sums, resamples=500, seed=0).set_index("metric")
    assert list(table.index) == list(METRIC_LEVELS)
    finite = table[table.value.notna()]
    assert (finite.ci_low <= finite.value + 1e-12).all()
    assert (finite.value <= finite.ci_high + 1e-12).all()
    # With two patients a resample is A only, B only or both: the interval spans them.
    assert table.at["pattern_acc", "ci_low"] == 0.0 and table.at["pattern_acc", "ci_high"] == 1.0


def sums_columns() -> list[str]:
    return [
        column
        for level in ("patch", "image", "patient")
        for task, classes in (("pattern", len(PATTERNS)), ("intensity", len(INTENSITIES)))
        for column in confusion_columns(level, task, classes)
    ]
