"""ASHA decides on the fold-mean score, and Optuna hears of stopped trials as PRUNED.

A scripted stand-in for FoldTrainer makes the folds deliberately unequal: fold E is much
harder than the others. The best configuration's fold E is worse than weaker
configurations' easy folds, so a scheduler that compared single folds would stop it.
"""

import dataclasses
import io
import sys

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
from rich.console import Console

import mtl
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.report.document import write_report
from study.report.summary import configuration_labels
from study.results.tables import REPEATS
from study.spec.presets import StudyConfig, smoke
from study.spec.space import Choice, LogUniform

pytestmark = pytest.mark.slow  # a whole study

HARDNESS = {"A": 0.0, "B": 0.0, "C": 0.0, "D": 0.0, "E": 0.6}
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


def fold_score(alpha: float, fold: str, epoch: int) -> float:
    return alpha - HARDNESS[fold] + 0.01 * epoch


class ScriptedTrainer(mtl.ScriptedTrainer):
    """mtl's scripted trainer; every validation accuracy is `score()`, by default
    fold_score. Subclasses in other tests script other scores."""

    def score(self) -> float:
        return fold_score(self.config.alpha, self.fold, self.epoch)


def _alpha_search(name: str, **fields) -> StudyConfig:
    """A GradNorm search over alpha, 4 epochs, pruned by ASHA from epoch 1, one trial at a
    time (ASHA's rungs fill in a fixed order)."""
    return StudyConfig(
        name=name,
        train=smoke().train.replace(epochs=4, balancer="gradnorm"),
        space={"alpha": LogUniform(0.05, 1.0)},
        scheduler="asha",
        grace_period=1,
        reduction_factor=2,
        max_concurrent=1,
        synthetic=smoke().synthetic,
        **fields,
    )


def test_asha_uses_the_fold_mean_and_optuna_records_pruned_trials(ray_local, tmp_path):
    study = _alpha_search("asha", num_samples=10)
    study = prepare_data(study, tmp_path)
    _, trials = run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))

    best = trials.loc[trials.alpha.idxmax()]
    assert best.status == "completed" and best.epochs_run == 4
    pruned = trials[trials.status == "pruned"]
    assert len(pruned) >= 2
    # A per-fold scheduler would have compared the best configuration's hardest fold with
    # the easy folds of weaker ones, and lost:
    assert fold_score(best.alpha, "E", 1) < max(fold_score(a, "A", 1) for a in pruned.alpha)
    # ... the fold-mean never stopped it, and every pruned trial is worse on that mean.
    assert (pruned.best_cv_score < best.best_cv_score).all()

    _assert_optuna_matches_the_tables(tmp_path / "asha", "asha")


def _assert_optuna_matches_the_tables(folder, name) -> optuna.Study:
    """Trial by trial: Optuna's state, value and intermediate values are the tables'."""
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    trials = pd.read_parquet(folder / "trials.parquet")
    trials = trials[trials.optuna_trial.notna()]  # the single-task baselines are not Optuna's
    epochs = pd.read_parquet(folder / "epochs.parquet")
    val = epochs[epochs.split == "val"]
    # The cross-validated score by epoch: the fold-mean of the score metrics, averaged.
    by_epoch = val.groupby(["trial_id", "epoch"])[["pixel_acc", "pattern_acc", "intensity_acc"]]
    cv_score = by_epoch.mean().mean(axis=1)
    # Every Optuna trial is a table's trial, or a repeated proposal told its original's result
    # (study.search: no configuration is trained twice).
    trained = [t for t in study.trials if REPEATS not in t.user_attrs]
    assert len(trained) == len(trials)
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in trained}
    for repeat in (t for t in study.trials if REPEATS in t.user_attrs):
        original = by_tune_id[repeat.user_attrs[REPEATS]]
        assert (repeat.state, repeat.value) == (original.state, original.value)
    for row in trials.itertuples():
        trial = study.trials[int(row.optuna_trial)]
        assert trial.user_attrs["tune_trial_id"] == row.trial_id
        assert trial.user_attrs["study_folder"] == str(folder.resolve())
        assert trial.state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[row.status]
        scores = cv_score.loc[row.trial_id]
        assert trial.value == pytest.approx(scores.loc[row.epochs_run]) == row.cv_score
        assert trial.intermediate_values == pytest.approx(scores.to_dict())
        assert max(trial.intermediate_values) == row.epochs_run
    return study


def test_an_equal_weight_trial_has_no_alpha_anywhere(ray_local, tmp_path):
    study = StudyConfig(
        name="conditional",
        train=smoke().train.replace(epochs=3),
        space={"balancer": Choice(("equal", "gradnorm")), "alpha": LogUniform(0.05, 1.0)},
        warm_start=({"balancer": "equal"}, {"balancer": "gradnorm", "alpha": 0.5}),
        num_samples=6,
        scheduler="asha",
        grace_period=1,
        reduction_factor=2,
        max_concurrent=1,
        synthetic=smoke().synthetic,
    )
    _, trials = run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))
    optuna_study = _assert_optuna_matches_the_tables(tmp_path / "conditional", "conditional")
    # The warm start ran first, as given.
    first = trials.sort_values("optuna_trial").head(2)
    assert first.balancer.tolist() == ["equal", "gradnorm"] and first.alpha.iloc[1] == 0.5
    labels = configuration_labels(trials)
    for row in trials.itertuples():
        params = optuna_study.trials[row.optuna_trial].params
        if row.balancer == "equal":
            assert "alpha" not in params and pd.isna(row.alpha)
            assert "alpha" not in labels[row.trial_id]
        else:
            assert params["alpha"] == pytest.approx(row.alpha)
            assert "alpha=" in labels[row.trial_id]
    assert (trials.balancer == "equal").any() and (trials.balancer == "gradnorm").any()


