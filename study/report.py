"""The study report: per-fold tables, the configuration comparison, the original study side by
side, and the figures; printed with rich, written as report.md, one CSV per table and PNGs.

    python -m study.report RESULTS/NAME [--out DIR] [--level patch|image|patient]
                                        [--epoch final|best] [--compare-original]

The tables follow the original study's figures: Fig. 4 (one table per configuration:
metrics x folds A-E and mean +- std) and Fig. 16 (metrics x configurations). The numbers
come from pure pandas functions (`select_epochs`, `fold_table`, `summarise`,
`stopped_trials`, `compare_with_original`); formatting and rendering come after them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtl.config import TrainConfig
from mtl.labels import PATTERNS
from study import plots
from study.holdout import optimism_sentence
from study.stats import DEFAULT_ROPE, compare_to_best, summary_sentence

LEVELS = {
    "patch": "patch level",
    "image": "image level (majority vote over a specimen's patches)",
    "patient": "patient level (majority vote over a patient's patches)",
}
EPOCHS = {
    "final": "final epoch",
    "best": "best epoch per fold (by the fold's validation score)",
}
# How a fold's epoch is chosen: the one where this key is largest (the first of ties).
EPOCH_KEYS = {
    "final": lambda val: val.epoch,
    "best": lambda val: val.score.fillna(-np.inf),
}
NO_VOTED_PIXELS = (
    "Majority votes label specimens and patients, not pixels: there is no image- or "
    "patient-level pixel accuracy or Dice; the patch-level values are shown, so labelled."
)
CONFUSION_FIGURES = 3  # confusion matrices for this many of the best configurations
CONSOLE_FOLD_TABLES = 6  # per-fold tables printed; report.md has all of them


def level_metrics(level: str) -> dict[str, str]:
    """Column of epochs.parquet -> row title. The first three make a fold's score.

    Votes label whole specimens or patients, not pixels: pixel accuracy and Dice exist at
    patch level only and are shown, so labelled, at every level.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if level == "patch":
        return {
            "pixel_acc": "pixel accuracy",
            "pattern_acc": "pattern accuracy",
            "intensity_acc": "intensity accuracy",
            "dice": "Dice (cells)",
            "pattern_mca": "pattern mean class acc.",
        }
    return {
        "pixel_acc": "pixel acc. (patch level)",
        f"{level}_pattern_acc": "pattern accuracy",
        f"{level}_intensity_acc": "intensity accuracy",
        "dice": "Dice (patch level)",
        f"{level}_pattern_mca": "pattern mean class acc.",
    }


# Every metric with its level in its name, for tables that mix levels.
METRIC_TITLES = {
    "score": "score (mean of pixel, pattern, intensity acc.)",
    "pixel_acc": "pixel accuracy",
    "dice": "Dice (cells)",
    "iou": "IoU (cells)",
    "pattern_acc": "pattern accuracy",
    "pattern_mca": "pattern mean class acc.",
    "intensity_acc": "intensity accuracy",
    **{
        f"{level}_{metric}": f"{title}, {level} vote"
        for level in ("image", "patient")
        for metric, title in (
            ("pattern_acc", "pattern accuracy"),
            ("pattern_mca", "pattern mean class acc."),
            ("intensity_acc", "intensity accuracy"),
        )
    },
}

SCREEN_COLUMNS = 3  # configurations side by side on a terminal; more are ranked in rows
SCREEN_TEST_METRICS = ("score", "pixel_acc", "pattern_acc", "intensity_acc",
                       "patient_pattern_acc", "patient_intensity_acc")  # fmt: skip

# The study's score: the mean of these three (study.results.SCORE_METRICS, not imported: torch).
SCORE_METRICS = tuple(level_metrics("patch"))[:3]


def row_titles(level: str) -> dict[str, str]:
    return {**level_metrics(level), "score": "score (mean of first 3)", "epoch": "epoch"}


# ---- The numbers: pure pandas, no rendering. ----


def select_epochs(epochs: pd.DataFrame, level: str = "patch", epoch: str = "final") -> pd.DataFrame:
    """One validation row per (trial, fold), with a `score` column: the mean of the fold's
    pixel, pattern and intensity accuracy at `level`.

    `final`: the fold's last epoch (for a pruned trial, the last one it ran). `best`: the
    epoch of the fold's highest score, the earliest of ties: a retrospective choice, an
    optimistic estimate, which every title says.
    """
    metrics = list(level_metrics(level))
    if epoch not in EPOCHS:
        raise ValueError(f"unknown epoch {epoch!r}; expected one of {', '.join(EPOCHS)}")
    val = epochs[epochs.split == "val"].sort_values(["trial_id", "fold", "epoch"])
    val = val.reset_index(drop=True).reindex(columns=list(dict.fromkeys([*val, *metrics])))
    val["score"] = val[metrics[:3]].mean(axis=1, skipna=False)
    if val.empty:
        return val
    chosen = EPOCH_KEYS[epoch](val).groupby([val.trial_id, val.fold]).idxmax()
    return val.loc[chosen.to_numpy()].reset_index(drop=True)


