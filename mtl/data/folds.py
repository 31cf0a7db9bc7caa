"""Patient-level folds: no patient's patches ever lie in two folds.

`seed` reproduces the original study's split (`patient_folds.csv`, shipped with the package);
`stratified` deals the patients of every (pattern, intensity) stratum round-robin over the
folds after a seeded shuffle, so strata and fold sizes are balanced to within one patient.

A test set (`holdout_patients`) is chosen before any fold: those patients are in no fold's
training or validation rows. Repeated cross-validation draws r stratified splits with the
seeds fold_seed, fold_seed + 1, ...; its folds are labelled `1A`, `1B`, ..., `2A`, ...
"""

from __future__ import annotations

import string
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

from mtl.config import TrainConfig, check_registry


@cache
def reference_patients() -> pd.DataFrame:
    """The original study's patient table: patient (int), fold (A-E), pattern, intensity."""
    with resources.files("mtl.data").joinpath("patient_folds.csv").open() as f:
        return pd.read_csv(f, dtype={"patient": int, "fold": str})


def fold_names(k: int) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[:k])


def fold_labels(k: int, repeats: int = 1) -> tuple[str, ...]:
    """The folds of a (repeated) cross-validation: A..E, or 1A..1E, 2A..2E, ... for repeats."""
    if repeats == 1:
        return fold_names(k)
    return tuple(f"{r + 1}{name}" for r in range(repeats) for name in fold_names(k))


def split_label(label: str) -> tuple[int, str]:
    """`"2C"` -> (1, "C"): the repeat (0-based, so fold_seed + repeat) and the fold letter."""
    repeat, letter = label[:-1], label[-1]
    return (int(repeat) - 1 if repeat else 0), letter


def holdout_patients(index: pd.DataFrame, fraction: float, seed: int = 0) -> tuple[int, ...]:
    """A test set: about `fraction` of the patients, stratified by pattern, seeded.

    Every pattern gives its share (largest remainders, so the total is round(fraction * N));
    a pattern keeps at least one patient in the folds, so training never loses a class that
    the test set has. Returns the patient ids, sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"test_patients must be a fraction in [0, 1), got {fraction}")
    patients = patient_labels(index)
    if fraction == 0:
        return ()
    rng = np.random.default_rng(seed)
    strata = {p: rng.permutation(s.index.to_numpy()) for p, s in patients.groupby("pattern")}
    quota = {p: fraction * len(members) for p, members in strata.items()}
    taken = {p: int(q) for p, q in quota.items()}
    # Largest remainders first; a seeded shuffle breaks ties between equal remainders.
    order = sorted(rng.permutation(list(strata)), key=lambda p: taken[p] - quota[p])
    for p in order[: round(fraction * len(patients)) - sum(taken.values())]:
        taken[p] += 1
    chosen = [m for p, s in strata.items() for m in s[: min(taken[p], len(s) - 1)]]
    return tuple(sorted(int(m) for m in chosen))


def patient_labels(index: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (sorted) with its pattern and intensity."""
    return index.groupby("patient", sort=True)[["pattern", "intensity"]].first()


def assign_folds(
    index: pd.DataFrame, scheme: str = "stratified", k: int = 5, seed: int = 0
) -> pd.Series:
    """The fold letter of every patient of a patch index (a Series indexed by patient)."""
    if scheme not in FOLD_SCHEMES:
        raise ValueError(
            f"unknown fold scheme {scheme!r}; expected one of {', '.join(FOLD_SCHEMES)}"
        )
    return FOLD_SCHEMES[scheme](patient_labels(index), k, seed)


def _seed_folds(patients: pd.DataFrame, k: int, seed: int = 0) -> pd.Series:
    """The original study's table (the seed plays no part)."""
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
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    order = []
    for _, stratum in patients.groupby(["pattern", "intensity"], sort=True):
        order.extend(rng.permutation(stratum.index.to_numpy()))
    # Dealing continues across strata, so overall fold sizes differ by at most one.
    names = fold_names(k)
    folds = {patient: names[position % k] for position, patient in enumerate(order)}
    return pd.Series(folds, name="fold").rename_axis("patient").sort_index()


# TrainConfig.folds: name -> the function that deals patients (with labels) into k folds.
FOLD_SCHEMES = {"stratified": _stratified_folds, "seed": _seed_folds}
check_registry("folds", FOLD_SCHEMES)


def split_rows(config: TrainConfig, index, fold: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the training and validation patches when `fold` is validated on.

    The patients of `config.held_out` (the test set) are in neither: folds are dealt over
    the other patients only.
    """
    names = fold_names(config.num_folds)
    if fold not in names:
        raise ValueError(f"fold must be one of {', '.join(names)}, got {fold!r}")
    in_folds = ~index.patient.isin(config.held_out).to_numpy()
    folds = assign_folds(index[in_folds], config.folds, k=config.num_folds, seed=config.fold_seed)
    patient_fold = index.patient.map(folds).to_numpy()
    validate = in_folds & (patient_fold == fold)
    return np.flatnonzero(in_folds & ~validate), np.flatnonzero(validate)


def heldout_rows(config: TrainConfig, index) -> np.ndarray:
    """Row numbers of the held-out (test) patients' patches."""
    return np.flatnonzero(index.patient.isin(config.held_out).to_numpy())
