"""The report's tables as text: numbers for the CSV, cells for the screen and Markdown, and
the two renderers (rich and GitHub-flavoured Markdown). No numbers are computed here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
from rich import box
from rich.markup import escape
from rich.table import Table

from mtl import PATTERNS, SCORE_METRICS
from study.report.summary import METRIC_TITLES, summary_columns
from study.stats import fold_marks
from study.stats.selection import level_metrics, row_titles

SCREEN_COLUMNS = 3  # configurations side by side on a terminal; more are ranked in rows
SCREEN_TEST_METRICS = ("score", "pixel_acc", "pattern_acc", "intensity_acc",
                       "patient_pattern_acc", "patient_intensity_acc")  # fmt: skip


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
        # and the verdict (study.stats), under the means; and which configurations lack folds.
        score = stats[stats.metric == "score"].assign(incomplete=fold_marks(stats))
        score = score.set_index("trial_id").loc[summary.index]
        differences = [
            ("best", "", r.verdict)
            if r.is_best
            else (signed(r.diff_vs_best), interval(r.ci_low, r.ci_high), r.verdict)
            for r in score.itertuples()
        ]
        extra = pd.DataFrame(
            list(zip(*differences, strict=True)),
            index=["score − best", "95% interval", "verdict"],
            columns=columns,
        )
        if score.incomplete.str.len().any():
            extra.loc["incomplete"] = score.incomplete.to_numpy()
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
    score = stats[stats.metric == "score"]
    incomplete = fold_marks(stats)[score.index].set_axis(score.trial_id).loc[summary.index]
    score = score.set_index("trial_id").loc[summary.index]
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
    if incomplete.str.len().any():  # a trial that lacks folds: its mean may flatter it
        cells["incomplete"] = incomplete.to_numpy()
    return ReportTable("ranking", title, score, cells, text_columns=("verdict", "incomplete"))


def statistics_report_table(
    stats: pd.DataFrame, labels: pd.Series, level: str, title: str
) -> ReportTable:
    """Every configuration against the best, metric by metric (report.md and stats.csv); a
    column `incomplete` where a configuration or the best it is compared with lacks folds."""
    titles = row_titles(level)
    rows = stats[~stats.is_best]
    incomplete = _incomplete(stats)[rows.index]
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
    if incomplete.str.len().any():
        cells["incomplete"] = incomplete.to_numpy()
    return ReportTable(
        "differences", title, stats, cells, text_columns=("metric", "verdict", "incomplete")
    )


def _incomplete(stats: pd.DataFrame) -> pd.Series:
    """Per row: "4/5 folds" where the configuration lacks folds, "best 4/5 folds" where the
    best it is compared with does (the table leaves the best's own rows out), both joined by
    "; ", else ""."""
    marks = fold_marks(stats)
    best = stats.is_best.astype(bool)
    best_marks = stats.metric.map(dict(zip(stats.metric[best], marks[best], strict=True)))
    return pd.Series(
        [
            "; ".join(filter(None, [mark, f"best {of_best}" if of_best and not is_best else ""]))
            for mark, of_best, is_best in zip(marks, best_marks.fillna(""), best, strict=True)
        ],
        index=stats.index,
        dtype=str,
    )


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


def screen_view(table: ReportTable) -> ReportTable:
    """What the terminal shows of a table: the test table's main rows (report.md has all)."""
    if table.name != "test":
        return table
    keep = table.numbers.metric.isin(SCREEN_TEST_METRICS).to_numpy()
    return dataclasses.replace(table, cells=table.cells[keep])


def gain_report_table(gains: pd.DataFrame, labels: pd.Series, title: str) -> ReportTable:
    """One row per multi-task configuration: Δm and each task's relative difference to its
    single-task baseline, each as mean [95% interval] and verdict (study.stats.gain)."""
    terms = list(dict.fromkeys(gains.term))
    metric = dict(zip(gains.term, gains.metric, strict=True))
    rows = {}
    for trial_id, rows_of in gains.groupby("trial_id", sort=False):
        by_term = rows_of.set_index("term")
        rows[labels.get(trial_id, trial_id)] = [
            _gain_cell(by_term.loc[t]) for t in terms
        ]  # fmt: skip
    columns = ["Δm" if t == "delta_m" else f"{t} ({metric[t]})" for t in terms]
    cells = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    cells.index.name = "configuration"
    return ReportTable("gains", title, gains, cells)


def _gain_cell(row: pd.Series) -> str:
    """'+3.0% [-6.2%, +12.2%] undecided'; the interval left out where too few folds have a
    value (a baseline's metric of 0 leaves a relative difference undefined)."""
    if pd.isna(row["mean"]):
        return "-"
    interval = f" [{row.ci_low:+.1%}, {row.ci_high:+.1%}]" if pd.notna(row.ci_low) else ""
    return f"{row['mean']:+.1%}{interval} {row.verdict}"


def budget_report_table(table: pd.DataFrame, labels: pd.Series, title: str) -> ReportTable:
    """One row per balancer: its trials, its best trial and that trial's score, and the
    paired difference to the reference's best with its 95% interval and verdict
    (study.stats.budget)."""
    rows = {}
    for row in table.itertuples():
        interval = (
            f"{row.diff_vs_reference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
            if pd.notna(row.ci_low)
            else "-"
        )
        rows[row.balancer] = [str(row.trials), labels.get(row.trial_id, row.trial_id),
                              number(row.mean), interval, row.verdict]  # fmt: skip
    columns = ["trials", "best trial", "score", "diff to the reference [95% CI]", "verdict"]
    cells = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    cells.index.name = "balancer"
    return ReportTable("balancers", title, table, cells, text_columns=("best trial", "verdict"))
