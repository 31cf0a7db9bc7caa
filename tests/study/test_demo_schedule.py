"""The demo always compares: its warm-start 2 x 2 (balancer x segmentation loss) is trained
to the end whatever order the trials reach ASHA's rung in, ASHA still stops searched
trials, and no configuration is trained twice (a repeated proposal is told the earlier
result). Scripted trainers set the scores and the order; the demo's own study runs."""

from __future__ import annotations

import dataclasses
import sys
import time

import optuna
import pandas as pd
import pytest
import ray.cloudpickle

from study.driver.prepare import StudyRequest, prepare_data
from study.driver.search import REPEATS
from study.driver.tuner import run_study
from study.report.document import write_report
from study.report.summary import configuration_labels
from study.spec.presets import demo
from tests.study.test_scheduling import ScriptedTrainer

pytestmark = pytest.mark.slow  # whole studies
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


class DemoTrainer(ScriptedTrainer):
    """A configuration's score (`score_of(config)`) and its seconds per epoch (`delay(config)`)
    are set by the subclass."""

    def score(self) -> float:
        time.sleep(self.delay(self.config))
        return min(self.score_of(self.config) + 0.01 * self.epoch, 1.0)

    @staticmethod
    def delay(config) -> float:
        return 0.0


def _warm(config) -> bool:
    """A warm-start point of the demo: equal, or GradNorm at alpha 0.5."""
    return config.balancer == "equal" or config.alpha == 0.5


class WarmStartWorst(DemoTrainer):
    """The warm-start 2 x 2 scores below every searched trial: plain ASHA would stop them."""

    @staticmethod
    def score_of(config) -> float:
        return 0.3 if _warm(config) else 0.5 + config.alpha / 10


class WarmStartBest(DemoTrainer):
    """The searched trials score below the warm start: ASHA stops them."""

    @staticmethod
    def score_of(config) -> float:
        return 0.8 if _warm(config) else 0.2 + config.alpha / 10


class SlowWarmStart(WarmStartWorst):
    """The warm start reaches the rung last (slow epochs), below the searched trials."""

    @staticmethod
    def delay(config) -> float:
        return 0.15 if _warm(config) else 0.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    study = dataclasses.replace(demo(), test_patients=0.0)  # the schedule, not the test set
    return prepare_data(study, folder), folder


@pytest.mark.parametrize("trainer", [WarmStartWorst, WarmStartBest, SlowWarmStart])
def test_the_demo_completes_its_four_configurations_in_every_order(
    ray_local, prepared, tmp_path, trainer
):
    study, _ = prepared
    _, trials = run_study(StudyRequest(study, tmp_path, trainer=trainer))
    active = ["seg_loss", "balancer", "alpha"]
    key = trials[active].apply(lambda row: repr(tuple(row)), axis=1)
    assert not key.duplicated().any(), trials[active]  # no configuration trained twice
    completed = trials[trials.status == "completed"]
    warm = [(p["seg_loss"], p["balancer"], p.get("alpha")) for p in study.warm_start]  # the 2 x 2
    done = {
        (r.seg_loss, r.balancer, None if pd.isna(r.alpha) else r.alpha)
        for r in completed.itertuples()
    }
    assert set(warm) <= done and len(done) >= 4
    if trainer is WarmStartBest:
        assert (trials.status == "pruned").any()  # ASHA still stops searched trials
    # Optuna's repeated proposals were told their original's result, not trained.
    storage = f"sqlite:///{tmp_path / study.name / 'optuna.db'}"
    optuna_trials = optuna.load_study(study_name=study.name, storage=storage).trials
    by_tune_id = {t.user_attrs.get("tune_trial_id"): t for t in optuna_trials}
    repeats = [t for t in optuna_trials if REPEATS in t.user_attrs]
    for repeat in repeats:
        original = by_tune_id[repeat.user_attrs[REPEATS]]
        assert (repeat.state, repeat.value) == (original.state, original.value)
    # The report says so, and its tables list every trial: a completed one under its label
    # (unique), a stopped one under its id.
    write_report(tmp_path / study.name, figures=False)
    report = (tmp_path / study.name / "report.md").read_text()
    assert ("Optuna proposed" in report) == bool(repeats)
    labels = configuration_labels(trials)
    for trial in trials.itertuples():
        shown = labels[trial.trial_id] if trial.status == "completed" else trial.trial_id
        assert f"| {shown} |" in report, shown
