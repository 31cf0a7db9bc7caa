"""The study report: per-fold tables, the configuration comparison, the original study side by
side, and the figures; printed with rich, written as report.md, one CSV per table and PNGs.

    python -m study.report RESULTS/NAME [--out DIR] [--level patch|image|patient]
                                        [--epoch final|best] [--compare-original]
                                        [--no-figures]

The tables follow the original study's figures: Fig. 4 (one table per configuration:
metrics x folds A-E and mean +- std) and Fig. 16 (metrics x configurations). The numbers
come from pure pandas functions (`select_epochs`, `fold_table`, `summarise`,
`stopped_trials`, `compare_with_original`); formatting and rendering come after them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape

from mtl import PATTERNS, SCORE_METRICS, add_version_option
from study.report.render import (
    SCREEN_COLUMNS,
    ReportTable,
    budget_report_table,
    comparison_report_table,
    fold_report_table,
    gain_report_table,
    markdown_table,
    original_report_table,
    ranking_report_table,
    recall_report_table,
    rich_table,
    screen_view,
    statistics_report_table,
    stopped_report_table,
    test_report_table,
)
from study.report.summary import (
    Results,
    balancer_budgets,
    baseline_trials,
    compare_with_original,
    configuration_labels,
    fold_statistics,
    fold_table,
    front_sentence,
    gain_sentence,
    load_optuna_study,
    load_results,
    optimism_sentence,
    original_conclusions_sentence,
    original_results,
    stopped_trials,
    summarise,
    task_fronts,
    task_gains,
    warm_start_sentence,
)
from study.stats import DEFAULT_ROPE, best_choice_sentence, summary_sentence
from study.stats.budget import budget_sentence
from study.stats.selection import (
    EPOCH_CHOICES,
    LEVELS,
    NO_VOTED_PIXELS,
    level_column,
    level_metrics,
    row_titles,
    select_epochs,
)

CONFUSION_FIGURES = 3  # confusion matrices for this many of the best configurations
# Training curves for at most this many trials, the completed ones best first: a figure per
# trial (0.7 s each here) would make a 1,000-trial study's report take 12 minutes.
CURVE_FIGURES = 16
CONSOLE_FOLD_TABLES = 6  # per-fold tables printed; report.md has all of them
# What a study with one tuning budget per balancer compares the balancers with: tuned fixed
# weights (Kurin et al. 2022; Xin et al. 2022).
REFERENCE_BALANCER = "fixed"


@dataclass(frozen=True)
class Built:
    tables: list[ReportTable]  # comparison first, then the others
    folds: list[ReportTable]  # one per completed configuration
    summary: pd.DataFrame  # completed trials, best score first
    front: pd.DataFrame | None  # study.stats.front.task_front of the multi-task trials
    stats: pd.DataFrame  # study.stats.compare_to_best of the completed trials
    sentences: list[str]  # what the statistics say, in words
    selected: pd.DataFrame  # one validation row per (trial, fold): what the tables use


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
    # The single-task baselines have no score (the mean of three tasks' metrics): they are
    # compared in the Δm table, not in the score's.
    done = done[~done.isin(baseline_trials(trials).values())]
    summary = summarise(selected[selected.trial_id.isin(done)], level)
    stats = fold_statistics(results, selected, done, level, rope)
    titles = row_titles(level)
    sentences = []
    for metric in ("score", level_column("pattern_acc", level)):
        if len(stats) and metric in set(stats.metric):
            title = "score" if metric == "score" else titles[metric]
            sentences.append(summary_sentence(stats, metric, title))
            # Where the highest mean lacks a hard fold, the best is another: say why.
            sentences.append(best_choice_sentence(stats, metric, title, labels))
    sentences.append(warm_start_sentence(stats, trials, labels, results.warm_start))
    sentences.append(original_conclusions_sentence(stats, trials, labels, level))
    gains = task_gains(results, selected, level, rope)
    if gains is not None:
        sentences.append(gain_sentence(gains, labels, rope))
    front = task_fronts(results, selected, level, rope)
    if front is not None:
        sentences.append(front_sentence(front, labels, rope))
    budgets = balancer_budgets(results, selected, REFERENCE_BALANCER, rope)
    if budgets is not None:
        sentences.append(
            budget_sentence(budgets, REFERENCE_BALANCER, results.trials_per_balancer, rope)
        )
    sentences = [s for s in sentences if s]
    where = f"validation, {LEVELS[level]}, {EPOCH_CHOICES[epoch]}"
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
    if gains is not None:
        title = (
            f"{results.name}: each configuration against the single-task baselines ({where}): "
            "Δm and each task's relative difference, mean over folds [95% interval] and "
            f"verdict, paired by fold (rope ±{rope:g})"
        )
        tables.append(gain_report_table(gains, labels, title))
    if budgets is not None:
        title = (
            f"{results.name}: each balancer's best trial against tuned {REFERENCE_BALANCER} "
            f"weights' best, one tuning budget for all ({where}): the score's paired "
            f"difference, 95% interval and verdict (rope ±{rope:g}); each best is chosen on "
            "the folds it is judged on, a bias alike for all"
        )
        tables.append(budget_report_table(budgets, labels, title))
    recall = recall_report_table(
        selected,
        list(summary.index),
        labels,
        f"{results.name}: recall of each pattern, validation, patch level, {EPOCH_CHOICES[epoch]}; "
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
            f"{EPOCH_CHOICES[epoch]}; means over folds; matched on seg loss, epochs and alpha"
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
    return Built(tables, folds, summary, front, stats, sentences, selected)


def draw_figures(
    results: Results,
    out: Path,
    level: str,
    epoch: str,
    built: Built,
    suffix: str,
    optuna,
    optuna_notes: list[str],
) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    """Every PNG of the report, by section, and notes by section on what was not drawn.
    `optuna`, `optuna_notes`: optuna_study(results)."""
    from study.report import plots  # matplotlib: only where figures are drawn

    summary = built.summary
    labels = configuration_labels(results.trials, results.keys)
    epochs = results.epochs
    figures: dict[str, list[Path]] = {"training curves": [], "task weights": []}
    notes: dict[str, list[str]] = {}
    trained = labels.index[labels.index.isin(epochs.trial_id)]
    if len(trained) > CURVE_FIGURES:
        completed = summary.index[summary.index.isin(trained)]  # best first
        ranked = [*completed, *trained.difference(completed, sort=False)]
        notes["training curves"] = [
            f"the curves of {CURVE_FIGURES} of the {len(trained)} trials: the completed ones "
            "best first by score, then the others; every trial's epochs are in epochs.parquet"
        ]
        trained = trained[trained.isin(ranked[:CURVE_FIGURES])]  # in the labels' order
    for trial_id in trained:
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
                f"{EPOCH_CHOICES[epoch]}; colour: verdict against the best",
                out / f"intervals{suffix}.png",
            )
        )  # fmt: skip
    if built.front is not None:
        figures["comparison"].append(
            plots.task_front(
                built.front, labels,
                f"{results.name}: the configurations on each pair of tasks, {LEVELS[level]}, "
                f"{EPOCH_CHOICES[epoch]}; means and 95% intervals; blue: on the front of "
                "all tasks, light grey: established dominated",
                out / f"front{suffix}.png",
            )
        )  # fmt: skip
    if len(summary) and f"recall_{PATTERNS[0]}" in selected:
        shown = labels[summary.index[: CONFUSION_FIGURES * 2]]
        figures["comparison"].append(
            plots.pattern_recall(
                selected, shown,
                f"{results.name}: recall of each pattern (validation, patch level, "
                f"{EPOCH_CHOICES[epoch]}); bars: mean over folds, lines: min to max",
                out / f"recall{suffix}.png",
            )
        )  # fmt: skip
    cells = results.confusions[results.confusions.split == "val"].merge(
        selected[["trial_id", "fold", "epoch"]], on=["trial_id", "fold", "epoch"]
    )
    figures["confusion matrices"] = [
        plots.confusion_matrices(
            cells[cells.trial_id == trial_id],
            f"{labels[trial_id]}: validation confusion, summed over "
            f"{int(summary.at[trial_id, 'folds'])} folds, {EPOCH_CHOICES[epoch]}",
            out / f"confusion_{trial_id}{suffix}.png",
        )
        for trial_id in summary.index[:CONFUSION_FIGURES]
    ]
    figures["optuna"], notes["optuna"] = [], optuna_notes
    if optuna is not None:
        figures["optuna"], notes["optuna"] = plots.optuna_figures(optuna, out)
    return figures, notes


def optuna_study(results: Results):
    """The study's Optuna study, or None and the reason there is none."""
    try:
        study = load_optuna_study(results.path)
    except ValueError as error:
        return None, [str(error)]
    if study is None:
        return None, ["no Optuna study (optuna.db or optuna.journal) in the results folder"]
    return study, []


