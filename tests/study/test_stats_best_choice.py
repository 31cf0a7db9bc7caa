"""The best of a metric is chosen on the folds trials share, and a trial that lacks folds is
marked in every table: a mean over a trial's own folds flatters one that lacks a hard fold.

Tables are written out here; the expected numbers from the formulas (Nadeau & Bengio 2003).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy.stats import t as t_dist

from study.report.document import best_trial, build_tables
from study.report.render import (
    comparison_report_table,
    markdown_table,
    ranking_report_table,
    statistics_report_table,
)
from study.report.summary import Results
from study.stats import (
    DECISION,
    best_choice_sentence,
    choose_best,
    compare_to_best,
    fold_marks,
    summary_sentence,
    verdict,
)
from study.stats.cli import main, print_stats

# `a` lacks fold E, the hard one, and has the highest mean over its own folds (0.8025);
# `b` beats it by 0.03 to 0.036 on each of the four folds they share, but fold E (0.60)
# pulls its mean down to 0.7884; `c` is `b` less 0.002 on every fold.
A = {"A": 0.80, "B": 0.82, "C": 0.78, "D": 0.81}
B = {"A": 0.83, "B": 0.852, "C": 0.814, "D": 0.846, "E": 0.60}
C = {fold: value - 0.002 for fold, value in B.items()}
# b - a on A..D: 0.030, 0.032, 0.034, 0.036: mean 0.033, deviations -0.003, -0.001, 0.001,
# 0.003, var (ddof=1) 2e-5 / 3; k = 5 (folds A..E), so scale = sqrt(2e-5 / 3 * (1/4 + 1/4)).
B_MINUS_A = 0.033
B_MINUS_A_HALF = t_dist.ppf(0.975, 3) * math.sqrt(2e-5 / 3 * (1 / 4 + 1 / 4))  # 0.00581


def _table(**trials: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"trial_id": trial, "fold": fold, "acc": value}
            for trial, values in trials.items()
            for fold, value in values.items()
        ]
    )


def _row(stats: pd.DataFrame, trial: str, metric: str = "acc") -> pd.Series:
    rows = stats[(stats.trial_id == trial) & (stats.metric == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def _circle() -> pd.DataFrame:
    """Six folds, each trial lacking two: b is 0.05 above a on the folds they share (3, 4),
    c 0.05 above b on theirs (5, 6), a 0.06 above c on theirs (1, 2). The means: a 0.83, b
    and c 0.825."""
    return _table(
        a={"1": 0.86, "2": 0.86, "3": 0.80, "4": 0.80},
        b={"3": 0.85, "4": 0.85, "5": 0.80, "6": 0.80},
        c={"5": 0.85, "6": 0.85, "1": 0.80, "2": 0.80},
    )


def test_a_trial_established_better_on_shared_folds_becomes_the_best():
    table = _table(a=A, b=B, c=C)
    assert np.mean(list(A.values())) > np.mean(list(B.values()))  # a: the highest mean
    stats = compare_to_best(table)
    assert list(stats.trial_id) == ["b", "a", "c"]  # the best first, then mean descending
    assert list(stats.verdict) == ["best", "worse", "equivalent"]
    # No configuration is established better than the best: no `better` verdict at all.
    assert (stats.p_better < DECISION).all()
    a = _row(stats, "a")
    assert a.n_folds == 4 and a.missing_folds == 1
    assert a.diff_vs_best == pytest.approx(-B_MINUS_A)
    assert (a.ci_low, a.ci_high) == pytest.approx(
        (-B_MINUS_A - B_MINUS_A_HALF, -B_MINUS_A + B_MINUS_A_HALF), rel=1e-9
    )
    assert _row(stats, "b").missing_folds == 0 and _row(stats, "c").missing_folds == 0
    assert list(fold_marks(stats)) == ["", "4/5 folds", ""]
    # The sentences: a is worse, not among those that cannot be told apart; and why the best
    # is not the highest mean.
    assert summary_sentence(stats, "acc").startswith(
        "1 of 2 other configurations cannot be told apart from the best (acc, 4.5 folds): "
        "1 equivalent within ±0.01, 0 undecided, 1 worse;"
    )
    assert best_choice_sentence(stats, "acc", "accuracy") == (
        "The best accuracy is b (0.788), not the highest mean, a (0.803 over 4/5 folds): on "
        "the 4 folds they share it is -0.033 against the best (95% interval [-0.039, -0.027], "
        "worse)."
    )


def test_choose_best_compares_the_highest_mean_with_the_others_on_shared_folds():
    wide = _table(a=A, b=B, c=C).pivot(index="trial_id", columns="fold", values="acc")
    best, tests = choose_best(wide, ratio=1 / 4)
    assert best == "b" and set(tests) == {"a", "b", "c"}
    # Both b and c beat a on every shared fold; b, by the larger difference, is chosen.
    assert tests["a"].mean_diff == pytest.approx(-B_MINUS_A)
    assert tests["c"].mean_diff == pytest.approx(-0.002)
    # Without a hard fold to lack, the highest mean stays the best.
    complete = _table(a={**A, "E": 0.79}, b=B)
    assert compare_to_best(complete).trial_id.iloc[0] == "a"


def test_better_remains_where_being_better_goes_round_in_a_circle():
    stats = compare_to_best(_circle())
    # a (the highest mean) -> b (better than a) -> c (better than b); a is better than c,
    # but was chosen before: the search ends, with the circle in plain sight.
    assert list(stats.trial_id) == ["c", "a", "b"]
    assert list(stats.verdict) == ["best", "better", "worse"]
    a = _row(stats, "a")
    assert (a.n_folds, a.diff_vs_best, a.p_better) == (2, pytest.approx(0.06), 1.0)
    # Every trial, the best included, lacks two of the six folds, and says so.
    assert list(stats.missing_folds) == [2, 2, 2]
    assert list(fold_marks(stats)) == ["4/6 folds"] * 3
    sentence = summary_sentence(stats, "acc")
    assert sentence.startswith(
        "0 of 2 other configurations cannot be told apart from the best (acc, 2 folds): "
        "1 better on the folds shared with the best, 0 equivalent within ±0.01, "
        "0 undecided, 1 worse;"
    )


def test_verdict_better_mirrors_worse():
    assert verdict(0.01, 0.02, 0.97) == "better"
    assert verdict(0.0, 0.05, 0.95) == "better"
    assert verdict(0.0, 0.06, 0.94) == "undecided"
    assert verdict(0.0, 0.5, 0.5) == "undecided"
    assert verdict(math.nan, math.nan, math.nan) == "undecided"
    assert verdict(0.01, 0.02) == "undecided"  # without p_better, never `better`
    assert verdict(0.0, 0.1, 0.9, threshold=0.9) == "better"


# --- every table marks a trial that lacks folds -------------------------------------------


def _score_stats(table: pd.DataFrame) -> pd.DataFrame:
    return compare_to_best(table.rename(columns={"acc": "score"}))


def test_the_cli_table_marks_missing_folds_and_explains_the_best(tmp_path, capsys):
    path = tmp_path / "folds.csv"
    _table(a=A, b=B, c=C).to_csv(path, index=False)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 equivalent within ±0.01, 0 undecided, 1 worse" in out
    assert "The best acc is b (0.788), not the highest mean, a (0.803 over 4/5 folds)" in out
    header = next(line for line in out.splitlines() if "verdict" in line)
    assert header.split()[-1] == "incomplete"
    a_line = next(line for line in out.splitlines() if line.split()[:1] == ["a"])
    assert a_line.split()[-3:] == ["worse", "4/5", "folds"]
    # Without a trial that lacks folds, no such column.
    console = Console(file=io.StringIO(), width=160)
    print_stats(compare_to_best(_table(a={**A, "E": 0.7}, b=B)), console=console)
    assert "incomplete" not in console.file.getvalue()


def test_the_report_tables_mark_missing_folds():
    stats = _score_stats(_circle())
    labels = pd.Series({"a": "config a", "b": "config b", "c": "config c"})
    differences = statistics_report_table(stats, labels, "patch", "differences")
    assert list(differences.cells.verdict) == ["better", "worse"]
    # The best is not a row of this table: its lacking folds are marked on each row.
    assert list(differences.cells.incomplete) == ["4/6 folds; best 4/6 folds"] * 2
    summary = pd.DataFrame({"score": [0.825, 0.83, 0.825]}, index=["c", "a", "b"])
    ranking = ranking_report_table(summary, stats, labels, "ranking")
    assert list(ranking.cells.incomplete) == ["4/6 folds"] * 3
    assert "| config a | 0.830 ± 0.035 | +0.060 | [+0.060, +0.060] | better | 4/6 folds |" in (
        markdown_table(ranking)
    )

    stats = _score_stats(_table(a=A, b=B, c=C))
    differences = statistics_report_table(stats, labels, "patch", "differences")
    assert list(differences.cells.incomplete) == ["4/5 folds", ""]


def test_the_comparison_marks_missing_folds_only_where_there_are_some():
    stats = _score_stats(_table(a=A, b=B, c=C))
    labels = pd.Series({"a": "config a", "b": "config b", "c": "config c"})
    metrics = ["pixel_acc", "pattern_acc", "intensity_acc", "dice", "pattern_mca", "score"]
    means = {"a": 0.8025, "b": 0.7884, "c": 0.7864}
    summary = pd.DataFrame(
        {**{m: means for m in metrics}, **{f"{m}_std": 0.01 for m in metrics}, "epoch": 3.0,
         "epoch_std": 0.0}
    )  # fmt: skip
    table = comparison_report_table(summary, labels, "comparison", "patch", stats)
    assert list(table.cells.loc["verdict"]) == ["worse", "best", "equivalent"]
    assert list(table.cells.loc["incomplete"]) == ["4/5 folds", "", ""]
    complete = _score_stats(_table(a={**A, "E": 0.7}, b=B, c=C))
    table = comparison_report_table(summary, labels, "comparison", "patch", complete)
    assert "incomplete" not in table.cells.index


def _results(values: dict[str, dict[str, float]]) -> Results:
    """A study in memory: one validation epoch per (trial, fold), every accuracy at the
    given value (so the score is that value too)."""
    metrics = ("pixel_acc", "pattern_acc", "intensity_acc", "dice", "pattern_mca")
    epochs = pd.DataFrame(
        [
            {"trial_id": trial, "fold": fold, "epoch": 1, "split": "val"}
            | dict.fromkeys(metrics, value)
            for trial, folds in values.items()
            for fold, value in folds.items()
        ]
    )
    trials = pd.DataFrame(
        {
            "trial_id": list(values),
            "seg_loss": ["dice", "bce", "focal"][: len(values)],
            "status": "completed",
            "epochs_run": 1,
            "epochs": 1,
            "error": None,
        }
    )
    return Results(None, "shared", epochs, trials, ("seg_loss",), ("pixel_acc",), num_folds=5)


def test_the_report_chooses_and_explains_the_best_on_shared_folds():
    built = build_tables(_results({"a": A, "b": B, "c": C}), "patch", "final", False)
    assert list(built.summary.index) == ["a", "b", "c"]  # by mean: a first
    assert best_trial(built) == "b"
    choice = next(s for s in built.sentences if s.startswith("The best score is"))
    assert choice.startswith("The best score is seg_loss=bce (0.788), not the highest mean, ")
    assert "seg_loss=dice (0.80" in choice and "over 4/5 folds): on the 4 folds" in choice
    comparison = markdown_table(built.tables[0])
    assert "| incomplete | 4/5 folds |  |  |" in comparison
    assert "| verdict | worse | best | equivalent |" in comparison
