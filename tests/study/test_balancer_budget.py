"""One tuning budget for every balancer: the searcher gives each exactly its trials, each
balancer trains a study to the end, and the report compares each one's best with tuned
fixed weights, paired by fold."""

import math
import sys

import optuna
import pandas as pd
import pytest
import ray.cloudpickle

from mtl import CHOICES, tiny
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.report.document import write_report
from study.spec.presets import StudyConfig, balancers, get_preset
from study.spec.space import Choice, LogUniform
from study.stats.budget import BUDGET_COLUMNS, against_reference, budget_sentence
from tests.study.test_scheduling import ScriptedTrainer

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests
FOLDS = list("ABCDE")


def _per_fold() -> pd.DataFrame:
    scores = {
        "fixed-1": [0.70, 0.72, 0.68, 0.71, 0.69],  # fixed's best (mean 0.70)
        "fixed-2": [0.60, 0.61, 0.59, 0.62, 0.58],
        "famo-1": [0.80, 0.82, 0.78, 0.81, 0.79],  # +0.10 on every fold
        "rlw-1": [0.701, 0.719, 0.681, 0.709, 0.69],  # within 0.001 of fixed's best
        "rlw-2": [0.50, 0.52, 0.48, 0.51, 0.49],
        "mgda-1": [0.75, 0.62, 0.78, 0.66, 0.70],  # +0.05 -0.10 +0.10 -0.05 +0.01
    }
    return pd.DataFrame(
        [
            {"trial_id": t, "fold": f, "score": s[j]}
            for t, s in scores.items()
            for j, f in enumerate(FOLDS)
        ]  # fmt: skip
    )


BALANCERS = {"fixed-1": "fixed", "fixed-2": "fixed", "famo-1": "famo", "rlw-1": "rlw",
             "rlw-2": "rlw", "mgda-1": "mgda"}  # fmt: skip


def test_each_balancers_best_against_the_references_best_by_hand():
    table = against_reference(_per_fold(), BALANCERS, "fixed").set_index("balancer")
    assert tuple(table.reset_index().columns) == BUDGET_COLUMNS
    assert list(table.index) == ["fixed", "famo", "mgda", "rlw"]  # reference, then by mean
    assert table.loc["fixed", "trial_id"] == "fixed-1" and table.loc["fixed", "trials"] == 2
    assert table.loc["fixed", "verdict"] == "reference"
    famo = table.loc["famo"]
    assert famo.diff_vs_reference == pytest.approx(0.10)
    assert (famo.ci_low, famo.ci_high) == pytest.approx((0.10, 0.10))
    assert famo.verdict == "better"
    rlw = table.loc["rlw"]
    assert rlw.trial_id == "rlw-1" and rlw.verdict == "equivalent"  # |diff| <= 0.001 < rope
    # mgda: differences .05 -.10 .10 -.05 .01, mean 0.002, sd 0.0807 (ddof 1): the corrected
    # scale sqrt(v (1/5 + 1/4)), the interval mean +- t(4) * scale.
    d = [0.05, -0.10, 0.10, -0.05, 0.01]
    mean = sum(d) / 5
    v = sum((x - mean) ** 2 for x in d) / 4
    half = 2.7764451051977987 * math.sqrt(v * (1 / 5 + 1 / 4))
    mgda = table.loc["mgda"]
    assert mgda.diff_vs_reference == pytest.approx(mean)
    assert (mgda.ci_low, mgda.ci_high) == pytest.approx((mean - half, mean + half))
    assert mgda.verdict == "undecided"
    sentence = budget_sentence(table.reset_index(), "fixed", 2, 0.01)
    assert "established better: famo (+0.100 [+0.100, +0.100])" in sentence
    assert "1 equivalent, 1 undecided" in sentence


def test_none_established_better_is_said_so():
    per_fold = _per_fold()
    table = against_reference(per_fold[per_fold.trial_id != "famo-1"], BALANCERS, "fixed")
    assert "none is established better" in budget_sentence(table, "fixed", 2, 0.01)


def test_a_balancer_without_a_score_is_listed_not_lost():
    per_fold = _per_fold()
    per_fold.loc[per_fold.trial_id == "famo-1", "score"] = math.nan
    expected = ["fixed", "famo", "rlw", "mgda", "upgrad"]
    table = against_reference(per_fold, BALANCERS, "fixed", expected=expected)
    assert list(table.balancer) == ["fixed", "mgda", "rlw", "famo", "upgrad"]
    by_balancer = table.set_index("balancer")
    assert by_balancer.loc[["famo", "upgrad"], "verdict"].tolist() == ["no result"] * 2
    assert by_balancer.loc["famo", "trials"] == 1
    assert "2 no result" in budget_sentence(table, "fixed", 2, 0.01)