def repeated_proposals(study) -> list[str]:
    """A note on the proposals Optuna made of configurations already trained: none was
    trained again (study.search), each was told its original's result."""
    from study.results.tables import REPEATS

    repeats = [t for t in study.trials if REPEATS in t.user_attrs] if study else []
    if not repeats:
        return []
    originals = sorted({t.user_attrs[REPEATS] for t in repeats})
    return [
        f"Optuna proposed {len(repeats)} configuration(s) already trained (those of trials "
        f"{', '.join(originals)}); none was trained again: each was told the earlier "
        "trial's result (optuna.db, user attribute repeats_tune_trial)"
    ]


def best_trial(built: Built) -> str:
    """The statistics' best score (compared on shared folds, see study.stats.choose_best),
    else the highest mean score."""
    stats = built.stats
    if len(stats):
        best = stats[(stats.metric == "score") & stats.is_best.astype(bool)]
        if len(best) and best.trial_id.iloc[0] in built.summary.index:
            return best.trial_id.iloc[0]
    return built.summary.index[0]


def score_note(results: Results) -> str | None:
    """A note when the study optimised another score than the one this report ranks by."""
    if results.score_metrics == SCORE_METRICS:
        return None
    return (
        f"This study's own score (cv_score, which its search and pruning maximised) is the "
        f"mean of {', '.join(results.score_metrics)}; this report ranks by its own score."
    )


