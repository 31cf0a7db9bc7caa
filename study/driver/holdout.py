"""The test estimate: the chosen configuration's fold ensemble on the held-out patients.

A study with a test set (`StudyConfig.test_patients`, resolved into `train.held_out` before
the search) ends by evaluating the best completed trial (highest cross-validated score) on
patients that no fold trained or validated on, and search and pruning never saw. Its
cross-validated estimate is biased upwards by the selection; the test estimate is not. The
difference of the two (cv - test) is the optimism of the selection.

test.parquet, one row per metric (mtl.evaluate.METRIC_LEVELS): study, trial_id, level,
metric, cv (fold mean at the last epoch), cv_std, test, ci_low, ci_high (95% bootstrap
interval over test patients), optimism (cv - test), test_patients, test_images,
test_patches, folds (models in the ensemble).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl import (
    bootstrap,
    fold_labels,
    heldout_rows,
    load_models,
    open_store,
    patient_sums,
    resolve_device,
    write_parquet,
)
from study.results.export import choose_trial, fold_model, trial_checkpoint, trial_config
from study.stats.selection import select_epochs
from study.storage import fetch_store, store_cache

TEST_COLUMNS = (
    "study", "trial_id", "level", "metric", "cv", "cv_std", "test", "ci_low", "ci_high",
    "optimism", "test_patients", "test_images", "test_patches", "folds",
)  # fmt: skip
RESAMPLES = 2000


def evaluate_test_set(
    folder: Path,
    name: str,
    epochs: pd.DataFrame,
    trials: pd.DataFrame,
    repeats: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Evaluate the best completed trial of the study in FOLDER (its tables `epochs` and
    `trials`) on its held-out patients; write and return test.parquet. ValueError when the
    study has no test set or no completed trial."""
    folder = Path(folder)
    best = choose_trial(trials, "best")
    config = trial_config(best)
    if not config.held_out:
        raise ValueError("the study holds no patients out (test_patients=0): no test estimate")
    # A store given as a URI is read from this node's cached copy, as the trials read it.
    store = open_store(fetch_store(config.data, store_cache()))
    rows = heldout_rows(config, store.index)
    folds = fold_labels(config.num_folds, repeats)
    # From a bucket, the checkpoint is downloaded to a temporary folder, removed after.
    with trial_checkpoint(folder, best.trial_id).as_directory() as checkpoint:
        states = [fold_model(checkpoint, f) for f in folds]
    device = resolve_device(config.device)
    models = load_models(config, states, device)
    sums = patient_sums(config, models, store, rows, device)
    test = bootstrap(sums, RESAMPLES, seed).set_index("metric")
    cv = cross_validated(epochs, best.trial_id, list(test.index))
    table = pd.DataFrame(
        {
            "study": name,
            "trial_id": best.trial_id,
            "level": test.level,
            "metric": test.index,
            "cv": cv["mean"].reindex(test.index),
            "cv_std": cv["std"].reindex(test.index),
            "test": test.value,
            "ci_low": test.ci_low,
            "ci_high": test.ci_high,
            "optimism": cv["mean"].reindex(test.index) - test.value,
            "test_patients": len(sums),
            "test_images": int(sums["images"].sum()),
            "test_patches": int(sums["patches"].sum()),
            "folds": len(folds),
        }
    ).reset_index(drop=True)[list(TEST_COLUMNS)]
    write_parquet(table, folder / "test.parquet", "test")
    return table


def cross_validated(epochs: pd.DataFrame, trial_id: str, metrics: list[str]) -> pd.DataFrame:
    """Mean and std over folds of each metric of one trial at its last epoch (validation)."""
    last = select_epochs(epochs[epochs.trial_id == trial_id], "patch", "final")
    present = [m for m in metrics if m in last]
    return pd.DataFrame({"mean": last[present].mean(), "std": last[present].std(ddof=1)})