def test_a_multi_objective_search_with_baselines(ray_local, tmp_path):
    """--objective tasks --baselines: Optuna searches the three tasks' metrics as objectives;
    ASHA stops trials on the score, and a stopped trial is PRUNED in Optuna (its last values
    kept as an attribute), so best_trials, the front, holds configurations trained to the end
    only. The three baselines (tasks=seg, pattern, intensity) train the study's epochs and
    folds to the end (ASHA, which stops weak searched trials, never stops them: their score
    is undefined) and Optuna never hears of them."""
    study = _alpha_search("tasks", num_samples=6, objective="tasks", baselines=True)
    assert study.objectives == ("pixel_acc", "pattern_acc", "intensity_acc")
    assert study.num_trials == 6 + 3
    study = prepare_data(study, tmp_path)
    epochs, trials = run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))
    assert len(trials) == 9

    single = trials[trials.tasks.map(len) == 1]
    assert sorted(t[0] for t in single.tasks) == ["intensity", "pattern", "seg"]
    assert (single.status == "completed").all() and (single.epochs_run == 4).all()
    assert single.optuna_trial.isna().all() and single.cv_score.isna().all()
    assert (single.alpha == study.train.alpha).all()  # the base configuration
    for row in single.itertuples():
        rows = epochs[epochs.trial_id == row.trial_id]
        assert len(rows) == 5 * 4 * 2 and sorted(rows.fold.unique()) == list("ABCDE")
        (task,) = row.tasks
        others = [f"loss_{t}" for t in ("seg", "pattern", "intensity") if t != task]
        assert rows[f"loss_{task}"].notna().all() and rows[others].isna().all(axis=None)

    storage = f"sqlite:///{tmp_path / 'tasks' / 'optuna.db'}"
    optuna_study = optuna.load_study(study_name="tasks", storage=storage)
    assert [d.name for d in optuna_study.directions] == ["MAXIMIZE"] * 3
    assert len(optuna_study.trials) == 6  # the searched trials only
    objectives = ["cv_pixel_acc", "cv_pattern_acc", "cv_intensity_acc"]
    by_number = {t.number: t for t in optuna_study.trials}
    searched = trials[trials.optuna_trial.notna()]
    assert (searched.status == "pruned").sum() >= 2
    for row in searched.itertuples():
        trial = by_number[int(row.optuna_trial)]
        values = [getattr(row, name) for name in objectives]
        if row.status == "pruned":
            assert trial.state.name == "PRUNED" and trial.values is None
            assert trial.user_attrs["last_values"] == pytest.approx(values)
        else:
            assert trial.state.name == "COMPLETE" and trial.values == pytest.approx(values)
    best = optuna_study.best_trials
    completed = set(searched.optuna_trial[searched.status == "completed"].astype(int))
    assert best and {t.number for t in best} <= completed


def test_a_grid_with_baselines_labels_them_by_their_task(ray_local, tmp_path):
    study = dataclasses.replace(smoke(), name="grid", baselines=True)
    study = dataclasses.replace(study, train=study.train.replace(epochs=1))
    _, trials = run_study(StudyRequest(prepare_data(study, tmp_path), tmp_path,
                                       trainer=ScriptedTrainer))  # fmt: skip
    assert (trials.status == "completed").all()
    labels = sorted(configuration_labels(trials))
    assert labels == [
        "seg_loss=bce", "seg_loss=dice", "tasks=intensity, seg_loss=dice",
        "tasks=pattern, seg_loss=dice", "tasks=seg, seg_loss=dice",
    ]  # fmt: skip
    # Every metric of every trial is the same scripted number, so each configuration's Δm is
    # 0 on every fold: equivalent to training each task alone.
    write_report(tmp_path / "grid", console=Console(file=io.StringIO()))
    report = (tmp_path / "grid" / "report.md").read_text()
    assert "of 2 configuration(s), 0 helps, 0 hurts, 2 equivalent, 0 undecided" in report
    # Equal on every task: both on the front, neither dominated (front.parquet, typed).
    assert "Per-task front (pixel_acc, pattern_acc, intensity_acc; means over folds): 2 of 2" in (
        " ".join(report.split())
    )
    front = pq.read_table(tmp_path / "grid" / "front.parquet")
    assert front.schema.metadata[b"table"] == b"front" and front.num_rows == 2 * 3
    assert all(front.column("on_front").to_pylist())
    assert (tmp_path / "grid" / "front.png").exists()
    stats = pd.read_parquet(tmp_path / "grid" / "stats.parquet")  # the baselines have no score
    assert set(stats.trial_id) == set(trials.trial_id[trials.tasks.map(len) == 3])
    gains = pd.read_csv(tmp_path / "grid" / "gains.csv")
    assert len(gains) == 2 * 4 and (gains.verdict == "equivalent").all()
    assert (gains["mean"] == 0).all() and set(gains.term) == {"delta_m", "seg", "pattern",
                                                               "intensity"}  # fmt: skip