def markdown_report(
    results: Results,
    level: str,
    epoch: str,
    tables,
    folds,
    best: str,
    figures: dict[str, list[Path]] | None,
    notes,
    words=(),
) -> str:
    """report.md; `figures` None: the figures were not drawn (--no-figures)."""
    parts = [
        f"# Study report: {results.name}\n",
        f"Results: `{results.path.resolve()}`. Level: {LEVELS[level]}. "
        f"Epoch: {EPOCH_CHOICES[epoch]}. "
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
    if figures is None:
        parts.append(figures_not_drawn(results) + "\n")
    for section, paths in (figures or {}).items():
        parts.append(f"### {section.capitalize()}\n")
        parts += [f"![{p.stem}]({p.name})\n" for p in paths]
        parts += [f"- {note}\n" for note in notes.get(section, [])]
        if not paths and not notes.get(section):
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
    figures: bool = True,
) -> list[Path]:
    """Print the report's tables and write report.md, one CSV per table and the PNGs into
    `out` (default: the results folder). Other levels or epochs than patch/final get a
    suffix (report-patient-best.md), so they sit beside the default report instead of
    replacing it. `figures` False: tables and report.md only, no PNGs (and no matplotlib),
    seconds less per study; `python -m study.report` draws them later. Returns the files
    written."""
    level_metrics(level)  # a wrong level or epoch fails before anything is written
    if epoch not in EPOCH_CHOICES:
        raise ValueError(f"unknown epoch {epoch!r}; expected one of {', '.join(EPOCH_CHOICES)}")
    results = load_results(results_dir)
    out = Path(out) if out is not None else results.path
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (level, epoch) == ("patch", "final") else f"-{level}-{epoch}"
    built = build_tables(results, level, epoch, compare_original, rope)
    tables, folds, summary = built.tables, built.folds, built.summary
    labels = configuration_labels(results.trials, results.keys)
    if len(summary):
        best_id = best_trial(built)
        best = (
            f"best configuration: {labels[best_id]} "
            f"(score {summary.score[best_id]:.3f} = mean of the three accuracies)"
        )
    else:
        best = "no completed configuration"
    optuna, optuna_notes = optuna_study(results)
    words = [*built.sentences, *repeated_proposals(optuna), *test_notes(results)]
    drawn, notes = None, {}  # None: not drawn (--no-figures)
    if figures:
        drawn, notes = draw_figures(results, out, level, epoch, built, suffix, optuna, optuna_notes)

    written = [p for paths in (drawn or {}).values() for p in paths]
    for table in [*tables, *folds]:
        path = out / f"{table.name}{suffix}.csv"
        table.numbers.to_csv(path, index=table.numbers.index.name is not None)
        written.append(path)
    report = out / f"report{suffix}.md"
    report.write_text(
        markdown_report(results, level, epoch, tables, folds, best, drawn, notes, words)
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
    for note in (note for section in notes.values() for note in section):
        console.print(f"note: {escape(note)}")
    if drawn is None:
        console.print(f"note: {escape(figures_not_drawn(results))}", soft_wrap=True)
    console.print(f"report: {report}")
    return written


def figures_not_drawn(results: Results) -> str:
    return f"Figures not drawn (--no-figures): `python -m study.report {results.path}` draws them"


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
        choices=list(EPOCH_CHOICES),
        help="each fold's last epoch, or its best (retrospective, optimistic)",
    )
    parser.add_argument(
        "--compare-original",
        action="store_true",
        help="add the original study's six configurations and our differences",
    )
    parser.add_argument(
        "--no-figures",
        action="store_true",
        help="tables, CSVs and report.md only: no PNGs (seconds less for a large study)",
    )
    add_version_option(parser)
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_figures:
        import matplotlib

        matplotlib.use("Agg")  # files only; Optuna's figures go through pyplot
    console = Console()
    try:
        write_report(
            args.results, args.out, args.level, args.epoch, args.compare_original, console,
            figures=not args.no_figures,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
