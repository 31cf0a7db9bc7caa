"""Fold-paired statistics on hand-made tables whose numbers are worked out in the tests.

The expected values are written out from the formulas (Nadeau & Bengio 2003; Corani &
Benavoli 2015), not taken from the code under test: the differences, their mean, the sample
variance (ddof=1), the corrected scale sqrt(var * (1/n + 1/(k-1))), t, the interval and the
p-value as literals. No Ray, no torch in this module.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist

from study.stats import (
    STATS_COLUMNS,
    compare_to_best,
    detectable_difference,
    paired_test,
    summary_sentence,
    verdict,
    write_stats,
)
from study.stats.cli import main, read_per_fold
from study.stats.selection import study_per_fold

FOLDS = "ABCDE"
# A 5-fold example. `best` has the highest mean (0.81); `worse` is 0.06 below it on every
# fold give or take 0.02; `close` is 0.003 below it, steadily; `noisy` is 0.01 below it on
# average but swings by 0.05 either way.
BEST = [0.80, 0.82, 0.78, 0.84, 0.81]
WORSE = [0.75, 0.75, 0.74, 0.78, 0.73]
CLOSE = [0.798, 0.816, 0.779, 0.837, 0.805]
NOISY = [0.83, 0.76, 0.80, 0.79, 0.82]

# worse - best, fold by fold: -0.05, -0.07, -0.04, -0.06, -0.08
#   mean = -0.30 / 5 = -0.06
#   deviations from the mean: 0.01, -0.01, 0.02, 0, -0.02; squares sum to 0.0010
#   var (ddof=1) = 0.0010 / 4 = 0.00025        (ddof=0 would give 0.0002)
#   scale = sqrt(0.00025 * (1/5 + 1/4)) = sqrt(0.0001125) = 0.010606601717798213
#           (uncorrected: sqrt(0.00025 / 5) = 0.0070710678)
#   t = -0.06 / 0.010606601717798213 = -sqrt(32) = -5.656854249492381, df = 4
#   t_{0.975, 4} = 2.7764451051977987; half-width = 2.7764451051977987 * 0.0106066017...
#                = 0.029448647422163413
#   interval = [-0.08944864742216341, -0.030551352577836585]
#   p = 2 * P(T_4 > 5.656854) = 0.00481267833004422
WORSE_DIFFS = [-0.05, -0.07, -0.04, -0.06, -0.08]
WORSE_MEAN = -0.06
WORSE_VAR = 0.0010 / 4
WORSE_SCALE = 0.010606601717798213
T_975_DF4 = 2.7764451051977987
WORSE_T = -5.656854249492381
WORSE_CI = (-0.08944864742216341, -0.030551352577836585)
WORSE_P = 0.00481267833004422
# Posterior Student-t(4, loc=-0.06, scale=0.0106066): P(delta < -0.01) = cdf at
# (-0.01 + 0.06) / 0.0106066 = 4.714045; P(delta > 0.01) = sf at (0.01 + 0.06) / 0.0106066.
WORSE_P_WORSE = 0.9953939681063011
WORSE_P_BETTER = 0.0013655924834115303

# close - best: -0.002, -0.004, -0.001, -0.003, -0.005
#   mean = -0.003; deviations 0.001, -0.001, 0.002, 0, -0.002: squares sum to 1e-5
#   var = 1e-5 / 4 = 2.5e-6; scale = sqrt(2.5e-6 * 0.45) = 0.0010606601717798212
#   t = -2.8284271247461903, p = 0.04742065558431959: "significant", and yet the whole
#   posterior lies within the rope of +-0.01: equivalent for practical purposes.
CLOSE_SCALE = 0.0010606601717798212
CLOSE_T = -2.8284271247461903
CLOSE_P = 0.04742065558431959
CLOSE_CI = (-0.003 - T_975_DF4 * CLOSE_SCALE, -0.003 + T_975_DF4 * CLOSE_SCALE)


def _table(**trials: list[float]) -> pd.DataFrame:
    """A per-fold table: one row per trial and fold (A, B, ... in order), one metric `acc`."""
    rows = [
        {"trial_id": trial, "fold": fold, "acc": value}
        for trial, values in trials.items()
        for fold, value in zip(FOLDS, values, strict=False)
    ]
    return pd.DataFrame(rows)


def _example() -> pd.DataFrame:
    return _table(best=BEST, worse=WORSE, close=CLOSE, noisy=NOISY)


def _row(stats: pd.DataFrame, trial: str, metric: str = "acc") -> pd.Series:
    rows = stats[(stats.trial_id == trial) & (stats.metric == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


# --- paired_test --------------------------------------------------------------------------


def test_the_hand_checked_five_fold_example():
    diffs = np.array(WORSE) - np.array(BEST)
    np.testing.assert_allclose(diffs, WORSE_DIFFS, atol=1e-15)
    # The literals above, from the formula written out once more.
    mean = sum(WORSE_DIFFS) / 5
    var = sum((d - mean) ** 2 for d in WORSE_DIFFS) / (5 - 1)
    scale = math.sqrt(var * (1 / 5 + 1 / (5 - 1)))
    assert mean == pytest.approx(WORSE_MEAN) and var == pytest.approx(WORSE_VAR)
    assert scale == pytest.approx(WORSE_SCALE, rel=1e-12)
    assert mean / scale == pytest.approx(WORSE_T, rel=1e-12)
    assert t_dist.ppf(0.975, 4) == pytest.approx(T_975_DF4, rel=1e-12)

    test = paired_test(diffs, ratio=1 / 4)
    assert test.n == 5 and test.df == 4
    assert test.mean_diff == pytest.approx(WORSE_MEAN, rel=1e-12)
    assert test.scale == pytest.approx(WORSE_SCALE, rel=1e-9)
    assert test.t == pytest.approx(WORSE_T, rel=1e-9)
    assert (test.ci_low, test.ci_high) == pytest.approx(WORSE_CI, rel=1e-9)
    assert test.p_value == pytest.approx(WORSE_P, rel=1e-6)
    # The posterior: Student-t(4, loc=-0.06, scale=0.0106066), the rope +-0.01.
    assert test.p_worse == pytest.approx(t_dist.cdf((-0.01 - WORSE_MEAN) / WORSE_SCALE, 4))
    assert test.p_worse == pytest.approx(WORSE_P_WORSE, rel=1e-9)
    assert test.p_better == pytest.approx(WORSE_P_BETTER, rel=1e-6)
    assert test.p_rope == pytest.approx(1 - WORSE_P_WORSE - WORSE_P_BETTER, rel=1e-6)
    assert verdict(test.p_worse, test.p_rope) == "worse"


def test_a_steady_small_difference_is_significant_yet_equivalent():
    test = paired_test(np.array(CLOSE) - np.array(BEST), ratio=1 / 4)
    assert test.scale == pytest.approx(CLOSE_SCALE, rel=1e-9)
    assert test.t == pytest.approx(CLOSE_T, rel=1e-9)
    assert test.p_value == pytest.approx(CLOSE_P, rel=1e-6)
    assert (test.ci_low, test.ci_high) == pytest.approx(CLOSE_CI, rel=1e-9)
    assert test.p_rope > 0.99
    assert verdict(test.p_worse, test.p_rope) == "equivalent"


def test_the_sign_follows_trial_minus_best():
    flipped = paired_test(-np.array(WORSE_DIFFS), ratio=1 / 4)
    assert flipped.t == pytest.approx(-WORSE_T, rel=1e-9)
    assert flipped.p_better == pytest.approx(WORSE_P_WORSE, rel=1e-9)
    assert flipped.p_worse == pytest.approx(WORSE_P_BETTER, rel=1e-6)


def test_repeated_cross_validation_pairs_by_repeat_and_fold():
    # 2 repeats x 3 folds: n = 6, r = 1/(3-1) = 1/2, df = 5.
    best = {(1, "A"): 0.70, (1, "B"): 0.72, (1, "C"): 0.74}
    best |= {(2, "A"): 0.71, (2, "B"): 0.73, (2, "C"): 0.75}
    trial = {(1, "A"): 0.68, (1, "B"): 0.68, (1, "C"): 0.71}
    trial |= {(2, "A"): 0.70, (2, "B"): 0.68, (2, "C"): 0.72}
    # trial - best: -0.02, -0.04, -0.03, -0.01, -0.05, -0.03
    #   mean = -0.18 / 6 = -0.03; deviations 0.01, -0.01, 0, 0.02, -0.02, 0: squares 0.0010
    #   var = 0.0010 / 5 = 0.0002; scale = sqrt(0.0002 * (1/6 + 1/2)) = 0.011547005383792516
    #   t = -0.03 / 0.011547005383792516 = -1.5 * sqrt(3) = -2.5980762113533156
    #   t_{0.975, 5} = 2.5705818366147395; interval -0.03 -+ 0.0296825222955...
    scale = 0.011547005383792516
    assert scale == pytest.approx(math.sqrt(0.0010 / 5 * (1 / 6 + 1 / 2)), rel=1e-12)
    rows = [
        {"trial_id": name, "repeat": repeat, "fold": fold, "acc": values[repeat, fold]}
        for name, values in (("best", best), ("trial", trial))
        for repeat, fold in values
    ]
    # The trial's rows in another order: pairs are matched by key, not by position.
    table = pd.DataFrame(rows[:6] + rows[6:][::-1])
    stats = compare_to_best(table)
    row = _row(stats, "trial")
    assert row.n_folds == 6
    assert row.diff_vs_best == pytest.approx(-0.03, rel=1e-9)
    assert row.ci_low == pytest.approx(-0.03 - 2.5705818366147395 * scale, rel=1e-7)
    assert row.ci_high == pytest.approx(-0.03 + 2.5705818366147395 * scale, rel=1e-7)
    assert row.p_value == pytest.approx(0.04836185235458748, rel=1e-6)
    assert row.p_worse == pytest.approx(0.928094595644198, rel=1e-6)
    assert row.p_better == pytest.approx(0.00898144230497198, rel=1e-6)
    assert row.verdict == "undecided"
    test = paired_test(np.array([-0.02, -0.04, -0.03, -0.01, -0.05, -0.03]), ratio=1 / 2)
    assert test.df == 5 and test.t == pytest.approx(-2.5980762113533156, rel=1e-9)


# --- degenerate cases ---------------------------------------------------------------------


def test_identical_trials_are_a_point_mass_at_zero():
    test = paired_test([0.0] * 5, ratio=1 / 4)
    assert (test.n, test.mean_diff, test.scale, test.t) == (5, 0.0, 0.0, 0.0)
    assert (test.p_value, test.ci_low, test.ci_high) == (1.0, 0.0, 0.0)
    assert (test.p_worse, test.p_rope, test.p_better) == (0.0, 1.0, 0.0)
    stats = compare_to_best(_table(best=BEST, twin=list(BEST)))
    twin = _row(stats, "twin")
    assert not twin.is_best and twin.verdict == "equivalent"
    assert (twin.diff_vs_best, twin.ci_low, twin.ci_high, twin.p_value) == (0, 0, 0, 1)


def test_fewer_than_two_shared_folds_give_nan_statistics():
    single = paired_test([-0.02], ratio=1 / 4)
    assert single.n == 1 and single.mean_diff == -0.02
    statistics = ("scale", "t", "p_value", "ci_low", "ci_high", "p_worse", "p_rope", "p_better")
    assert all(math.isnan(getattr(single, name)) for name in statistics)
    none = paired_test([], ratio=1 / 4)
    assert none.n == 0 and math.isnan(none.mean_diff)
    assert verdict(single.p_worse, single.p_rope) == "undecided"

    # In a table: `lonely` shares fold A only with the best.
    table = pd.concat([_table(best=BEST), _table(lonely=[0.70])], ignore_index=True)
    row = _row(compare_to_best(table), "lonely")
    assert row.n_folds == 1 and row.diff_vs_best == pytest.approx(0.70 - 0.80)
    assert math.isnan(row["std"]) and math.isnan(row.p_value) and math.isnan(row.half_width)
    assert row.verdict == "undecided"


@pytest.mark.parametrize(
    ("step", "probabilities"),
    [(-0.05, (1.0, 0.0, 0.0)), (-0.005, (0.0, 1.0, 0.0)), (0.05, (0.0, 0.0, 1.0))],
)
def test_a_constant_difference_is_the_limit_of_the_tests(step, probabilities):
    # Every fold differs by `step`: the values as a table holds them, the differences as
    # floating point makes them (for -0.05 they are not bit-identical: the tolerance matters).
    values = [round(v + step, 4) for v in BEST]
    diffs = np.array(values) - np.array(BEST)
    assert np.ptp(diffs) > 0 or step != -0.05
    test = paired_test(diffs, ratio=1 / 4)
    assert test.mean_diff == pytest.approx(step) and test.scale == 0.0
    assert test.t == math.copysign(math.inf, step) and test.p_value == 0.0
    assert (test.ci_low, test.ci_high) == pytest.approx((step, step))
    assert (test.p_worse, test.p_rope, test.p_better) == probabilities


def test_bad_arguments_of_paired_test():
    with pytest.raises(ValueError, match="ratio"):
        paired_test([0.1, 0.2], ratio=-1)
    with pytest.raises(ValueError, match="rope"):
        paired_test([0.1, 0.2], ratio=1, rope=-0.1)


def test_verdicts():
    assert verdict(0.95, 0.0) == "worse"
    assert verdict(0.02, 0.97) == "equivalent"
    assert verdict(0.5, 0.5) == "undecided"
    assert verdict(math.nan, math.nan) == "undecided"


# --- compare_to_best ----------------------------------------------------------------------


def test_compare_to_best_rows_columns_and_the_best():
    table = _example().assign(other=lambda t: 1 - t.acc)
    stats = compare_to_best(table)
    assert tuple(stats.columns[: len(STATS_COLUMNS)]) == STATS_COLUMNS
    assert list(stats.columns[len(STATS_COLUMNS) :]) == ["verdict", "half_width"]
    assert list(stats.metric.unique()) == ["acc", "other"]
    assert stats.groupby("metric").is_best.sum().to_dict() == {"acc": 1, "other": 1}
    acc = stats[stats.metric == "acc"]
    assert list(acc.trial_id) == ["best", "close", "noisy", "worse"]  # mean descending
    assert list(acc.verdict) == ["best", "equivalent", "undecided", "worse"]
    best = _row(stats, "best")
    assert best.is_best and best.n_folds == 5
    assert (best.diff_vs_best, best.ci_low, best.ci_high, best.p_value) == (0, 0, 0, 1)
    assert (best.p_worse, best.p_rope, best.p_better) == (0, 1, 0)
    assert best["mean"] == pytest.approx(0.81) and best["std"] == pytest.approx(
        np.std(BEST, ddof=1)
    )
    worse = _row(stats, "worse")
    assert worse.diff_vs_best == pytest.approx(WORSE_MEAN)
    assert (worse.ci_low, worse.ci_high) == pytest.approx(WORSE_CI, rel=1e-9)
    assert worse.half_width == pytest.approx(T_975_DF4 * WORSE_SCALE, rel=1e-9)
    # For `other` (1 - acc) the order turns over: `worse` is the best.
    assert _row(stats, "worse", "other").is_best
    assert stats.n_folds.dtype == int and stats.is_best.dtype == bool
    assert all(stats[c].dtype == float for c in STATS_COLUMNS[3:12])


def test_the_metrics_argument_chooses_and_orders():
    table = _example().assign(other=lambda t: 1 - t.acc)
    stats = compare_to_best(table, ["other", "acc"])
    assert list(stats.metric.unique()) == ["other", "acc"]
    with pytest.raises(ValueError, match="unknown metric 'nope'; available: acc, other"):
        compare_to_best(table, ["nope"])


def test_ties_go_to_the_first_trial_and_nan_folds_are_dropped():
    table = _table(first=[0.7] * 5, second=[0.7] * 5, gap=[0.6, math.nan, 0.6, 0.6, 0.6])
    stats = compare_to_best(table)
    assert _row(stats, "first").is_best and not _row(stats, "second").is_best
    gap = _row(stats, "gap")
    assert gap.n_folds == 4 and gap["mean"] == pytest.approx(0.6)


def test_a_metric_that_is_nan_everywhere_is_skipped():
    table = _example().assign(empty=math.nan)
    assert list(compare_to_best(table).metric.unique()) == ["acc"]
    # A trial without any finite value gets a row of NaNs.
    table = pd.concat([_example(), _table(blank=[math.nan] * 5)], ignore_index=True)
    blank = _row(compare_to_best(table), "blank")
    assert blank.n_folds == 0 and math.isnan(blank["mean"]) and blank.verdict == "undecided"


def test_compare_to_best_checks_its_table():
    table = _example()
    duplicated = pd.concat([table, table.iloc[[7]]])  # the index repeats too
    with pytest.raises(ValueError, match="trial 'worse' has more than one row for fold 'C'"):
        compare_to_best(duplicated)
    with pytest.raises(ValueError, match="no 'fold' column"):
        compare_to_best(table.drop(columns="fold"))
    with pytest.raises(ValueError, match="column 'trial_id' is not|unknown metric 'trial_id'"):
        compare_to_best(table, ["trial_id"])


def test_the_correction_follows_the_folds_per_repeat():
    # k = 10 instead of 5: r = 1/9, a narrower interval.
    row = _row(compare_to_best(_example(), folds_per_repeat=10), "worse")
    scale = math.sqrt(WORSE_VAR * (1 / 5 + 1 / 9))
    assert row.half_width == pytest.approx(T_975_DF4 * scale, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 folds"):
        compare_to_best(_example(), folds_per_repeat=1)


def test_detectable_difference_and_summary_sentence():
    stats = compare_to_best(_example())
    half_widths = sorted(_row(stats, t).half_width for t in ("worse", "close", "noisy"))
    assert detectable_difference(stats, "acc") == pytest.approx(half_widths[1])
    assert half_widths[1] == pytest.approx(T_975_DF4 * WORSE_SCALE, rel=1e-9)  # 0.0294
    assert summary_sentence(stats, "acc", "accuracy") == (
        "2 of 3 other configurations cannot be told apart from the best (accuracy, 5 folds): "
        "1 equivalent within ±0.01, 1 undecided, 1 worse; the smallest difference these "
        "folds could detect is about 0.029."
    )
    alone = compare_to_best(_table(best=BEST))
    assert summary_sentence(alone, "acc") == "Only one configuration: nothing to compare."
    assert math.isnan(detectable_difference(alone, "acc"))


# --- study tables -------------------------------------------------------------------------


def _epochs_and_trials() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trial t1 completed, 2 epochs on folds A and B; t2 pruned; t3 completed, 3 epochs.

    Validation values at epoch e of fold f: pixel 0.9, pattern 0.5 + e/10, intensity
    0.7 + (fold B) / 10; train rows are 0 everywhere, to be ignored.
    """
    rows = []
    for trial, epochs in (("t1", 2), ("t2", 1), ("t3", 3)):
        for fold in "AB":
            for epoch in range(1, epochs + 1):
                for split in ("train", "val"):
                    val = split == "val"
                    rows.append(
                        {
                            "trial_id": trial,
                            "fold": fold,
                            "epoch": epoch,
                            "split": split,
                            "pixel_acc": 0.9 if val else 0.0,
                            "pattern_acc": 0.5 + epoch / 10 if val else 0.0,
                            "intensity_acc": 0.7 + (fold == "B") / 10 if val else 0.0,
                            "dice": 0.8 if val else 0.0,
                            "loss": 1.0,
                        }
                    )
    epochs = pd.DataFrame(rows).sample(frac=1, random_state=0)  # any order
    trials = pd.DataFrame(
        {"trial_id": ["t1", "t2", "t3"], "status": ["completed", "pruned", "completed"]}
    )
    return epochs, trials


