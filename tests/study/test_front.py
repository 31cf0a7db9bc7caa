"""The per-task front and established dominance, by hand on 4 configurations x 3 tasks."""

import pandas as pd
import pytest

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
