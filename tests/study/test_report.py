"""The study report on a hand-built results folder: exact numbers, every table and figure.

No Ray: the folder (epochs.parquet, trials.parquet, study.json) is written by hand, with
values whose means and sample standard deviations are known exactly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from mtl import INTENSITIES, PATTERNS, tiny
from study.report import document, plots
from study.report.document import main, write_report
from study.report.summary import (
    compare_with_original,
    configuration_labels,
    fold_table,
    load_optuna_study,
    original_results,
    stopped_trials,
    study_keys,
    summarise,
)
from study.stats.selection import select_epochs

FOLDS = "ABCDE"
TRIAL_EPOCHS = (1, 2, 3)
CONFUSION_MATRICES = (
    ("patch", "pattern", PATTERNS),
    ("patch", "intensity", INTENSITIES),
    ("patient", "pattern", PATTERNS),
    ("patient", "intensity", INTENSITIES),
)


def _row(trial_id: str, fold: str, epoch: int, split: str, value: float) -> dict:
    """One row of epochs.parquet with every metric at `value`."""
    row = {"trial_id": trial_id, "fold": fold, "epoch": epoch, "split": split, "patches": 30}
    row |= {m: value for m in ("pixel_acc", "dice", "iou", "pattern_acc", "pattern_mca")}
    row |= {"intensity_acc": value, "loss": 3 - epoch / 2}
    row |= {"loss_seg": 1 - epoch / 4, "loss_pattern": 1.5 - epoch / 3, "loss_intensity": 0.5}
    votes = value if split == "val" else math.nan
    for level in ("image", "patient"):
        for metric in ("pattern_acc", "pattern_mca", "intensity_acc"):
            row[f"{level}_{metric}"] = votes
    row |= {f"recall_{p}": value for p in PATTERNS}
    weights = (1 + epoch / 10, 1 - epoch / 20, 1 - epoch / 20)
    row |= dict(zip(("weight_seg", "weight_pattern", "weight_intensity"), weights, strict=True))
    return row | {"skipped_steps": 0, "seconds": 1.5}


def hand_epochs() -> pd.DataFrame:
    """t1 (dice, alpha 0.06) with the known values below, t2 (bce, 0.06) at 0.8 everywhere,
    t3 (dice, 0.12) pruned after one epoch at 0.3; t4 (bce, 0.12) errored before any epoch.

    t1's validation rows, fold i = 0..4 (A..E):
      pixel_acc 0.90 + 0.02 i at every epoch; intensity_acc 0.5, patient_intensity_acc 0.75;
      pattern_acc 0.1 at epoch 1, 0.4 + 0.1 i at epoch 2 (fold A: 0.9), 0.5 + 0.1 i at 3;
      patient_pattern_acc 1.0 at epoch 1, 0.5 at epoch 2, 0.6 at epoch 3.
    """
    rows = []
    for fold in FOLDS:
        for epoch in TRIAL_EPOCHS:
            for split in ("train", "val"):
                rows.append(_row("t2", fold, epoch, split, 0.8))
                if epoch == 1:
                    rows.append(_row("t3", fold, epoch, split, 0.3))
                rows.append(_row("t1", fold, epoch, split, 0.5))
    epochs = pd.DataFrame(rows)
    t1 = (epochs.trial_id == "t1") & (epochs.split == "val")
    i = epochs.fold.map(FOLDS.index)
    e = epochs.epoch
    epochs.loc[t1, "pixel_acc"] = 0.90 + 0.02 * i[t1]
    pattern = np.select([e == 1, e == 2], [0.1, 0.4 + 0.1 * i], 0.5 + 0.1 * i)
    epochs.loc[t1, "pattern_acc"] = pattern[t1]
    epochs.loc[t1 & (e == 2) & (epochs.fold == "A"), "pattern_acc"] = 0.9
    epochs.loc[t1, "patient_pattern_acc"] = e[t1].map({1: 1.0, 2: 0.5, 3: 0.6})
    epochs.loc[t1, "patient_intensity_acc"] = 0.75
    return epochs.sample(frac=1, random_state=0).reset_index(drop=True)  # order must not matter


def hand_confusions(epochs: pd.DataFrame) -> pd.DataFrame:
    """confusions.parquet for `epochs`: every matrix 2 on the diagonal, 1 elsewhere; patient
    level on validation rows only."""
    cells = [
        {"trial_id": r.trial_id, "fold": r.fold, "epoch": r.epoch, "split": r.split,
         "level": level, "task": task, "true": t, "predicted": p, "count": 2 if t == p else 1}
        for r in epochs.itertuples()
        for level, task, labels in CONFUSION_MATRICES
        if not (level == "patient" and r.split == "train")
        for t in labels
        for p in labels
    ]  # fmt: skip
    return pd.DataFrame(cells)


def hand_trials() -> pd.DataFrame:
    base = dataclasses.asdict(tiny().replace(epochs=30))
    rows = []
    for trial_id, seg_loss, alpha, status, run, error in (
        ("t1", "dice", 0.06, "completed", 30, None),
        ("t2", "bce", 0.06, "completed", 30, None),
        ("t3", "dice", 0.12, "pruned", 1, None),
        ("t4", "bce", 0.12, "errored", 0, "RuntimeError: out of | memory\nTraceback ..."),
    ):
        rows.append(
            {"trial_id": trial_id, **base, "seg_loss": seg_loss, "alpha": alpha,
             "status": status, "epochs_run": run, "error": error}
        )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "hand"
    folder.mkdir()
    hand_epochs().to_parquet(folder / "epochs.parquet", index=False)
    hand_confusions(hand_epochs()).to_parquet(folder / "confusions.parquet", index=False)
    hand_trials().to_parquet(folder / "trials.parquet", index=False)
    configurations = [{"seg_loss": s, "alpha": a} for s in ("dice", "bce") for a in (0.06, 0.12)]
    study = {"name": "hand", "train": {}, "configurations": configurations, "space": {}}
    (folder / "study.json").write_text(json.dumps(study))
    return folder


# ---- The numbers. ----


def test_final_epoch_means_and_sample_stds_are_exact():
    selected = select_epochs(hand_epochs())
    assert len(selected) == 3 * 5 and set(selected.epoch[selected.trial_id == "t1"]) == {3}
    table = fold_table(selected, "t1")
    assert list(table.columns) == [*FOLDS, "mean", "std"]
    assert table.loc["pixel_acc", list(FOLDS)].tolist() == pytest.approx(
        [0.9, 0.92, 0.94, 0.96, 0.98]
    )
    assert table.at["pixel_acc", "mean"] == pytest.approx(0.94)
    assert table.at["pixel_acc", "std"] == pytest.approx(math.sqrt(0.001))  # ddof=1
    assert table.at["pattern_acc", "mean"] == pytest.approx(0.7)
    assert table.at["pattern_acc", "std"] == pytest.approx(math.sqrt(0.025))
    assert table.at["intensity_acc", "std"] == 0
    assert table.at["score", "mean"] == pytest.approx((0.94 + 0.7 + 0.5) / 3)

    summary = summarise(selected)
    assert summary.index.tolist() == ["t2", "t1", "t3"]  # best score first
    assert summary.at["t1", "pattern_acc_std"] == pytest.approx(math.sqrt(0.025))
    assert summary.at["t2", "score"] == pytest.approx(0.8)
    assert summary.at["t3", "epoch"] == 1  # a pruned trial's last epoch
    assert summary.at["t1", "folds"] == 5


def test_best_epoch_is_chosen_per_fold_by_that_fold_s_score():
    selected = select_epochs(hand_epochs(), "patch", "best")
    t1 = selected[selected.trial_id == "t1"].set_index("fold")
    assert t1.epoch.tolist() == [2, 3, 3, 3, 3]  # fold A peaked at epoch 2
    table = fold_table(selected, "t1")
    assert table.at["pattern_acc", "mean"] == pytest.approx(0.78)
    assert table.at["pattern_acc", "std"] == pytest.approx(math.sqrt(0.017))
    assert table.at["epoch", "mean"] == pytest.approx(2.8)
    # t2 is the same at every epoch: ties go to the earliest epoch.
    assert set(selected.epoch[selected.trial_id == "t2"]) == {1}


def test_patient_level_uses_the_votes_and_their_own_best_epoch():
    final = fold_table(select_epochs(hand_epochs(), "patient"), "t1", "patient")
    assert final.index.tolist()[:5] == [
        "pixel_acc", "patient_pattern_acc", "patient_intensity_acc", "dice", "patient_pattern_mca"
    ]  # fmt: skip
    assert final.at["patient_pattern_acc", "mean"] == pytest.approx(0.6)
    assert final.at["patient_intensity_acc", "mean"] == pytest.approx(0.75)
    assert final.at["score", "mean"] == pytest.approx((0.94 + 0.6 + 0.75) / 3)

    best = select_epochs(hand_epochs(), "patient", "best")
    assert set(best.epoch[best.trial_id == "t1"]) == {1}  # the patient vote peaked at 1
    table = fold_table(best, "t1", "patient")
    assert table.at["patient_pattern_acc", "mean"] == 1.0
    assert table.at["patient_pattern_acc", "std"] == 0
    assert table.at["pixel_acc", "mean"] == pytest.approx(0.94)


def test_unknown_level_or_epoch_is_refused():
    with pytest.raises(ValueError, match="patch, image, patient"):
        select_epochs(hand_epochs(), "specimen")
    with pytest.raises(ValueError, match="final, best"):
        select_epochs(hand_epochs(), "patch", "last")


def test_labels_name_what_varies_and_stopped_trials_keep_their_last_state():
    trials = hand_trials()
    labels = configuration_labels(trials)
    assert labels["t1"] == "seg_loss=dice, alpha=0.06"
    stopped = stopped_trials(trials, summarise(select_epochs(hand_epochs())))
    assert stopped.trial_id.tolist() == ["t3", "t4"]
    assert stopped.last_score[0] == pytest.approx(0.3) and math.isnan(stopped.last_score[1])
    assert stopped.epochs_run.tolist() == [1, 0]
    assert stopped.error[1].startswith("RuntimeError")


def test_the_varied_fields_come_from_configurations_a_space_or_a_grid():
    study = {"configurations": [{"seg_loss": "dice"}, {"seg_loss": "bce", "epochs": 3}]}
    assert study_keys(study) == ("seg_loss", "epochs")
    assert study_keys({"space": {"alpha": {"low": 0.01}}, "configurations": []}) == ("alpha",)
    assert study_keys({"grid": {"alpha": [0.06]}}) == ("alpha",)
    one = hand_trials().iloc[:1]  # nothing varies between one trial: the study's keys
    assert configuration_labels(one, ("seg_loss", "epochs")).tolist() == [
        "seg_loss=dice, epochs=30"
    ]
    assert configuration_labels(one).tolist() == ["base"]


def test_comparison_with_the_original_matches_seg_loss_epochs_and_alpha():
    original = original_results()
    assert len(original) == 6
    assert original.iloc[0].to_dict() == {
        "seg_loss": "dice", "epochs": 30, "alpha": 0.06,
        "pixel_acc": 0.972, "pattern_acc": 0.834, "intensity_acc": 0.822,
    }  # fmt: skip
    trials = hand_trials()
    summary = summarise(select_epochs(hand_epochs()))
    compared = compare_with_original(original, summary.loc[["t1", "t2"]], trials)
    assert compared.trial_id.fillna("-").tolist() == ["t1", "-", "-", "t2", "-", "-"]
    assert compared.at[0, "ours_pixel_acc"] == pytest.approx(0.94)
    assert compared.at[0, "difference_pattern_acc"] == pytest.approx(0.7 - 0.834)
    assert compared.at[3, "difference_intensity_acc"] == pytest.approx(0.8 - 0.822)
    assert compared.difference_pixel_acc.isna().sum() == 4


def test_confusion_matrices_sum_over_folds():
    selected = select_epochs(hand_epochs())
    t1 = selected[selected.trial_id == "t1"][["trial_id", "fold", "epoch"]]
    cells = hand_confusions(hand_epochs().query("split == 'val'")).merge(t1)
    matrix = plots.confusion_matrix(cells, "patient", "pattern", PATTERNS)
    assert (matrix == 5 * (np.ones((7, 7)) + np.eye(7))).all()
    assert plots.confusion_matrix(cells, "patch", "intensity", INTENSITIES).sum() == 5 * 6


# ---- Rendering: files, Markdown, figures. ----


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as rows of cells, checked for a valid layout."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in block]
            assert len(rows) >= 3, block  # header, separator, at least one row
            assert all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]), block[1]
            assert {len(r) for r in rows} == {len(rows[0])}, block
            tables.append([rows[0], *rows[2:]])
            block = []
    return tables


def check_png(path, kind: str) -> None:
    image = matplotlib.image.imread(path)
    width, height = plots.SIZES[kind]
    assert image.shape[:2] == (round(height * plots.DPI), round(width * plots.DPI)), path
    assert image[..., :3].std() > 0.05, f"{path} looks blank"


def test_report_writes_every_table_and_figure(results):
    out = io.StringIO()
    written = write_report(results, console=Console(file=out, width=160))
    names = {p.name for p in written}
    for name in ("report.md", "comparison.csv", "stopped.csv", "folds_t1.csv", "folds_t2.csv"):
        assert name in names and (results / name).is_file()
    assert "folds_t3.csv" not in names  # stopped trials are listed apart, not compared
    for trial in ("t1", "t2", "t3"):
        check_png(results / f"curves_{trial}.png", "curves")
    for trial in ("t2", "t1"):
        check_png(results / f"confusion_{trial}.png", "confusion")
    check_png(results / "weights.png", "weights")

    report = (results / "report.md").read_text()
    tables = markdown_tables(report)
    comparison = tables[0]
    assert comparison[0] == ["metric", "seg_loss=bce, alpha=0.06", "seg_loss=dice, alpha=0.06"]
    assert comparison[1][0] == "pixel accuracy"
    assert comparison[1][2] == "**0.940 ± 0.032**"  # the best of its row, in bold
    assert comparison[2][1] == "**0.800 ± 0.000**" and comparison[2][2] == "0.700 ± 0.158"
    # The score's paired difference to the best (t2, 0.8 on every fold). t1's fold scores
    # are (1.9 + 0.12 i) / 3, so its differences are (-0.5 + 0.12 i) / 3, i = 0..4: mean
    # -0.0867, sd 0.04 * sqrt(2.5) = 0.0632, corrected scale 0.0632 * sqrt(1/5 + 1/4) =
    # 0.04243, half-width 2.7764 * 0.04243 = 0.11779: [-0.20446, +0.03113]; P(worse) 0.93.
    rows = {row[0]: row[1:] for row in comparison}
    assert rows["score − best"] == ["best", "-0.087"]
    assert rows["95% interval"] == ["", "[-0.204, +0.031]"]
    assert rows["verdict"] == ["best", "undecided"]
    assert (
        "1 of 1 other configuration cannot be told apart from the best (score, 5 folds): "
        "0 equivalent within ±0.01, 1 undecided, 0 worse; the smallest difference these folds "
        "could detect is about 0.12." in report
    )
    differences = next(t for t in tables if t[0][-1] == "verdict")
    assert differences[1][:4] == ["seg_loss=dice, alpha=0.06", "score (mean of first 3)", "5",
                                  "-0.087"]  # fmt: skip
    recall = next(t for t in tables if t[0][1:] == list(PATTERNS))
    assert recall[1][0] == "seg_loss=bce, alpha=0.06" and recall[1][1] == "0.800 ± 0.000"
    check_png(results / "intervals.png", "intervals")
    check_png(results / "recall.png", "recall")
    assert "held no patients out of its folds" in report  # and so: selection-biased
    stopped = next(t for t in tables if t[0][1] == "trial")
    assert [r[1] for r in stopped[1:]] == ["t3", "t4"]
    assert [r[3] for r in stopped[1:]] == ["1 of 30", "0 of 30"]
    assert stopped[2][5] == "RuntimeError: out of \\| memory"  # first line, pipe escaped
    for title in re.findall(r"^\*\*(.+)\*\*$", report, re.M):
        assert "final epoch" in title or "last state" in title, title
    assert "no Optuna study" in report
    assert "![curves_t1](curves_t1.png)" in report

    csv = pd.read_csv(results / "folds_t1.csv", index_col="metric")
    assert csv.at["pattern_acc", "std"] == pytest.approx(math.sqrt(0.025))
    printed = out.getvalue()
    assert "best configuration: seg_loss=bce, alpha=0.06" in printed
    assert "undecided" in printed and "cannot be told apart" in printed
    assert "pattern accuracy" in printed and "pruned and errored" in printed


def test_a_large_study_draws_the_curves_of_its_best_trials_only(results, monkeypatch):
    """Over CURVE_FIGURES trials, the curves of the completed ones best first (t2 scores
    0.8, t1 less), then the stopped ones (t3; t4 has no epoch): one PNG per trial of a
    1,000-trial study would take minutes. The report says what was left out and where."""
    monkeypatch.setattr(document, "CURVE_FIGURES", 2)
    out = io.StringIO()
    write_report(results, console=Console(file=out, width=200))
    assert sorted(p.name for p in results.glob("curves_*.png")) == [
        "curves_t1.png", "curves_t2.png"
    ]  # fmt: skip
    note = (
        "the curves of 2 of the 3 trials: the completed ones best first by score, then the "
        "others; every trial's epochs are in epochs.parquet"
    )
    assert f"- {note}" in (results / "report.md").read_text()
    assert f"note: {note}" in " ".join(out.getvalue().split())
    monkeypatch.setattr(document, "CURVE_FIGURES", 1)
    write_report(results, out=results / "one", console=Console(file=io.StringIO()))
    assert [p.name for p in (results / "one").glob("curves_*.png")] == ["curves_t2.png"]


def test_best_epoch_patient_level_and_the_original_side_by_side(results, tmp_path):
    out = tmp_path / "elsewhere"
    write_report(results, out, "patient", "best", True, Console(file=io.StringIO()))
    report = (out / "report-patient-best.md").read_text()
    assert not (out / "report.md").exists()  # the default report is left alone
    for title in re.findall(r"^\*\*(.+)\*\*$", report, re.M):
        assert "best epoch per fold" in title or "last state" in title, title
    assert "patient level" in report and "no image- or patient-level pixel accuracy" in report
    tables = markdown_tables(report)
    original = next(t for t in tables if t[0][0] == "original configuration")
    assert len(original) - 1 == 6 * 3  # original, ours, difference for each of the six
    assert original[1] == ["dice, 30 epochs, alpha 0.06", "0.972", "0.834", "0.822"]
    assert original[2][0] == "ours: seg_loss=dice, alpha=0.06"
    # Patch level, best epoch: pattern 0.78 vs the original's 0.834.
    assert original[3][1:] == ["-0.032", "-0.054", "-0.322"]
    assert original[5][0] == "ours: no match" and original[5][1:] == ["-", "-", "-"]
    folds = next(t for t in tables if t[0][-1] == "mean ± std")
    assert folds[1][0] == "pixel acc. (patch level)"
    assert (out / "original-patient-best.csv").is_file()
    check_png(out / "confusion_t2-patient-best.png", "confusion")


def test_optuna_figures_and_a_note_when_too_few_trials(results, tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        dice = trial.suggest_categorical("seg_loss", ["dice", "bce"]) == "dice"
        value = trial.suggest_float("alpha", 0.01, 3, log=True) / 3 + 0.1 * dice
        for epoch in (1, 2):  # per-epoch scores, as a study's trials report them
            trial.report(value * epoch / 2, epoch)
        return value

    one = optuna.create_study(direction="maximize")
    one.optimize(objective, n_trials=1)
    paths, notes = plots.optuna_figures(one, tmp_path)
    assert [p.name for p in paths] == [
        "optuna_intermediate.png",
        "optuna_history.png",
        "optuna_parallel.png",
    ]
    assert notes == [
        "parameter importances (fANOVA): needs 2 completed trials with parameters, the study has 1"
    ]
    silent = optuna.create_study(direction="maximize")
    silent.optimize(lambda t: t.suggest_float("alpha", 0.01, 3), n_trials=1)
    assert plots.optuna_figures(silent, tmp_path)[1][0] == (
        "intermediate values (every trial, pruned ones included): no trial reported an "
        "intermediate value"
    )

    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="hand", direction="maximize")
    study.optimize(objective, n_trials=6)
    write_report(results, console=Console(file=io.StringIO()))
    report = (results / "report.md").read_text()
    for name in ("intermediate", "history", "importances", "parallel"):
        check_png(results / f"optuna_{name}.png", "optuna")
        assert f"![optuna_{name}](optuna_{name}.png)" in report
    assert "Optuna" not in report.split("### Optuna")[1]  # no note: every figure drawn


def test_a_study_whose_every_trial_failed_still_reports(tmp_path):
    folder = tmp_path / "failed"
    folder.mkdir()
    pd.DataFrame(columns=["trial_id", "fold", "epoch", "split"]).to_parquet(
        folder / "epochs.parquet"
    )
    hand_trials().iloc[3:].to_parquet(folder / "trials.parquet")
    write_report(folder, console=Console(file=io.StringIO()))
    report = (folder / "report.md").read_text()
    assert "no completed configuration" in report
    assert markdown_tables(report)[0][1][2] == "errored"  # no comparison, the failure


def test_command_line(results, capsys):
    assert main([str(results), "--level", "image", "--epoch", "best", "--no-figures"]) == 0
    assert (results / "report-image-best.md").is_file()
    assert not list(results.glob("*.png"))
    assert "best configuration" in capsys.readouterr().out
    assert main([str(results / "missing")]) == 2
    assert "epochs.parquet" in capsys.readouterr().out


def test_no_figures_writes_the_same_tables_without_matplotlib(results, tmp_path):
    """--no-figures: the tables, CSVs and report.md of the full report, no PNG, a note that
    says how to draw them, and matplotlib never imported (a process of its own)."""
    write_report(results, tmp_path / "full", console=Console(file=io.StringIO()))
    script = (
        "import sys\n"
        "from study.report.document import main\n"
        "status = main(sys.argv[1:])\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
        "sys.exit(status)\n"
    )
    out = tmp_path / "tables"
    done = subprocess.run(
        [sys.executable, "-c", script, str(results), "--out", str(out), "--no-figures"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(out.glob("*.png"))
    full = {p.name for p in (tmp_path / "full").iterdir()}
    assert {p.name for p in out.iterdir()} == {n for n in full if not n.endswith(".png")}
    report = (out / "report.md").read_text()
    assert markdown_tables(report) == markdown_tables((tmp_path / "full" / "report.md").read_text())
    drawn_later = f"Figures not drawn (--no-figures): `python -m study.report {results}` draws them"
    assert drawn_later in report and drawn_later in " ".join(done.stdout.split())


def test_the_score_is_defined_once():
    import mtl
    from study.report import document, summary
    from study.results import tables
    from study.spec import presets

    for module in (presets, document, tables, summary):
        assert module.SCORE_METRICS is mtl.SCORE_METRICS, module


def test_an_optuna_journal_is_found_too(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    optuna.create_study(storage=storage, study_name="journal")
    assert load_optuna_study(tmp_path).study_name == "journal"
    assert load_optuna_study(tmp_path / "elsewhere") is None