def test_study_per_fold_takes_the_last_validation_epoch_of_completed_trials():
    per_fold = study_per_fold(*_epochs_and_trials())
    assert list(per_fold.columns) == [
        "trial_id",
        "fold",
        "score",
        "pixel_acc",
        "dice",
        "pattern_acc",
        "intensity_acc",
    ]
    assert list(zip(per_fold.trial_id, per_fold.fold, strict=True)) == [
        ("t1", "A"),
        ("t1", "B"),
        ("t3", "A"),
        ("t3", "B"),
    ]
    # t1 ends at epoch 2 (pattern 0.7), t3 at epoch 3 (pattern 0.8).
    np.testing.assert_allclose(per_fold.pattern_acc, [0.7, 0.7, 0.8, 0.8])
    np.testing.assert_allclose(per_fold.intensity_acc, [0.7, 0.8, 0.7, 0.8])
    # score = (pixel + pattern + intensity) / 3
    expected = [(0.9 + 0.7 + 0.7) / 3, (0.9 + 0.7 + 0.8) / 3, (0.9 + 0.8 + 0.7) / 3, 2.5 / 3]
    np.testing.assert_allclose(per_fold.score, expected)


def test_study_per_fold_score_is_nan_when_a_part_is():
    epochs, trials = _epochs_and_trials()
    epochs.loc[(epochs.trial_id == "t3") & (epochs.fold == "A"), "intensity_acc"] = math.nan
    per_fold = study_per_fold(epochs, trials)
    assert per_fold.score.isna().tolist() == [False, False, True, False]


