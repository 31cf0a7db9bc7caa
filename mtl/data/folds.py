"""Patient-level folds: no patient's patches ever lie in two folds.

`seed` reproduces the original study's split (`patient_folds.csv`, shipped with the package);
`stratified` deals the patients of every (pattern, intensity) stratum round-robin over the
folds after a seeded shuffle, so strata and fold sizes are balanced to within one patient.
"""

from __future__ import annotations

import string
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

FOLD_SCHEMES = ("stratified", "seed")


@cache
def reference_patients() -> pd.DataFrame:
    """The original study's patient table: patient (int), fold (A-E), pattern, intensity."""
    with resources.files("mtl.data").joinpath("patient_folds.csv").open() as f:
        return pd.read_csv(f, dtype={"patient": int, "fold": str})


def fold_names(k: int) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[:k])


def patient_labels(index: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (sorted) with its pattern and intensity."""
    return index.groupby("patient", sort=True)[["pattern", "intensity"]].first()


def assign_folds(
    index: pd.DataFrame, scheme: str = "stratified", k: int = 5, seed: int = 0
) -> pd.Series:
    """The fold letter of every patient of a patch index (a Series indexed by patient)."""
    if scheme not in FOLD_SCHEMES:
        raise ValueError(f"unknown fold scheme {scheme!r}; expected one of {FOLD_SCHEMES}")
    patients = patient_labels(index)
    if scheme == "seed":
        return _seed_folds(patients, k)
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds")
    return _stratified_folds(patients, k, seed)


def _seed_folds(patients: pd.DataFrame, k: int) -> pd.Series:
    if k != 5:
        raise ValueError(f"the seed fold table has 5 folds; num_folds is {k}")
    table = reference_patients().set_index("patient")["fold"]
    missing = patients.index.difference(table.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} patients are not in the seed fold table "
            f"(e.g. {list(missing[:5])}); use the stratified scheme"
        )
    return table.loc[patients.index].rename("fold")


def _stratified_folds(patients: pd.DataFrame, k: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    order = []
    for _, stratum in patients.groupby(["pattern", "intensity"], sort=True):
        order.extend(rng.permutation(stratum.index.to_numpy()))
    # Dealing continues across strata, so overall fold sizes differ by at most one.
    names = fold_names(k)
    folds = {patient: names[position % k] for position, patient in enumerate(order)}
    return pd.Series(folds, name="fold").rename_axis("patient").sort_index()
