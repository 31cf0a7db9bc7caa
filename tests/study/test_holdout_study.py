"""A study with a test set and repeated folds, end to end: stats.parquet and test.parquet,
test labels that never reach what the search sees, and fold labels of repeated CV."""

import shutil
import sys

import pandas as pd
import pytest
import ray.cloudpickle

from mtl import (
    INTENSITIES,
    METRIC_LEVELS,
    PATTERNS,
    SynthSpec,
    build_synthetic_store,
    holdout_patients,
    tiny,
)
from study.driver.holdout import TEST_COLUMNS
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.spec.presets import StudyConfig, grid
from study.stats import STATS_COLUMNS
from tests.study.test_scheduling import ScriptedTrainer

pytestmark = pytest.mark.slow  # whole studies

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


def relabelled(store_path, out, patients) -> str:
    """A copy of a store whose `patients` carry another pattern and the other intensity."""
    shutil.copytree(store_path, out)
    index = pd.read_parquet(out / "index.parquet")
    mine = index.patient.isin(patients)
    other = {p: PATTERNS[(PATTERNS.index(p) + 3) % len(PATTERNS)] for p in PATTERNS}
    index.loc[mine, "pattern"] = index.loc[mine, "pattern"].map(other)
    index.loc[mine, "intensity"] = index.loc[mine, "intensity"].map(
        {INTENSITIES[0]: INTENSITIES[1], INTENSITIES[1]: INTENSITIES[0]}
    )
    index.to_parquet(out / "index.parquet", index=False)
    return str(out)


def test_stats_test_estimate_and_test_labels_that_the_search_never_sees(ray_local, tmp_path):
    store = build_synthetic_store(
        tmp_path / "a", SynthSpec(patients=10, size=64, specimens=1, seed=0)
    )
    held_out = holdout_patients(store.index, 0.2, seed=0)
    assert len(held_out) == 2
    twin = relabelled(store.path, tmp_path / "b", held_out)

    def study(name: str, data: str) -> StudyConfig:
        # Three folds: fewer models to train and to evaluate on the test set.
        train = tiny().replace(data=data, held_out=held_out, epochs=1, num_folds=3)
        return StudyConfig(name=name, train=train, configurations=grid(seg_loss=("dice", "bce")))

    tables = {}
    for name, data in (("a", str(store.path)), ("b", twin)):
        config = prepare_data(study(name, data), tmp_path)
        run_study(StudyRequest(config, tmp_path))
        tables[name] = tuple(
            pd.read_parquet(tmp_path / name / f"{t}.parquet") for t in ("epochs", "trials", "test")
        )

    # One stats row per (completed trial, metric), exactly one best per metric.
    stats = pd.read_parquet(tmp_path / "a" / "stats.parquet")
    assert tuple(stats.columns[1 : 1 + len(STATS_COLUMNS)]) == STATS_COLUMNS
    assert (stats.study == "a").all()
    assert pd.read_csv(tmp_path / "a" / "stats.csv").shape == stats.shape
    metrics = stats.metric.unique()
    assert {"score", "pixel_acc", "pattern_acc", "patient_pattern_acc"} <= set(metrics)
    assert len(stats) == 2 * len(metrics) and not stats.duplicated(["trial_id", "metric"]).any()
    assert (stats.groupby("metric").is_best.sum() == 1).all()

    epochs, trials, test = tables["a"]
    assert tuple(test.columns) == TEST_COLUMNS
    assert list(test.metric) == list(METRIC_LEVELS)
    best = trials.loc[trials.cv_score.idxmax()].trial_id
    assert (test.trial_id == best).all() and (test.test_patients == 2).all()
    assert (test.test_patches == 30).all() and (test.folds == 3).all()
    score = test.set_index("metric").loc["score"]
    assert score.cv == pytest.approx(trials.set_index("trial_id").at[best, "cv_score"])
    assert score.optimism == pytest.approx(score.cv - score.test)
    assert score.ci_low <= score.test <= score.ci_high

    # Other labels for the test patients: what Optuna and ASHA see (every validation metric
    # of every fold and epoch, the cross-validated scores) is the same, the test is not.
    def search_view(epochs, trials):
        loss = trials.set_index("trial_id").seg_loss
        view = epochs.assign(seg_loss=epochs.trial_id.map(loss))
        where = ["study", "trial_id", "node", "node_ip", "node_id", "seconds", "data_seconds"]
        view = view.drop(columns=where)
        return view.sort_values(["seg_loss", "fold", "epoch", "split"], ignore_index=True)

    pd.testing.assert_frame_equal(search_view(*tables["a"][:2]), search_view(*tables["b"][:2]))
    scores = [t[1].sort_values("seg_loss").cv_score.to_numpy() for t in tables.values()]
    assert (scores[0] == scores[1]).all()
    assert not tables["a"][2].test.equals(tables["b"][2].test)

    # A resumed study evaluates the test set again (nothing to train).
    (tmp_path / "a" / "test.parquet").unlink()
    run_study(StudyRequest(study("a", str(store.path)), tmp_path, resume=True))
    again = pd.read_parquet(tmp_path / "a" / "test.parquet")
    pd.testing.assert_frame_equal(again, tables["a"][2])


class SeedEcho(ScriptedTrainer):
    """Every validation accuracy is a function of the fold's split seed and letter, so the
    table shows which split each fold worker trained."""

    def score(self) -> float:
        return 0.5 + 0.1 * self.config.fold_seed + 0.01 * "ABC".index(self.fold)


def test_repeated_cross_validation_trains_every_split(ray_local, tmp_path):
    train = tiny().replace(num_folds=3, epochs=1, fold_seed=4, balancer="gradnorm")
    study = StudyConfig(
        name="repeated",
        train=train,
        configurations=grid(alpha=(0.1, 0.2)),
        repeats=2,
        synthetic=SynthSpec(patients=10, size=64, specimens=1, seed=0),
    )
    epochs, trials = run_study(StudyRequest(study, tmp_path, trainer=SeedEcho))
    val = epochs[epochs.split == "val"].set_index(["trial_id", "fold"]).pixel_acc
    for trial_id in trials.trial_id:
        # Repeat r trains the split of fold_seed + r - 1.
        assert val[trial_id].to_dict() == pytest.approx(
            {"1A": 0.9, "1B": 0.91, "1C": 0.92, "2A": 1.0, "2B": 1.01, "2C": 1.02}
        )
    stats = pd.read_parquet(tmp_path / "repeated" / "stats.parquet")
    assert (stats.n_folds == 6).all()  # n = repeats x k paired results