def summary_columns(level: str) -> list[str]:
    return [*level_metrics(level), "score", "epoch"]


def fold_table(selected: pd.DataFrame, trial_id: str, level: str = "patch") -> pd.DataFrame:
    """One trial's Fig. 4 table: rows the metrics, the score and the epoch used; columns the
    folds, then `mean` and `std` (sample std, ddof=1) over them."""
    rows = selected[selected.trial_id == trial_id].set_index("fold").sort_index()
    folds = rows[summary_columns(level)].T.astype(float).rename_axis(index="metric", columns=None)
    return folds.assign(mean=folds.mean(axis=1), std=folds.std(axis=1, ddof=1))


def summarise(selected: pd.DataFrame, level: str = "patch") -> pd.DataFrame:
    """Per trial (index): mean and sample std (`<metric>_std`) over folds of every metric,
    the score and the epoch, and the number of folds; the best score first.

    At patch level and the final epoch, `score` is the study's cv_score.
    """
    columns = summary_columns(level)
    grouped = selected.groupby("trial_id")[columns]
    summary = grouped.mean().join(grouped.std(ddof=1).add_suffix("_std"))
    summary["folds"] = selected.groupby("trial_id").fold.nunique()
    return summary.sort_values("score", ascending=False, kind="stable")


def value_text(value: object) -> str:
    """A configuration value as a label shows it: 0.06, dice, (64, 32, 16)."""
    if isinstance(value, np.ndarray | list | tuple):
        return str(tuple(np.asarray(value).tolist()))
    if isinstance(value, float):
        return f"{value:.3g}"  # a searched 0.0636647... reads as 0.0637
    return str(value)


def varying_fields(trials: pd.DataFrame, keys=()) -> list[str]:
    """The TrainConfig fields whose value differs between trials; else the study's `keys`
    (a study of one configuration, or one whose trials all drew the same values)."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name in trials]
    varying = [f for f in fields if trials[f].map(value_text).nunique() > 1]
    return varying or [key for key in keys if key in trials]


def configuration_label(row: pd.Series, keys) -> str:
    return ", ".join(f"{key}={value_text(row[key])}" for key in keys) or "base"


def configuration_labels(trials: pd.DataFrame, keys=()) -> pd.Series:
    """trial_id -> label from what varies, e.g. 'seg_loss=dice, alpha=0.06'; unique."""
    keys = varying_fields(trials, keys)
    labels = pd.Series(
        [configuration_label(row, keys) for _, row in trials.iterrows()],
        index=trials.trial_id.to_numpy(),
        dtype=object,
    )
    twins = labels.duplicated(keep=False)  # the same values drawn twice (a search can)
    labels[twins] = [f"{label} ({trial})" for trial, label in labels[twins].items()]
    return labels


def stopped_trials(trials: pd.DataFrame, last: pd.DataFrame) -> pd.DataFrame:
    """Pruned and errored trials with their last state: epochs run of those planned, the
    score of their last epoch (from `last`, a summary at the final epoch), the error."""
    stopped = trials[trials.status != "completed"]
    score = stopped.trial_id.map(last["score"]) if len(last) else np.nan
    return pd.DataFrame(
        {
            "trial_id": stopped.trial_id,
            "status": stopped.status,
            "epochs_run": stopped.epochs_run,
            "epochs": stopped.epochs,
            "last_score": score,
            "error": stopped.error,
        }
    ).reset_index(drop=True)


def original_results() -> pd.DataFrame:
    """The original study's six configurations (patch level, final epoch, fold means)."""
    text = resources.files("study").joinpath("data/original_results.csv").read_text()
    return pd.read_csv(io.StringIO(text))


