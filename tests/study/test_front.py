"""The per-task front and established dominance, by hand on 4 configurations x 3 tasks."""

import numpy as np
import pandas as pd
import pytest

from study.stats import paired_test, verdict
from study.stats.front import FRONT_COLUMNS, task_front

METRICS = {"seg": "pixel_acc", "pattern": "pattern_acc", "intensity": "intensity_acc"}
NOISE = [0.05, -0.05, 0.05, -0.05, 0.0]  # large fold-to-fold swings, mean 0


def _per_fold() -> pd.DataFrame:
    values = {
        "a": (0.90, 0.70, 0.80),  # on the front
        "b": (0.80, 0.90, 0.80),  # on the front: better pattern, worse seg than a
        "c": (0.85, 0.60, 0.70),  # below a on every task, on every fold: established
        # d: 0.01 below a on every task's mean, but with swings of ±0.1 between folds
        "d": (0.89, 0.69, 0.79),
    }
    rows = []
    for trial, means in values.items():
        for j, fold in enumerate("ABCDE"):
            swing = 2 * NOISE[j] if trial == "d" else 0.0
            seg, pattern, intensity = (m + swing for m in means)
            rows.append({"trial_id": trial, "fold": fold, "pixel_acc": seg,
                         "pattern_acc": pattern, "intensity_acc": intensity})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_front_by_means_and_the_dominance_the_folds_establish():
    front = task_front(_per_fold(), METRICS)
    assert tuple(front.columns) == FRONT_COLUMNS and len(front) == 4 * 3
    per_trial = front.groupby("trial_id").first()
    assert per_trial.on_front.to_dict() == {"a": True, "b": True, "c": False, "d": False}
    # c: a is better on every task on every fold (a point mass 0.05-0.10 above the rope).
    assert per_trial.at["c", "established_dominated"] and per_trial.at["c", "dominated_by"] == "a"
    # d is below a by means on every task, but its folds swing by ±0.1: undecided, so it is
    # dominated by means and not established dominated (by a, or by anyone).
    assert (
        not per_trial.at["d", "established_dominated"] and per_trial.at["d", "dominated_by"] == ""
    )
    assert not per_trial.at["a", "established_dominated"]
    assert not per_trial.at["b", "established_dominated"]
    means = front.set_index(["trial_id", "task"])["mean"]
    assert means["d", "seg"] == pytest.approx(0.89) and means["b", "pattern"] == pytest.approx(0.9)
    # The interval of a mean: m +- t(4) * sqrt(var * (1/5 + 1/4)); zero width for constants.
    a_seg = front[(front.trial_id == "a") & (front.task == "seg")].iloc[0]
    assert (a_seg.ci_low, a_seg.ci_high) == pytest.approx((0.9, 0.9))
    d_seg = front[(front.trial_id == "d") & (front.task == "seg")].iloc[0]
    var = sum((2 * n) ** 2 for n in NOISE) / 4
    half = 2.7764451 * (var * (1 / 5 + 1 / 4)) ** 0.5
    assert (d_seg.ci_low, d_seg.ci_high) == pytest.approx((0.89 - half, 0.89 + half), rel=1e-5)


def test_a_loss_as_headline_metric_counts_lower_as_better():
    per_fold = _per_fold()
    per_fold["loss_seg"] = 1 - per_fold.pixel_acc  # the same ranking, as a loss
    front = task_front(per_fold, {**METRICS, "seg": "loss_seg"})
    per_trial = front.groupby("trial_id").first()
    assert per_trial.on_front.to_dict() == {"a": True, "b": True, "c": False, "d": False}
    assert per_trial.at["c", "dominated_by"] == "a"


@pytest.mark.parametrize("spread", [0.002, 0.01, 0.03])
def test_testing_only_the_pairs_the_means_allow_finds_every_dominance(spread):
    """task_front tests a pair only where the means allow a verdict of better-or-equivalent
    on every task and better on one; on random studies (ties, missing folds, all alike) its
    dominated_by is what testing every pair on every task gives."""
    rng = np.random.default_rng(int(spread * 1000))
    means = np.round(rng.uniform(0.6, 0.9, size=(24, 3)), 1 if spread == 0.01 else 3)  # ties
    means[:4] = means[4]  # some configurations alike: equivalences
    means[5] = means[6] + (0.02, 0.0, 0.0)  # better by twice the rope on one task only
    rows = []
    for i, mean in enumerate(means):
        for fold in "ABCDE":
            seg, pattern, intensity = mean + rng.normal(0, spread, 3)
            if rng.random() < 0.05:
                pattern = np.nan  # a fold without the metric: the pair shares fewer folds
            rows.append({"trial_id": f"t{i:02d}", "fold": fold, "pixel_acc": seg,
                         "pattern_acc": pattern, "intensity_acc": intensity})  # fmt: skip
    per_fold = pd.DataFrame(rows)
    front = task_front(per_fold, METRICS)

    wide = {m: per_fold.pivot(index="trial_id", columns="fold", values=m) for m in METRICS.values()}
    trials = list(wide["pixel_acc"].index)

    def every_pair(trial: str) -> str:
        by = []
        for other in trials:
            verdicts = []
            for metric in METRICS.values():
                a, b = wide[metric].loc[other], wide[metric].loc[trial]
                shared = a.notna() & b.notna()
                test = paired_test((a[shared] - b[shared]).to_numpy(), 1 / 4)
                verdicts.append(verdict(test.p_worse, test.p_rope, test.p_better))
            if (
                other != trial
                and set(verdicts) <= {"better", "equivalent"}
                and "better" in verdicts
            ):
                by.append(other)
        return ",".join(by)

    found = front.drop_duplicates("trial_id").set_index("trial_id").dominated_by
    assert found.to_dict() == {trial: every_pair(trial) for trial in trials}
    assert found.str.len().gt(0).sum() >= 3  # the studies have dominated configurations
    if spread == 0.002:  # folds that tell 0.02 apart: established, by a small margin
        assert "t05" in found["t06"].split(",")
