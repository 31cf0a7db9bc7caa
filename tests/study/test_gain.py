"""Δm against single-task baselines, paired by fold, checked by hand."""

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from study.stats.gain import GAIN_COLUMNS, delta_m, relative_differences

FOLDS = list("ABCDE")
METRICS = {"seg": "pixel_acc", "pattern": "pattern_acc", "intensity": "intensity_acc"}
BASELINES = {"seg": "only-seg", "pattern": "only-pattern", "intensity": "only-intensity"}


def _per_fold() -> pd.DataFrame:
    nan = math.nan
    rows = {
        # Each baseline has its own task's metric only (the others are null).
        "only-seg": ([0.8] * 5, [nan] * 5, [nan] * 5),
        "only-pattern": ([nan] * 5, [0.5] * 5, [nan] * 5),
        "only-intensity": ([nan] * 5, [nan] * 5, [0.9] * 5),
        # Relative differences per fold: seg .05 .10 0 .05 .05; pattern .1 0 .2 -.1 0;
        # intensity 0 .1 0 -.1 0. Δm per fold: .05 .0667 .0667 -.05 .0167, mean 0.03.
        "mixed": ([0.84, 0.88, 0.80, 0.84, 0.84], [0.55, 0.5, 0.6, 0.45, 0.5],
                  [0.9, 0.99, 0.9, 0.81, 0.9]),
        # 10% better on every task and fold: Δm 0.1 on every fold.
        "helps": ([0.88] * 5, [0.55] * 5, [0.99] * 5),
        # The pattern 20% worse, the rest equal: Δm -0.0667 on every fold.
        "hurts": ([0.8] * 5, [0.4] * 5, [0.9] * 5),
    }  # fmt: skip
    return pd.DataFrame(
        [
            {
                "trial_id": trial,
                "fold": fold,
                "pixel_acc": s[j],
                "pattern_acc": p[j],
                "intensity_acc": i[j],
            }
            for trial, (s, p, i) in rows.items()
            for j, fold in enumerate(FOLDS)
        ]  # fmt: skip
    )


def test_relative_differences_per_fold_by_hand():
    relative = relative_differences(_per_fold(), BASELINES, METRICS)
    mixed = relative[relative.trial_id == "mixed"]
    assert list(mixed.fold) == FOLDS
    assert mixed.seg.tolist() == pytest.approx([0.05, 0.10, 0.0, 0.05, 0.05])
    assert mixed.pattern.tolist() == pytest.approx([0.1, 0.0, 0.2, -0.1, 0.0])
    assert mixed.intensity.tolist() == pytest.approx([0.0, 0.1, 0.0, -0.1, 0.0])
    assert mixed.delta_m.tolist() == pytest.approx([0.05, 0.2 / 3, 0.2 / 3, -0.05, 0.05 / 3])
    assert set(relative.trial_id) == {"mixed", "helps", "hurts"}  # baselines are not rows


def test_delta_m_value_interval_and_verdict_by_hand():
    gain = delta_m(_per_fold(), BASELINES, METRICS)
    assert tuple(gain.columns) == GAIN_COLUMNS
    rows = gain.set_index(["trial_id", "term"])
    mixed = rows.loc[("mixed", "delta_m")]
    # Mean 0.03; sample variance of the five per-fold values 0.0096667 / 4; the corrected
    # scale sqrt(var * (1/5 + 1/4)) (k = 5: n_test/n_train = 1/4); t(4) at 0.975.
    scale = math.sqrt(0.00966667 / 4 * (1 / 5 + 1 / 4))
    half = scipy_stats.t.ppf(0.975, 4) * scale
    assert mixed["mean"] == pytest.approx(0.03)
    assert (mixed.ci_low, mixed.ci_high) == pytest.approx((0.03 - half, 0.03 + half), rel=1e-5)
    assert mixed.n_folds == 5 and mixed.verdict == "undecided"
    assert rows.loc[("mixed", "seg"), "mean"] == pytest.approx(0.05)
    assert rows.loc[("mixed", "seg"), "metric"] == "pixel_acc"
    # Constant per-fold values: a point mass, which the verdict reads at once.
    helps = rows.loc[("helps", "delta_m")]
    assert helps["mean"] == pytest.approx(0.1) and helps.verdict == "helps"
    assert (helps.ci_low, helps.ci_high) == pytest.approx((0.1, 0.1))
    hurts = rows.loc["hurts"]
    assert hurts.loc["delta_m", "mean"] == pytest.approx(-0.2 / 3)
    assert hurts.loc["delta_m", "verdict"] == "hurts"
    # Which task pays: the pattern; the other two are equivalent to their baselines.
    assert hurts.loc["pattern", "verdict"] == "hurts"
    assert hurts.loc["seg", "verdict"] == hurts.loc["intensity", "verdict"] == "equivalent"