def test_a_budget_needs_a_balancer_choice_and_a_matching_num_samples():
    base = {"name": "b", "train": tiny(), "synthetic": balancers().synthetic}
    space = {"balancer": Choice(("equal", "fixed")), "lr": LogUniform(1e-4, 1e-2)}
    budgeted = StudyConfig(**base, space=space, num_samples=6, trials_per_balancer=3)
    assert budgeted.balancer_budgets == {"equal": 3, "fixed": 3}
    with pytest.raises(ValueError, match="num_samples is 5, but trials_per_balancer=3"):
        StudyConfig(**base, space=space, num_samples=5, trials_per_balancer=3)
    with pytest.raises(ValueError, match="no balancer Choice"):
        StudyConfig(**base, space={"lr": LogUniform(1e-4, 1e-2)}, num_samples=3,
                    trials_per_balancer=3)  # fmt: skip
    preset = get_preset("balancers")
    assert tuple(preset.balancer_budgets) == CHOICES["balancer"]  # every balancer there is
    assert len(preset.balancer_budgets) == 12


@pytest.mark.slow  # a whole study (scripted folds)
def test_every_balancer_gets_its_budget_repeats_included(ray_local, tmp_path):
    """Three balancers, 3 trials each: `fixed` searches its three weights (3 trials),
    `famo` its learning rate and decay (3 trials), `equal` has nothing to search: its one
    configuration is trained once and its two other proposals are told its result."""
    study = StudyConfig(
        name="budget", train=tiny().replace(epochs=1),
        space={"balancer": Choice(("equal", "fixed", "famo")),
               "balancer_lr": LogUniform(1e-3, 0.1), "famo_decay": LogUniform(1e-5, 1e-2),
               **{f"fixed_{t}": LogUniform(0.1, 10.0) for t in ("seg", "pattern", "intensity")}},
        num_samples=9, trials_per_balancer=3, max_concurrent=2,
        synthetic=balancers().synthetic,
    )  # fmt: skip
    study = prepare_data(study, tmp_path)
    _, trials = run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))
    assert trials.balancer.value_counts().to_dict() == {"fixed": 3, "famo": 3, "equal": 1}
    assert (trials.status == "completed").all()
    ot = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path}/budget/optuna.db")
    proposals = pd.Series([t.params["balancer"] for t in ot.trials]).value_counts().to_dict()
    assert proposals == {"equal": 3, "fixed": 3, "famo": 3}


@pytest.mark.slow  # twelve trials, really trained
def test_the_balancers_preset_demo_sized_trains_every_balancer_and_reports(ray_local, tmp_path):
    """The `balancers` preset at its smallest: one trial per balancer of the tiny model, one
    epoch, two folds. Every balancer, the seven new ones included, trains to the end with a
    finite score, and the report compares each with fixed weights."""
    preset = balancers()
    study = StudyConfig(
        name="balancers", train=tiny().replace(epochs=1, num_folds=2), space=preset.space,
        num_samples=12, trials_per_balancer=1, max_concurrent=2,
        synthetic=preset.synthetic.__class__(patients=10, size=64, specimens=1, seed=0),
    )  # fmt: skip
    study = prepare_data(study, tmp_path)
    _, trials = run_study(StudyRequest(study, tmp_path))
    assert sorted(trials.balancer) == sorted(preset.space["balancer"].values)
    assert (trials.status == "completed").all()
    assert trials.cv_score.map(math.isfinite).all()
    write_report(tmp_path / "balancers", figures=False)
    table = pd.read_csv(tmp_path / "balancers" / "balancers.csv")
    assert table.balancer.iloc[0] == "fixed" and len(table) == 12
    assert set(table.verdict) <= {"reference", "better", "worse", "equivalent", "undecided"}
    report = (tmp_path / "balancers" / "report.md").read_text()
    assert "against tuned fixed weights" in report


def test_the_command_line_sets_the_budget_and_the_trials_with_it():
    from study.run import parse_args, resolve_study

    study = resolve_study(parse_args(["--preset", "balancers", "--trials-per-balancer", "2"]))
    assert (study.trials_per_balancer, study.num_samples) == (2, 24)
    with pytest.raises(ValueError, match="num_samples is 5, but trials_per_balancer=2"):
        resolve_study(parse_args(["--preset", "balancers", "--trials-per-balancer", "2",
                                  "--num-samples", "5"]))  # fmt: skip