def test_a_study_folder(tmp_path, capsys):
    epochs, trials = _epochs_and_trials()
    epochs.to_parquet(tmp_path / "epochs.parquet")
    trials.to_parquet(tmp_path / "trials.parquet")
    (tmp_path / "study.json").write_text(json.dumps({"name": "x", "train": {"num_folds": 5}}))
    per_fold, folds, folder = read_per_fold(tmp_path)
    assert (folds, folder, len(per_fold)) == (5, tmp_path, 4)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "score" in out and "pattern_acc" in out
    stats = pd.read_parquet(tmp_path / "stats.parquet")
    assert tuple(stats.columns[1 : 1 + len(STATS_COLUMNS)]) == STATS_COLUMNS
    assert set(stats.study) == {tmp_path.name}
    assert set(stats.trial_id) == {"t1", "t3"}
    assert _row(stats, "t3", "score").is_best
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "stats.csv").drop(columns=["study", "trial_id"]),
        stats.drop(columns=["study", "trial_id"]),
        check_dtype=False,
    )
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_write_stats_writes_both_files(tmp_path):
    paths = write_stats(compare_to_best(_example()), tmp_path)
    assert paths == [tmp_path / "stats.parquet", tmp_path / "stats.csv"]
    assert len(pd.read_csv(paths[1])) == 4