def compare_with_original(
    original: pd.DataFrame, summary: pd.DataFrame, trials: pd.DataFrame
) -> pd.DataFrame:
    """One row per original configuration: its accuracies, ours (mean and std over folds, of
    the best-scoring of our trials with the same seg_loss, epochs and alpha; NaN without
    one) and ours - original. `summary` is a patch-level summary: all the original has."""
    ours = trials[trials.trial_id.isin(summary.index)]
    rows = []
    for orig in original.itertuples(index=False):
        same = (
            (ours.seg_loss == orig.seg_loss)
            & (ours.epochs == orig.epochs)
            & np.isclose(ours.alpha.astype(float), orig.alpha)
        )
        matched = summary.loc[ours.trial_id[same]]
        best = matched.score.idxmax() if len(matched) else None
        row = {"seg_loss": orig.seg_loss, "epochs": orig.epochs, "alpha": orig.alpha,
               "trial_id": best, "matches": len(matched)}  # fmt: skip
        mine = summary.loc[best] if best is not None else {}
        for metric in SCORE_METRICS:
            row[f"original_{metric}"] = getattr(orig, metric)
            row[f"ours_{metric}"] = mine.get(metric, np.nan)
            row[f"ours_{metric}_std"] = mine.get(f"{metric}_std", np.nan)
            row[f"difference_{metric}"] = row[f"ours_{metric}"] - row[f"original_{metric}"]
        rows.append(row)
    return pd.DataFrame(rows)


# ---- Tables: numbers for the CSV, text for the screen and Markdown. ----


@dataclass(frozen=True)
class ReportTable:
    name: str  # file stem of its CSV
    title: str
    numbers: pd.DataFrame  # what the CSV holds
    cells: pd.DataFrame  # the text shown; the index is the first column
    bold: pd.DataFrame | None = None  # True where a cell is the best of its row
    text_columns: tuple[str, ...] = ()  # aligned left; the others hold numbers, aligned right


def number(value: float, digits: int = 3) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}"


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "-"
    return number(mean, digits) if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def signed(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:+.3f}"


def digits_of(metric: str) -> int:
    return 1 if metric == "epoch" else 3


def fold_report_table(table: pd.DataFrame, name: str, title: str, level: str) -> ReportTable:
    folds = [c for c in table.columns if c not in ("mean", "std")]
    cells = pd.DataFrame(
        [
            [number(row[f], 0 if m == "epoch" else 3) for f in folds]
            + [mean_std(row["mean"], row["std"], digits_of(m))]
            for m, row in table.iterrows()
        ],
        index=pd.Index([row_titles(level)[m] for m in table.index], name="metric"),
        columns=[*folds, "mean ± std"],
    )
    return ReportTable(name, title, table, cells)


def comparison_report_table(
    summary: pd.DataFrame,
    labels: pd.Series,
    title: str,
    level: str,
    stats: pd.DataFrame | None = None,
) -> ReportTable:
    metrics = summary_columns(level)
    columns = [labels[t] for t in summary.index]
    means = summary[metrics].T.set_axis(columns, axis=1)
    stds = summary[[f"{m}_std" for m in metrics]].T.set_axis(columns, axis=1).set_axis(metrics)
    numbers = pd.DataFrame(
        {
            f"{c} {stat}": frame[c]
            for c in columns
            for stat, frame in (("mean", means), ("std", stds))
        }
    ).rename_axis("metric")
    cells = pd.DataFrame(
        [[mean_std(means.at[m, c], stds.at[m, c], digits_of(m)) for c in columns] for m in metrics],
        index=pd.Index([row_titles(level)[m] for m in metrics], name="metric"),
        columns=columns,
    )
    # The best of each row as shown (equal to 3 decimals: both bold); the epoch row is no
    # competition.
    shown = means.round(3)
    best = shown.eq(shown.max(axis=1), axis=0) & shown.notna()
    best.loc["epoch"] = False
    best = best.set_axis(cells.index)
    if stats is not None and len(stats):
        # What the ranking is worth: the score's paired difference to the best, its interval
        # and the verdict (study.stats), under the means.
        score = stats[stats.metric == "score"].set_index("trial_id").loc[summary.index]
        rows = score.itertuples()
        differences = [
            ("best", "", r.verdict)
            if r.is_best
            else (signed(r.diff_vs_best), interval(r.ci_low, r.ci_high), r.verdict)
            for r in rows
        ]
        extra = pd.DataFrame(
            list(zip(*differences, strict=True)),
            index=["score − best", "95% interval", "verdict"],
            columns=columns,
        )
        cells = pd.concat([cells, extra]).rename_axis("metric")
        best = pd.concat([best, pd.DataFrame(False, index=extra.index, columns=columns)])
    return ReportTable("comparison", title, numbers, cells, best)


def interval(low: float, high: float) -> str:
    return "-" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]"


