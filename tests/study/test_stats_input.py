"""What a per-fold table may hold: text and infinities in metric columns, empty labels,
integer columns, repeats numbered within or across repeats. Every table is written here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist

from study.stats import compare_to_best, infer_folds_per_repeat, validate_per_fold
from study.stats.cli import main

FOLDS = "ABCDE"
# Two trials, five folds; `worse` 0.06 below `best` give or take 0.02 (test_stats' example).
BEST = [0.80, 0.82, 0.78, 0.84, 0.81]
WORSE = [0.75, 0.75, 0.74, 0.78, 0.73]


def _table() -> pd.DataFrame:
    rows = [
        {"trial_id": trial, "fold": fold, "pattern_acc": value, "dice": value - 0.1}
        for trial, values in (("best", BEST), ("worse", WORSE))
        for fold, value in zip(FOLDS, values, strict=True)
    ]
    return pd.DataFrame(rows)


def _run(tmp_path, capsys, table: pd.DataFrame, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "folds.csv"
    table.to_csv(path, index=False)
    code = main([str(path), *args, "--out", str(tmp_path / "stats.csv")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- a text cell is an error, not a missing metric ----------------------------------------


@pytest.mark.parametrize("args", [(), ("--metric", "pattern_acc")], ids=["all", "named"])
def test_a_text_cell_in_a_metric_column_is_an_error(tmp_path, capsys, args):
    table = _table().astype({"pattern_acc": object})
    table.loc[6, "pattern_acc"] = "bad"  # worse, fold B: line 8 of the CSV (header, 0..5)
    code, out, err = _run(tmp_path, capsys, table, *args)
    assert code == 1 and not (tmp_path / "stats.csv").exists()
    message = _one_line_error(err)
    assert "column 'pattern_acc'" in message
    assert "line 8 (trial 'worse', fold 'B') holds 'bad', not a number" in message


def test_a_text_cell_in_a_column_not_named_is_left_alone(tmp_path, capsys):
    table = _table().astype({"pattern_acc": object})
    table.loc[6, "pattern_acc"] = "bad"
    code, out, err = _run(tmp_path, capsys, table, "--metric", "dice")
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "stats.csv").metric) == {"dice"}


def test_an_infinite_cell_is_an_error(tmp_path, capsys):
    table = _table()
    table.loc[2, "dice"] = math.inf
    code, _, err = _run(tmp_path, capsys, table)
    assert code == 1
    assert "column 'dice': line 4 (trial 'best', fold 'C') holds inf, not a finite number" in (
        _one_line_error(err)
    )


def test_an_empty_cell_is_a_missing_value_and_a_text_column_no_metric(tmp_path, capsys):
    table = _table().assign(label="config x")  # text only: a label, not a metric
    table.loc[6, "pattern_acc"] = math.nan  # written as an empty cell
    code, out, err = _run(tmp_path, capsys, table)
    assert code == 0, err
    stats = pd.read_csv(tmp_path / "stats.csv")
    assert list(stats.metric.unique()) == ["pattern_acc", "dice"]
    worse = stats[(stats.metric == "pattern_acc") & (stats.trial_id == "worse")].iloc[0]
    assert (worse.n_folds, worse.missing_folds) == (4, 1)
    assert "4/5 folds" in out


def test_text_and_infinities_in_a_data_frame_name_the_row_by_position():
    table = _table().astype({"dice": object})
    table.loc[3, "dice"] = "n/a?"
    with pytest.raises(ValueError, match=r"column 'dice': row 3 \(trial 'best', fold 'D'\)"):
        compare_to_best(table)
    with pytest.raises(ValueError, match="column 'dice' is not numeric: row 3"):
        compare_to_best(table, ["dice"])
    # Numbers as text (and None) read as numbers.
    table = _table().astype({"dice": object})
    table.loc[3, "dice"], table.loc[4, "dice"] = "0.74", None
    stats = compare_to_best(table, ["dice"])
    assert stats[stats.trial_id == "best"].n_folds.iloc[0] == 4


# --- empty labels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("fold", "line 5 (trial 'best'): the fold is empty; every row needs a trial_id and a fold"),
        ("trial_id", "line 5 (fold 'D'): the trial_id is empty"),
    ],
)
def test_an_empty_label_is_an_error_naming_the_row(tmp_path, capsys, column, message):
    table = _table().astype({column: object})
    table.loc[3, column] = None
    code, _, err = _run(tmp_path, capsys, table)
    assert code == 1 and message in _one_line_error(err)


def test_an_empty_repeat_or_blank_label_is_an_error_too():
    table = _table().assign(repeat=0)
    table.loc[7, "repeat"] = math.nan
    with pytest.raises(ValueError, match=r"row 7 \(trial 'worse', fold 'C'\): the repeat is empty"):
        validate_per_fold(table)
    table = _table()
    table.loc[0, "fold"] = "  "
    with pytest.raises(ValueError, match=r"row 0 \(trial 'best'\): the fold is empty"):
        compare_to_best(table)


def test_csv_lines_count_blank_lines(tmp_path, capsys):
    path = tmp_path / "folds.csv"
    path.write_text("trial_id,fold,acc\n\na,A,0.8\na,B,0.7\n\nb,A,0.6\n,B,0.5\n")
    assert main([str(path)]) == 1
    assert "line 7 (fold 'B'): the trial_id is empty" in capsys.readouterr().err


# --- integer columns ------------------------------------------------------------------------


def test_an_integer_column_is_compared_only_when_named(tmp_path, capsys):
    table = _table().assign(n=[40, 41, 39, 40, 42] * 2)  # the test-set size of each fold
    assert list(compare_to_best(table).metric.unique()) == ["pattern_acc", "dice"]
    assert list(compare_to_best(table, ["n"]).metric.unique()) == ["n"]
    code, _, err = _run(tmp_path, capsys, table)
    assert code == 0 and "n" not in set(pd.read_csv(tmp_path / "stats.csv").metric)
    code, _, err = _run(tmp_path, capsys, table, "--metric", "n", "--metric", "dice")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "stats.csv").metric.unique()) == ["n", "dice"]
    # A table of integer columns only has no metric to compare by default.
    code, _, err = _run(tmp_path, capsys, table[["trial_id", "fold", "n"]])
    assert code == 1 and "no numeric metric column" in _one_line_error(err)


# --- repeated cross-validation --------------------------------------------------------------


def _repeated(across: bool) -> pd.DataFrame:
    """3 repeats x 5 folds; folds 0..4 in every repeat, or numbered on, 0..14, across them.
    `b` is `a` less 0.03 + 0.01 * (fold + repeat) % 3: differences -0.03, -0.02, -0.01."""
    rows = []
    for repeat in range(3):
        for fold in range(5):
            a = 0.8 + 0.01 * fold - 0.005 * repeat
            diff = -0.03 + 0.01 * ((fold + repeat) % 3)
            label = 5 * repeat + fold if across else fold
            rows += [
                {"trial_id": "a", "repeat": repeat, "fold": label, "acc": a},
                {"trial_id": "b", "repeat": repeat, "fold": label, "acc": a + diff},
            ]
    return pd.DataFrame(rows)


def test_folds_numbered_within_or_across_repeats_give_the_same_k():
    within, across = _repeated(across=False), _repeated(across=True)
    assert infer_folds_per_repeat(within) == infer_folds_per_repeat(across) == 5
    stats = {name: compare_to_best(t) for name, t in (("within", within), ("across", across))}
    pd.testing.assert_frame_equal(stats["within"], stats["across"])
    b = stats["across"].set_index("trial_id").loc["b"]
    # 15 differences, k = 5: the correction 1/(k-1) = 1/4, not 1/14.
    diffs = np.array([-0.03 + 0.01 * ((f + r) % 3) for r in range(3) for f in range(5)])
    scale = math.sqrt(diffs.var(ddof=1) * (1 / 15 + 1 / 4))
    assert b.n_folds == 15 and b.missing_folds == 0
    assert b.diff_vs_best == pytest.approx(diffs.mean())
    assert b.half_width == pytest.approx(t_dist.ppf(0.975, 14) * scale, rel=1e-9)
    assert b.half_width > 1.3 * t_dist.ppf(0.975, 14) * math.sqrt(
        diffs.var(ddof=1) * (1 / 15 + 1 / 14)
    )  # what k = 15 gave: about a third too narrow


def test_repeats_with_unequal_folds_are_an_error_naming_the_repeat(tmp_path, capsys):
    table = _repeated(across=True)
    table = table[table.fold != 12]  # repeat 2 has 4 folds
    with pytest.raises(ValueError, match="repeat 2 has 4 folds, repeat 0 has 5: every repeat"):
        compare_to_best(table)
    code, _, err = _run(tmp_path, capsys, table)
    assert code == 1 and "repeat 2 has 4 folds" in _one_line_error(err)
    # Given k, the missing fold is just missing.
    stats = compare_to_best(table, folds_per_repeat=5)
    assert set(stats.n_folds) == {14} and set(stats.missing_folds) == {1}
