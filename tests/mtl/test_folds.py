"""Fold properties on random patch indexes (hypothesis)."""

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl.data import assign_folds
from mtl.labels import INTENSITIES, PATTERNS


@st.composite
def indexes(draw):
    """A patch index: patients with constant labels, 1-20 patches each."""
    k = draw(st.integers(2, 6))
    patients = draw(st.lists(st.integers(1, 10_000), min_size=k, max_size=60, unique=True))
    rows = []
    for patient in patients:
        pattern = draw(st.sampled_from(PATTERNS))
        intensity = draw(st.sampled_from(INTENSITIES))
        rows += [(patient, pattern, intensity)] * draw(st.integers(1, 20))
    index = pd.DataFrame(rows, columns=["patient", "pattern", "intensity"])
    return index.sample(frac=1, random_state=draw(st.integers(0, 100))), k


@settings(max_examples=150, deadline=None)
@given(indexes(), st.integers(0, 2**16))
def test_stratified_folds_are_patient_level_and_balanced(case, seed):
    index, k = case
    folds = assign_folds(index, "stratified", k=k, seed=seed)
    # Every patient in exactly one fold.
    assert folds.index.is_unique and set(folds.index) == set(index.patient)
    # No patient's patches in two folds.
    assert (
        index.assign(fold=index.patient.map(folds)).groupby("patient").fold.nunique() == 1
    ).all()
    # Fold sizes (in patients) within one of each other, and within one inside every stratum.
    sizes = folds.value_counts().reindex(list("ABCDEF"[:k]), fill_value=0)
    assert sizes.max() - sizes.min() <= 1
    labels = index.groupby("patient")[["pattern", "intensity"]].first().join(folds)
    for _, stratum in labels.groupby(["pattern", "intensity"]):
        counts = stratum.fold.value_counts().reindex(list("ABCDEF"[:k]), fill_value=0)
        assert counts.max() - counts.min() <= 1
    # Seeded: the same seed gives the same folds.
    assert folds.equals(assign_folds(index, "stratified", k=k, seed=seed))