def ranking_report_table(
    summary: pd.DataFrame, stats: pd.DataFrame, labels: pd.Series, title: str
) -> ReportTable:
    """The comparison as a terminal shows it: one row per configuration, best first, with
    the score, its paired difference to the best, the interval and the verdict."""
    score = stats[stats.metric == "score"].set_index("trial_id").loc[summary.index]
    cells = pd.DataFrame(
        {
            "score": [mean_std(m, s) for m, s in zip(score["mean"], score["std"], strict=True)],
            "− best": ["" if r.is_best else signed(r.diff_vs_best) for r in score.itertuples()],
            "95% interval": [
                "" if r.is_best else interval(r.ci_low, r.ci_high) for r in score.itertuples()
            ],
            "verdict": score.verdict.to_numpy(),
        },
        index=pd.Index([labels[t] for t in summary.index], name="configuration"),
    )
    return ReportTable("ranking", title, score, cells, text_columns=("verdict",))


def statistics_report_table(
    stats: pd.DataFrame, labels: pd.Series, level: str, title: str
) -> ReportTable:
    """Every configuration against the best, metric by metric (report.md and stats.csv)."""
    titles = row_titles(level)
    rows = stats[~stats.is_best]
    cells = pd.DataFrame(
        {
            "metric": [titles.get(m, m) for m in rows.metric],
            "folds": rows.n_folds.astype(int).astype(str).to_numpy(),
            "Δ vs best": [signed(v) for v in rows.diff_vs_best],
            "95% interval": list(map(interval, rows.ci_low, rows.ci_high)),
            "p": [number(v) for v in rows.p_value],
            "P(worse)": [number(v, 2) for v in rows.p_worse],
            "P(equiv.)": [number(v, 2) for v in rows.p_rope],
            "P(better)": [number(v, 2) for v in rows.p_better],
            "verdict": rows.verdict.to_numpy(),
        },
        index=pd.Index([labels[t] for t in rows.trial_id], name="configuration"),
    )
    return ReportTable("differences", title, stats, cells, text_columns=("metric", "verdict"))


def recall_report_table(selected: pd.DataFrame, order, labels: pd.Series, title: str):
    """Recall of every pattern (patch level), mean ± std over folds, per configuration."""
    columns = [f"recall_{p}" for p in PATTERNS]
    if not set(columns) <= set(selected):
        return None
    rows = selected[selected.trial_id.isin(order)]
    grouped = rows.groupby("trial_id")[columns]
    mean, std = grouped.mean().loc[list(order)], grouped.std(ddof=1).loc[list(order)]
    cells = pd.DataFrame(
        [[mean_std(mean.at[t, c], std.at[t, c]) for c in columns] for t in order],
        index=pd.Index([labels[t] for t in order], name="configuration"),
        columns=list(PATTERNS),
    )
    numbers = mean.join(std.add_suffix("_std")).rename_axis("trial_id")
    return ReportTable("recall", title, numbers, cells)


def test_report_table(test: pd.DataFrame, title: str) -> ReportTable:
    """The chosen configuration: cross-validated beside held-out estimate, and their
    difference (the optimism of the selection)."""
    cells = pd.DataFrame(
        {
            "cross-validated": [mean_std(m, s) for m, s in zip(test.cv, test.cv_std, strict=True)],
            "test": [number(v) for v in test.test],
            "95% interval (test)": [
                f"{number(lo)} to {number(hi)}"
                for lo, hi in zip(test.ci_low, test.ci_high, strict=True)
            ],
            "optimism (cv − test)": [signed(v) for v in test.optimism],
        },
        index=pd.Index([METRIC_TITLES.get(m, m) for m in test.metric], name="metric"),
    )
    return ReportTable("test", title, test, cells)


def stopped_report_table(stopped: pd.DataFrame, labels: pd.Series, title: str) -> ReportTable:
    cells = pd.DataFrame(
        {
            "trial": stopped.trial_id.to_numpy(),
            "status": stopped.status.to_numpy(),
            "epochs run": [
                f"{r} of {p}" for r, p in zip(stopped.epochs_run, stopped.epochs, strict=True)
            ],
            "last score": [number(v) for v in stopped.last_score],
            # The first line of a traceback's text is what a table has room for.
            "error": [
                "" if e is None or pd.isna(e) else str(e).strip().splitlines()[0][:160]
                for e in stopped.error
            ],
        },
        index=pd.Index([labels[t] for t in stopped.trial_id], name="configuration"),
    )
    if not cells.error.str.len().any():  # no errors: no empty column to squeeze the others
        cells = cells.drop(columns="error")
    return ReportTable("stopped", title, stopped, cells, text_columns=("trial", "status", "error"))


