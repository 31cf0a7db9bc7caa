"""`python -m study.stats PATH [--metric M ...] [--rope R] [--folds K] [--out OUT.csv]`:
the fold-paired statistics of a study folder or of any per-fold table, printed and written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtl import add_version_option
from study.stats import (
    DEFAULT_ROPE,
    best_choice_sentence,
    compare_to_best,
    fold_marks,
    summary_sentence,
    validate_per_fold,
    write_stats,
    write_table,
)
from study.stats.selection import study_per_fold


def read_per_fold(
    path: str | Path, metrics: list[str] | None = None
) -> tuple[pd.DataFrame, int | None, Path | None]:
    """(per_fold, folds_per_repeat or None, study folder or None) from PATH.

    PATH is a per-fold table (CSV, or Parquet by its .parquet suffix: columns trial_id, fold,
    optionally repeat, one numeric column per metric) or a study folder holding
    epochs.parquet and trials.parquet (then `study_per_fold` of them, and folds_per_repeat
    from study.json's train.num_folds when there is a study.json). metrics: the columns to
    compare, checked here (default every metric column: see `validate_per_fold`). Raises
    ValueError with a one-line message on anything it cannot use; a bad row of a CSV is
    named by its line in the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    folds, folder, row_names = None, None, None
    if path.is_dir():
        folder = path
        missing = [f for f in ("epochs.parquet", "trials.parquet") if not (path / f).exists()]
        if missing:
            raise ValueError(
                f"{path} is a folder without {' and '.join(missing)}: not a study folder"
            )
        epochs, trials = (_read_table(path / f) for f in ("epochs.parquet", "trials.parquet"))
        try:
            per_fold = study_per_fold(epochs, trials)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        folds = _num_folds(path / "study.json")
        if per_fold.empty:
            raise ValueError(f"{path}: no completed trial with a validation epoch")
    else:
        per_fold = _read_table(path)
        if path.suffix.lower() != ".parquet":
            row_names = _csv_lines(path, len(per_fold))
    try:
        return validate_per_fold(per_fold, metrics, row_names=row_names), folds, folder
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the per-fold table is empty") from None
    except Exception as error:  # parsers raise many kinds; the user needs one line
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{path}: cannot read it: {message}") from None


def _csv_lines(path: Path, rows: int) -> list[str] | None:
    """Each data row's line in the file, "line 7", as an editor shows it (the header is the
    first line that is not blank; blank lines are skipped, as pandas does); None where the
    lines and the rows do not match one to one (a quoted cell over several lines)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [i + 1 for i, line in enumerate(re.split(r"\r\n|\r|\n", text)) if line.strip()]
    return [f"line {n}" for n in lines[1:]] if len(lines) - 1 == rows else None


def _num_folds(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it: {' '.join(str(error).split())}") from None
    train = config.get("train") if isinstance(config, dict) else None
    folds = train.get("num_folds") if isinstance(train, dict) else None
    if folds is None:
        return None
    if isinstance(folds, bool) or not isinstance(folds, int):
        raise ValueError(f"{path}: train.num_folds must be an integer, got {folds!r}")
    return folds


# --- command line -----------------------------------------------------------------------

DESCRIPTION = """\
Which differences between configurations are real. Every trial is compared with the best
trial of each metric, fold by fold on the folds they share, by the corrected resampled
t-test (Nadeau & Bengio 2003; repeated k-fold: Bouckaert & Frank 2004) and the Bayesian
correlated t-test (Corani & Benavoli 2015; Benavoli et al. 2017). The best starts as the
highest mean over a trial's own folds; a trial established better than it on the folds they
share (one that has a hard fold the other lacks) takes its place. A trial that lacks folds
is marked "4/5 folds".

PATH is a study folder (holding epochs.parquet and trials.parquet: the completed trials'
validation folds at their last epoch; k from study.json), or a per-fold table, CSV or
.parquet, with columns trial_id, fold, optionally repeat (k is then the number of folds
within a repeat: fold labels may start again in each repeat or run on across them), and one
numeric column per metric. Every row needs a trial_id and a fold (and a repeat). Every
column that holds numbers is a metric, except integer columns (counts such as a test-set
size n: compared only when --metric names them) and columns of text only (labels); an
empty cell is a missing value, text or an infinity in a metric column is an error.
"""
EPILOG = """\
verdicts: "worse": P(worse by more than the rope) >= 0.95; "equivalent": P(the difference
lies within +-rope) >= 0.95; "better": P(better by more than the rope) >= 0.95, on the folds
shared with the best: the best is chosen so that none is, unless being better goes round in
a circle between trials that lack different folds; "undecided": none of these, the folds
cannot tell (also with fewer than 2 shared folds). p is the corrected t-test's two-sided
p-value of "no difference"; the 95% interval is that of the mean difference (trial - best).

A study folder gets stats.parquet and stats.csv unless --out is given.
"""


class _UsageError(Exception):
    """An argparse error, reported as one line like every other bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m study.stats",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="a study folder or a per-fold CSV/Parquet")
    parser.add_argument(
        "--metric",
        action="append",
        metavar="M",
        help="a numeric column to compare, integer ones included (repeatable; default every "
        "column of numbers that are not integers)",
    )
    parser.add_argument(
        "--rope",
        type=float,
        default=DEFAULT_ROPE,
        metavar="R",
        help=f"half-width of the region of practical equivalence (default {DEFAULT_ROPE})",
    )
    parser.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="folds per repeat, for the correction 1/(K-1) "
        "(default study.json's num_folds, else the number of distinct folds within a "
        "repeat)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="OUT",
        help="write the statistics here (CSV; a .parquet suffix writes Parquet)",
    )
    add_version_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if not args.rope >= 0 or math.isinf(args.rope):
            raise ValueError(f"--rope must be a finite number >= 0, got {args.rope}")
        per_fold, folds, folder = read_per_fold(args.path, args.metric)
        stats = compare_to_best(
            per_fold,
            args.metric,
            folds_per_repeat=args.folds if args.folds is not None else folds,
            rope=args.rope,
        )
        if stats.empty:
            raise ValueError(f"{args.path}: no metric has a finite value")
        print_stats(stats, rope=args.rope)
        if args.out is not None:
            write_table(stats, args.out)
            written = [args.out]
        else:
            written = write_stats(stats, folder) if folder is not None else []
    except (_UsageError, ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def print_stats(
    stats: pd.DataFrame, rope: float | None = None, console: Console | None = None
) -> None:
    """Per metric: the summary sentence (and why the best is not the highest mean, where it
    is not), then one row per trial; a column `incomplete` marks trials that lack folds."""
    # Not a terminal (a pipe, a test): wide enough that the intervals do not wrap.
    console = console or Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 140)
    marks = fold_marks(stats)
    for metric in pd.unique(stats.metric):
        rows = stats[stats.metric == metric]
        console.print(escape(summary_sentence(stats, metric, rope=rope)), soft_wrap=True)
        choice = best_choice_sentence(stats, metric)
        if choice:
            console.print(escape(choice), soft_wrap=True)
        incomplete = marks[rows.index].str.len().any()
        table = Table(title=escape(metric), box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("trial", "folds", "mean ± std", "diff vs best", "95% interval", "p"):
            table.add_column(name, justify="left" if name == "trial" else "right")
        for name in ("P(worse)", "P(rope)", "P(better)", "verdict"):
            table.add_column(name, justify="left" if name == "verdict" else "right")
        if incomplete:
            table.add_column("incomplete", justify="left")
        for row in rows.itertuples():
            cells = [
                escape(row.trial_id),
                str(row.n_folds),
                f"{_num(row.mean)} ± {_num(row.std)}",
                _num(row.diff_vs_best, signed=True),
                f"[{_num(row.ci_low, signed=True)}, {_num(row.ci_high, signed=True)}]",
                _p(row.p_value),
                _p(row.p_worse),
                _p(row.p_rope),
                _p(row.p_better),
                f"[bold]{row.verdict}[/bold]" if row.is_best else row.verdict,
            ]
            table.add_row(*cells, *([marks[row.Index]] if incomplete else []))
        console.print(table)


def _num(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "<0.001" if 0 < value < 0.001 else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