def test_a_baseline_without_rows_or_a_metric_without_a_direction_is_refused():
    per_fold = _per_fold()
    with pytest.raises(ValueError, match="no rows in the per-fold table"):
        delta_m(per_fold[per_fold.trial_id != "only-seg"], BASELINES, METRICS)
    with pytest.raises(ValueError, match="no direction declared for \\['seconds'\\]"):
        delta_m(per_fold, BASELINES, {**METRICS, "seg": "seconds"})


def test_the_original_conclusions_established_or_not_by_the_folds():
    from study.report.summary import original_conclusions_sentence
    from study.stats import compare_to_best

    noise = [0.02, -0.02, 0.02, -0.02, 0.0]
    values = {  # trial: (seg_loss, pattern_acc, intensity_acc); the pattern without noise
        "d1": ("dice", 0.80, 0.90),
        "d2": ("dice", 0.78, 0.85),
        "b1": ("bce", 0.70, 0.91),
        "b2": ("bce", 0.69, 0.80),
    }
    per_fold = pd.DataFrame(
        [
            {
                "trial_id": t,
                "fold": f,
                "pattern_acc": p,
                "intensity_acc": i + (noise[j] * (j % 3) if t == "d1" else 0.0),
            }
            for t, (_, p, i) in values.items()
            for j, f in enumerate(FOLDS)
        ]  # fmt: skip
    )
    stats = compare_to_best(per_fold)
    trials = pd.DataFrame({"trial_id": list(values), "seg_loss": [v[0] for v in values.values()]})
    labels = pd.Series({t: f"{v[0]}-{t}" for t, v in values.items()})
    sentence = original_conclusions_sentence(stats, trials, labels)
    # The pattern: Dice's best (d1) and both BCE configurations 0.1 below on every fold.
    assert (
        '"Dice best for the pattern": established (the best pattern_acc is dice-d1\'s' in sentence
    )
    # The intensity: BCE's b1 is best, but d1 swings around it: not established.
    assert '"BCE best for the intensity": not established (the best intensity_acc is bce-b1' in (
        sentence
    )
    assert "1 of 2 Dice configurations are established worse" in sentence
    no_bce = trials.assign(seg_loss="dice")
    assert original_conclusions_sentence(stats, no_bce, labels) is None


def test_a_baseline_is_never_the_best_trial_and_its_best_epoch_is_its_own_tasks():
    from study.results.export import choose_trial
    from study.stats.selection import select_epochs

    trials = pd.DataFrame(
        {
            "trial_id": ["only-pattern", "mt"],
            "status": ["completed"] * 2,
            "cv_score": [math.nan, 0.5],
        }  # fmt: skip
    )
    assert choose_trial(trials, "best").trial_id == "mt"
    nan = math.nan
    epochs = pd.DataFrame(
        [
            {
                "trial_id": "only-pattern",
                "fold": "A",
                "epoch": e,
                "split": "val",
                "pixel_acc": nan,
                "pattern_acc": p,
                "intensity_acc": nan,
            }
            for e, p in ((1, 0.3), (2, 0.7), (3, 0.5))
        ]  # fmt: skip
    )
    best = select_epochs(epochs, "patch", "best")
    assert best.epoch.tolist() == [2]  # by its pattern accuracy, not the first epoch