def original_report_table(compared: pd.DataFrame, labels: pd.Series, title: str) -> ReportTable:
    """Three rows per original configuration: its numbers, ours, the difference; narrow
    enough for a terminal (our stds are in the comparison table and the CSV)."""
    rows, index = [], []
    for r in compared.to_dict("records"):
        matched = r["trial_id"] is not None and not pd.isna(r["trial_id"])
        ours = f"  ours: {labels[r['trial_id']]}" if matched else "  ours: no match"
        if r["matches"] > 1:
            ours += f" (best of {r['matches']})"
        index += [
            f"{r['seg_loss']}, {r['epochs']} epochs, alpha {r['alpha']:g}",
            ours,
            "  Δ = ours - original",
        ]
        rows.append([number(r[f"original_{m}"]) for m in SCORE_METRICS])
        rows.append([number(r[f"ours_{m}"]) for m in SCORE_METRICS])
        rows.append([signed(r[f"difference_{m}"]) for m in SCORE_METRICS])
    cells = pd.DataFrame(
        rows,
        index=pd.Index(index, name="original configuration"),
        columns=[level_metrics("patch")[m] for m in SCORE_METRICS],
    )
    return ReportTable("original", title, compared, cells)


def markdown_table(table: ReportTable) -> str:
    """A GitHub-flavoured Markdown table under a bold title; best cells in bold."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ").strip()

    header = [table.cells.index.name or "", *table.cells.columns]
    lines = [f"**{cell(table.title)}**", "", "| " + " | ".join(map(cell, header)) + " |"]
    aligns = ["---" if c in table.text_columns else "---:" for c in table.cells.columns]
    lines.append("|" + "|".join(["---", *aligns]) + "|")
    for i, (label, row) in enumerate(table.cells.iterrows()):
        texts = [cell(v) for v in row]
        if table.bold is not None:
            texts = [
                f"**{t}**" if b and t else t for t, b in zip(texts, table.bold.iloc[i], strict=True)
            ]
        lines.append("| " + " | ".join([cell(label), *texts]) + " |")
    return "\n".join(lines) + "\n"


def rich_table(table: ReportTable) -> Table:
    rich = Table(
        title=escape(table.title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,  # without these, rich wraps "0.812 ± 0.031" in an 80-column terminal
        collapse_padding=True,
    )
    # Headers and row labels (configurations) may wrap, at word boundaries; short cells
    # (numbers, ids, statuses) never do: every column is at least as wide as its widest
    # cell. Free text (errors) folds.
    labels = [str(label) for label in table.cells.index]
    longest_word = max((len(w) for label in labels for w in label.split()), default=0)
    rich.add_column(escape(table.cells.index.name or ""), min_width=min(longest_word, 30))
    for column in table.cells.columns:
        justify = "left" if column in table.text_columns else "right"
        widest = (
            0 if column == "error" else max((len(str(v)) for v in table.cells[column]), default=0)
        )
        rich.add_column(escape(str(column)), justify=justify, min_width=widest, overflow="fold")
    for i, (label, row) in enumerate(table.cells.iterrows()):
        texts = [escape(str(v)) for v in row]
        if table.bold is not None:
            texts = [
                f"[bold green]{t}[/]" if b else t
                for t, b in zip(texts, table.bold.iloc[i], strict=True)
            ]
        rich.add_row(escape(str(label)), *texts)
    return rich


# ---- The whole report. ----


@dataclass(frozen=True)
class Results:
    path: Path
    name: str
    epochs: pd.DataFrame
    trials: pd.DataFrame
    keys: tuple[str, ...]  # the fields the study set out to vary
    score_metrics: tuple[str, ...]  # what the study's own cv_score averages
    num_folds: int | None = None  # k of the (repeated) k-fold cross-validation
    held_out: bool = False  # whether the study kept a test set out of every fold
    test: pd.DataFrame | None = None  # test.parquet: the chosen configuration's test estimate


def study_keys(study: dict) -> tuple[str, ...]:
    """The fields a study varies, from study.json: its configurations' keys, its search
    space's, or (older files) its grid's."""
    keys = [k for c in study.get("configurations", ()) for k in c]
    return tuple(dict.fromkeys([*keys, *study.get("space", {}), *study.get("grid", {})]))


def load_results(path: str | Path) -> Results:
    """epochs.parquet, trials.parquet and study.json of one study folder (RESULTS/NAME)."""
    path = Path(path)
    missing = [n for n in ("epochs.parquet", "trials.parquet") if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} has no {' or '.join(missing)}: expected a study's folder, RESULTS/NAME"
        )
    study_file = path / "study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else {}
    train = study.get("train", {})
    test_file = path / "test.parquet"
    return Results(
        path=path,
        name=study.get("name", path.name),
        epochs=pd.read_parquet(path / "epochs.parquet"),
        trials=pd.read_parquet(path / "trials.parquet"),
        keys=study_keys(study),
        score_metrics=tuple(study.get("score_metrics", SCORE_METRICS)),
        num_folds=train.get("num_folds"),
        held_out=bool(train.get("held_out")),
        test=pd.read_parquet(test_file) if test_file.is_file() else None,
    )


@dataclass(frozen=True)
class Built:
    tables: list[ReportTable]  # comparison first, then the others
    folds: list[ReportTable]  # one per completed configuration
    summary: pd.DataFrame  # completed trials, best score first
    stats: pd.DataFrame  # study.stats.compare_to_best of the completed trials
    sentences: list[str]  # what the statistics say, in words
    selected: pd.DataFrame  # one validation row per (trial, fold): what the tables use


def fold_statistics(
    results: Results, selected: pd.DataFrame, done: pd.Series, level: str, rope: float
) -> pd.DataFrame:
    """Every completed configuration against the best, fold by fold, on the report's rows."""
    metrics = ["score", *level_metrics(level)]
    per_fold = selected[selected.trial_id.isin(done)]
    if per_fold.empty:
        return pd.DataFrame()
    columns = ["trial_id", "fold", *(["repeat"] if "repeat" in per_fold else []), *metrics]
    return compare_to_best(
        per_fold[columns], metrics, folds_per_repeat=results.num_folds, rope=rope
    )


