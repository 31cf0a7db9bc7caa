import numpy as np
import pandas as pd
import pytest

from mtl.data import (
    PatchGrid,
    StoreWriter,
    SynthSpec,
    assign_folds,
    build_synthetic_store,
    open_store,
    reference_patients,
)
from mtl.data.synthetic import choose_patients, generate
from mtl.labels import PATTERNS, parse_intensity, parse_pattern


def test_grid_is_the_original_five_by_three_column_major():
    grid = PatchGrid()
    assert (grid.width, grid.height, len(grid)) == (1388, 1040, 15)
    assert grid.offset(0) == (0, 0)
    assert grid.offset(1) == (328, 0)  # k = 1: second row, first column
    assert grid.offset(3) == (0, 251)  # k = 3: first row, second column
    assert grid.offset(14) == (656, 1004)


def test_synthetic_patches_are_seeded_grey_and_masked():
    spec = SynthSpec(patients=3, size=64, specimens=2, seed=7)
    first = list(generate(spec))
    again = list(generate(spec))
    other = list(generate(SynthSpec(patients=3, size=64, specimens=2, seed=8)))
    assert len(first) == spec.num_patches == 3 * 2 * 15
    for (row_a, image_a, mask_a), (row_b, image_b, mask_b) in zip(first, again, strict=True):
        assert row_a == row_b
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True))
    _, image, mask = first[0]
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 1}
    # Cells are brighter than the background around them.
    assert image[mask == 1].mean() > image[mask == 0].mean() + 10


def test_synthetic_patients_follow_the_real_class_balance():
    patients = choose_patients(60, seed=0)
    assert len(patients) == 60 and patients.patient.is_unique
    real = reference_patients().pattern.value_counts(normalize=True)
    ours = patients.pattern.value_counts(normalize=True).reindex(real.index, fill_value=0)
    assert (ours - real).abs().max() < 1 / 60 + 1e-9
    # Ids and labels are real ones, so the seed folds apply.
    merged = patients.merge(reference_patients(), on="patient", suffixes=("", "_real"))
    assert (merged.pattern == merged.pattern_real).all()


def test_store_round_trip(tiny_store):
    store = open_store(tiny_store.path)
    assert len(store) == 150
    assert list(store.index.columns[:6]) == [
        "patch_id", "patient", "specimen", "patch", "pattern", "intensity",
    ]  # fmt: skip
    image, mask = store[3]
    assert image.shape == mask.shape == (64, 64) and image.dtype == np.uint8
    assert store.meta["patches"] == 150 and len(store.content_hash) == 32
    # Patch 3 of a specimen is the first row, second column of the grid.
    spec = SynthSpec(patients=10, size=64, specimens=1, seed=0)
    _, source_image, _ = list(generate(spec))[3]
    np.testing.assert_array_equal(image, source_image)


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(RuntimeError), StoreWriter(out, count=2, size=32) as writer:
        writer.write(0, np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_store_is_not_overwritten(tmp_path, tiny_store):
    with pytest.raises(FileExistsError, match="--force"):
        build_synthetic_store(tiny_store.path, SynthSpec(patients=2, size=64, specimens=1))


def test_open_store_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        open_store(tmp_path)


@pytest.mark.parametrize("scheme", ["stratified", "seed"])
def test_no_patient_is_in_two_folds(tiny_store, scheme):
    index = tiny_store.index
    folds = assign_folds(index, scheme, k=5, seed=0)
    assert folds.index.is_unique and set(folds.index) == set(index.patient)
    per_patient = index.assign(fold=index.patient.map(folds)).groupby("patient").fold.nunique()
    assert (per_patient == 1).all()


def test_stratified_folds_are_balanced_and_seeded():
    index = choose_patients(60, seed=0)
    folds = assign_folds(index, "stratified", k=5, seed=1)
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    assert folds.equals(assign_folds(index, "stratified", k=5, seed=1))
    assert not folds.equals(assign_folds(index, "stratified", k=5, seed=2))


def test_seed_folds_are_the_original_table():
    table = reference_patients()
    folds = assign_folds(table, "seed", k=5)
    assert folds.to_dict() == dict(zip(table.patient, table.fold, strict=True))
    assert folds.value_counts().sort_index().tolist() == [51, 50, 51, 50, 50]


def test_seed_folds_reject_unknown_patients():
    index = pd.DataFrame(
        {"patient": [1, 999], "pattern": ["golgi"] * 2, "intensity": ["positive"] * 2}
    )
    with pytest.raises(ValueError, match="999"):
        assign_folds(index, "seed", k=5)


def test_labels_are_stripped_and_matched_with_synonyms():
    assert parse_pattern("homogeneous ") == "homogeneous"
    assert parse_pattern("Nuclear  Membrane") == "numem"
    assert parse_intensity(" Positive") == "positive"
    with pytest.raises(ValueError, match="cytoplasmic"):
        parse_pattern("cytoplasmic")
    assert len(PATTERNS) == 7