# --- the command line ---------------------------------------------------------------------


def test_the_cli_reproduces_the_hand_checked_numbers(tmp_path, capsys):
    path = tmp_path / "folds.csv"
    _example().assign(note="x").to_csv(path, index=False)  # a text column is not a metric
    out = tmp_path / "stats.csv"
    assert main([str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 equivalent within ±0.01, 1 undecided, 1 worse" in printed
    assert "[-0.0894, -0.0306]" in printed  # the worse trial's interval
    stats = pd.read_csv(out)
    assert tuple(stats.columns) == ("study", *STATS_COLUMNS, "verdict", "half_width")
    worse = _row(stats, "worse")
    assert (worse.ci_low, worse.ci_high) == pytest.approx(WORSE_CI, rel=1e-9)
    assert worse.p_value == pytest.approx(WORSE_P, rel=1e-6)
    assert worse.p_worse == pytest.approx(WORSE_P_WORSE, rel=1e-9)
    assert worse.p_better == pytest.approx(WORSE_P_BETTER, rel=1e-6)
    assert worse.verdict == "worse"
    close = _row(stats, "close")
    assert close.p_value == pytest.approx(CLOSE_P, rel=1e-6) and close.verdict == "equivalent"
    assert not (tmp_path / "stats.parquet").exists()  # a CSV input writes only --out


def test_the_cli_rope_and_parquet_out(tmp_path, capsys):
    path = tmp_path / "folds.csv"
    _example().to_csv(path, index=False)
    out = tmp_path / "stats.parquet"
    assert main([str(path), "--metric", "acc", "--rope", "0.05", "--out", str(out)]) == 0
    stats = pd.read_parquet(out)
    # With a rope of +-0.05, 0.06 worse (interval [-0.089, -0.031]) is no longer certain.
    assert list(stats.verdict) == ["best", "equivalent", "undecided", "undecided"]
    assert "within ±0.05," in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (lambda t: t.drop(columns="trial_id"), (), "no 'trial_id' column"),
        (lambda t: t.drop(columns="fold"), (), "no 'fold' column"),
        (
            lambda t: pd.concat([t, t.iloc[[7]]]),
            (),
            "trial 'worse' has more than one row for fold 'C'",
        ),
        (lambda t: t.assign(note="x"), ("--metric", "note"), "column 'note' is not numeric"),
        (lambda t: t, ("--metric", "nope"), "unknown metric 'nope'; available: acc"),
        (lambda t: t, ("--rope", "-0.5"), "--rope must be"),
        (lambda t: t.iloc[:0], (), "empty"),
        (lambda t: t.assign(acc="x"), (), "no numeric metric column"),
    ],
    ids=[
        "no-trial_id",
        "no-fold",
        "duplicated",
        "non-numeric",
        "unknown",
        "negative-rope",
        "empty",
        "no-metric",
    ],
)
def test_every_bad_input_is_one_line(tmp_path, capsys, change, args, message):
    path = tmp_path / "folds.csv"
    change(_example()).to_csv(path, index=False)
    assert main([str(path), *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_missing_paths_and_usage_errors_are_one_line(tmp_path, capsys):
    for argv in ([str(tmp_path / "nothing.csv")], [str(tmp_path)], []):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    (tmp_path / "folds.csv").write_text("trial_id,fold,acc\na,A,0.5\n")
    assert main([str(tmp_path / "folds.csv")]) == 1  # one fold: no k >= 2
    assert "at least 2 folds" in capsys.readouterr().err


def test_the_module_stays_light():
    """`python -m study.stats` must start fast: no torch, ray, optuna, mtl's training code or
    the report (mtl's torch-free schema is all it reads)."""
    heavy = ("torch", "ray", "optuna", "mtl.trainer", "study.report")
    code = f"import sys, study.stats.cli; print(sorted(set({heavy!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_warm_start_sentence_says_whether_the_search_beat_its_start():
    from study.report.summary import warm_start_sentence

    per_fold = pd.DataFrame(
        [
            {"trial_id": t, "fold": f, "score": base + bump}
            for t, base in (("start", 0.70), ("found", 0.80), ("other", 0.60))
            for f, bump in zip("ABCDE", (0.0, 0.01, -0.01, 0.005, -0.005), strict=True)
        ]
    )
    trials = pd.DataFrame({"trial_id": ["start", "found", "other"], "optuna_trial": [0, 1, 2]})
    labels = pd.Series({"start": "balancer=gradnorm", "found": "balancer=dwa", "other": "x"})
    sentence = warm_start_sentence(compare_to_best(per_fold), trials, labels, 1)
    assert "best found (balancer=dwa, score 0.800)" in sentence
    assert "(balancer=gradnorm, 0.700) is +0.100" in sentence
    assert "the difference is real" in sentence
    assert "did not beat" in warm_start_sentence(compare_to_best(per_fold), trials, labels, 2)
    assert warm_start_sentence(compare_to_best(per_fold), trials, labels, 0) is None