def build_tables(
    results: Results,
    level: str,
    epoch: str,
    compare_original: bool,
    rope: float = DEFAULT_ROPE,
) -> Built:
    trials, labels = results.trials, configuration_labels(results.trials, results.keys)
    selected = select_epochs(results.epochs, level, epoch)
    done = trials.trial_id[trials.status == "completed"]
    summary = summarise(selected[selected.trial_id.isin(done)], level)
    stats = fold_statistics(results, selected, done, level, rope)
    titles = row_titles(level)
    sentences = [
        summary_sentence(stats, metric, "score" if metric == "score" else titles[metric])
        for metric in ("score", list(level_metrics(level))[1])  # the score, pattern accuracy
        if len(stats) and metric in set(stats.metric)
    ]
    where = f"validation, {LEVELS[level]}, {EPOCHS[epoch]}"
    title = (
        f"{results.name}: completed configurations, {where}; mean ± std over folds, "
        "best score first, best of each row in bold; the score's paired difference to the "
        f"best, its 95% interval and verdict (rope ±{rope:g})"
    )
    tables = (
        [comparison_report_table(summary, labels, title, level, stats if len(stats) else None)]
        if len(summary)
        else []
    )
    if len(stats) and len(summary) > 1:
        title = (
            f"{results.name}: every configuration against the best, paired by fold ({where}): "
            "corrected resampled t-test (Nadeau & Bengio 2003) and Bayesian correlated t-test "
            f"(Benavoli et al. 2017), rope ±{rope:g}"
        )
        tables.append(statistics_report_table(stats, labels, level, title))
    recall = recall_report_table(
        selected,
        list(summary.index),
        labels,
        f"{results.name}: recall of each pattern, validation, patch level, {EPOCHS[epoch]}; "
        "mean ± std over folds",
    )
    if recall is not None and len(summary):
        tables.append(recall)
    if results.test is not None and len(results.test):
        test = results.test
        title = (
            f"{results.name}: the chosen configuration ({labels.get(test.trial_id.iloc[0], '?')})"
            f" on {int(test.test_patients.iloc[0])} held-out patients, beside its "
            "cross-validated estimate (last epoch, mean ± std over folds)"
        )
        tables.append(test_report_table(test, title))
    stopped = stopped_trials(trials, summarise(select_epochs(results.epochs, level), level))
    if len(stopped):
        title = (
            f"{results.name}: pruned and errored trials, last state (the last epoch run), "
            f"{LEVELS[level]}"
        )
        tables.append(stopped_report_table(stopped, labels, title))
    if compare_original:
        patch = summarise(select_epochs(results.epochs, "patch", epoch), "patch")
        compared = compare_with_original(original_results(), patch.loc[summary.index], trials)
        title = (
            f"{results.name} vs the original study: validation, patch level (all it reported), "
            f"{EPOCHS[epoch]}; means over folds; matched on seg loss, epochs and alpha"
        )
        tables.append(original_report_table(compared, labels, title))
    folds = [
        fold_report_table(
            fold_table(selected, trial_id, level),
            f"folds_{trial_id}",
            f"{labels[trial_id]}: {where}, per fold",
            level,
        )
        for trial_id in summary.index
    ]
    return Built(tables, folds, summary, stats, sentences, selected)


def draw_figures(
    results: Results, out: Path, level: str, epoch: str, built: Built, suffix: str
) -> tuple[dict[str, list[Path]], list[str]]:
    """Every PNG of the report, by section, and notes on what could not be drawn."""
    summary = built.summary
    labels = configuration_labels(results.trials, results.keys)
    epochs = results.epochs
    figures: dict[str, list[Path]] = {"training curves": [], "task weights": []}
    for trial_id in labels.index[labels.index.isin(epochs.trial_id)]:
        title = f"{labels[trial_id]}: training and validation"
        trial = results.trials.set_index("trial_id").loc[trial_id]
        if trial.status != "completed":  # say why the curves stop early
            title += f" ({trial.status} after {trial.epochs_run} of {trial.epochs} epochs)"
        rows = epochs[epochs.trial_id == trial_id]
        figures["training curves"].append(
            plots.training_curves(rows, title, out / f"curves_{trial_id}.png")
        )
    if not epochs.empty:
        shown = labels[labels.index.isin(epochs.trial_id)]
        balancers = ", ".join(results.trials.balancer.astype(str).unique())
        title = f"task weights (balancer: {balancers}) at the end of each epoch, mean over folds"
        figures["task weights"].append(
            plots.task_weights(epochs, shown, title, out / "weights.png")
        )
    selected = select_epochs(epochs, "patch", epoch)
    figures["comparison"] = []
    if len(built.stats) and "score" in set(built.stats.metric):
        ratio = 1 / (max(results.num_folds or built.selected.fold.nunique(), 2) - 1)
        figures["comparison"].append(
            plots.score_intervals(
                built.selected, built.stats, labels, ratio,
                f"{results.name}: score of each completed configuration, {LEVELS[level]}, "
                f"{EPOCHS[epoch]}; colour: verdict against the best",
                out / f"intervals{suffix}.png",
            )
        )  # fmt: skip
    if len(summary) and f"recall_{PATTERNS[0]}" in selected:
        shown = labels[summary.index[: CONFUSION_FIGURES * 2]]
        figures["comparison"].append(
            plots.pattern_recall(
                selected, shown,
                f"{results.name}: recall of each pattern (validation, patch level, "
                f"{EPOCHS[epoch]}); bars: mean over folds, lines: min to max",
                out / f"recall{suffix}.png",
            )
        )  # fmt: skip
    figures["confusion matrices"] = [
        plots.confusion_matrices(
            selected[selected.trial_id == trial_id],
            f"{labels[trial_id]}: validation confusion, summed over "
            f"{int(summary.at[trial_id, 'folds'])} folds, {EPOCHS[epoch]}",
            out / f"confusion_{trial_id}{suffix}.png",
        )
        for trial_id in summary.index[:CONFUSION_FIGURES]
    ]
    notes = []
    try:
        study = plots.load_optuna_study(results.path)
    except ValueError as error:
        study, notes = None, [str(error)]
    if study is None:
        notes = notes or ["no Optuna study (optuna.db or optuna.journal) in the results folder"]
        figures["optuna"] = []
    else:
        figures["optuna"], notes = plots.optuna_figures(study, out)
    return figures, notes


def score_note(results: Results) -> str | None:
    """A note when the study optimised another score than the one this report ranks by."""
    if results.score_metrics == SCORE_METRICS:
        return None
    return (
        f"This study's own score (cv_score, which its search and pruning maximised) is the "
        f"mean of {', '.join(results.score_metrics)}; this report ranks by its own score."
    )


def markdown_report(
    results: Results, level: str, epoch: str, tables, folds, best: str, figures, notes, words=()
) -> str:
    parts = [
        f"# Study report: {results.name}\n",
        f"Results: `{results.path.resolve()}`. Level: {LEVELS[level]}. Epoch: {EPOCHS[epoch]}. "
        "Score: the mean of pixel, pattern and intensity accuracy (at patch level and the "
        "final epoch, the study's cv_score). Std: sample std over folds (ddof=1).\n",
    ]
    if level != "patch":
        parts.append(NO_VOTED_PIXELS + "\n")
    if score_note(results):
        parts.append(score_note(results) + "\n")
    parts += [best + "\n", *(w + "\n" for w in words)]
    parts += [*(markdown_table(t) for t in tables), "## Per fold\n"]
    parts += [markdown_table(t) for t in folds] or ["No completed configuration.\n"]
    parts.append("## Figures\n")
    for section, paths in figures.items():
        parts.append(f"### {section.capitalize()}\n")
        parts += [f"![{p.stem}]({p.name})\n" for p in paths]
        if section == "optuna":  # the only figures that may be missing for a reason
            parts += [f"- {note}\n" for note in notes]
        if not paths and not (section == "optuna" and notes):
            parts.append("None drawn.\n")
    return "\n".join(parts)


def write_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    level: str = "patch",
    epoch: str = "final",
    compare_original: bool = False,
    console: Console | None = None,
    rope: float = DEFAULT_ROPE,
) -> list[Path]:
    """Print the report's tables and write report.md, one CSV per table and the PNGs into
    `out` (default: the results folder). Other levels or epochs than patch/final get a
    suffix (report-patient-best.md), so they sit beside the default report instead of
    replacing it. Returns the files written."""
    level_metrics(level)  # a wrong level or epoch fails before anything is written
    if epoch not in EPOCHS:
        raise ValueError(f"unknown epoch {epoch!r}; expected one of {', '.join(EPOCHS)}")
    results = load_results(results_dir)
    out = Path(out) if out is not None else results.path
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (level, epoch) == ("patch", "final") else f"-{level}-{epoch}"
    built = build_tables(results, level, epoch, compare_original, rope)
    tables, folds, summary = built.tables, built.folds, built.summary
    labels = configuration_labels(results.trials, results.keys)
    if len(summary):
        best_id = summary.index[0]
        best = (
            f"best configuration: {labels[best_id]} "
            f"(score {summary.score.iloc[0]:.3f} = mean of the three accuracies)"
        )
    else:
        best = "no completed configuration"
    figures, notes = draw_figures(results, out, level, epoch, built, suffix)
    words = [*built.sentences, *test_notes(results)]

    written = [p for paths in figures.values() for p in paths]
    for table in [*tables, *folds]:
        path = out / f"{table.name}{suffix}.csv"
        table.numbers.to_csv(path, index=table.numbers.index.name is not None)
        written.append(path)
    report = out / f"report{suffix}.md"
    report.write_text(
        markdown_report(results, level, epoch, tables, folds, best, figures, notes, words)
    )
    written.append(report)

    # On the screen, the per-fold detail first and the conclusions last, where a user looks.
    console = console or Console()
    for table in folds[:CONSOLE_FOLD_TABLES]:
        console.print(rich_table(table))
    if len(folds) > CONSOLE_FOLD_TABLES:
        console.print(f"({len(folds) - CONSOLE_FOLD_TABLES} more per-fold tables in {report})")
    on_screen = [screen_view(t) for t in tables[1:] if t.name != "differences"]
    if tables and len(built.stats) and len(summary) > SCREEN_COLUMNS:
        # Too many configurations side by side for a terminal: ranked, one per row.
        title = tables[0].title.split(";")[0] + "; ranked by score (mean ± std over folds)"
        on_screen.append(ranking_report_table(summary, built.stats, labels, title))
    else:
        on_screen += tables[:1]
    for table in on_screen:
        console.print(rich_table(table))
    for note in (NO_VOTED_PIXELS if level != "patch" else None, score_note(results), *words):
        if note:
            console.print(escape(note))
    console.print(f"[bold]{escape(best)}[/]")
    for note in notes:
        console.print(f"note: {escape(note)}")
    console.print(f"report: {report}")
    return written


def screen_view(table: ReportTable) -> ReportTable:
    """What the terminal shows of a table: the test table's main rows (report.md has all)."""
    if table.name != "test":
        return table
    keep = table.numbers.metric.isin(SCREEN_TEST_METRICS).to_numpy()
    return dataclasses.replace(table, cells=table.cells[keep])


def test_notes(results: Results) -> list[str]:
    """What the test set says about the chosen configuration, or why there is none."""
    if results.test is not None and len(results.test):
        return [optimism_sentence(results.test)]
    if not results.held_out:
        return [
            "This study held no patients out of its folds (test_patients=0; the paper preset "
            "does so, as the original used every patient): its best cross-validated score "
            "chose the best configuration and is biased upwards by that choice; no unbiased "
            "estimate of it exists. Use --test-patients 0.2 for one."
        ]
    return ["The study holds patients out, but has no test estimate yet (test.parquet)."]


# ---- Command line. ----


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.report",
        description="Tables and figures of a finished study: per-fold tables, the "
        "configuration comparison, confusion matrices, training curves; printed, and written "
        "as report.md, CSV and PNG.",
    )
    parser.add_argument("results", help="the study's folder, RESULTS/NAME")
    parser.add_argument("--out", help="where to write (default: the study's folder)")
    parser.add_argument(
        "--level",
        default="patch",
        choices=list(LEVELS),
        help="accuracies of patches, or majority votes per image or patient",
    )
    parser.add_argument(
        "--epoch",
        default="final",
        choices=list(EPOCHS),
        help="each fold's last epoch, or its best (retrospective, optimistic)",
    )
    parser.add_argument(
        "--compare-original",
        action="store_true",
        help="add the original study's six configurations and our differences",
    )
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only; Optuna's figures go through pyplot
    args = parse_args(argv)
    console = Console()
    try:
        write_report(args.results, args.out, args.level, args.epoch, args.compare_original, console)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
