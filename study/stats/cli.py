"""`python -m study.stats PATH [--metric M ...] [--rope R] [--folds K] [--out OUT.csv]`:
the fold-paired statistics of a study folder or of any per-fold table, printed and written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    compare_to_best,
    summary_sentence,
    validate_per_fold,
    write_stats,
    write_table,
)
from study.summary import study_per_fold


def read_per_fold(path: str | Path) -> tuple[pd.DataFrame, int | None, Path | None]:
    """(per_fold, folds_per_repeat or None, study folder or None) from PATH.

    PATH is a per-fold table (CSV, or Parquet by its .parquet suffix: columns trial_id, fold,
    optionally repeat, one numeric column per metric) or a study folder holding
    epochs.parquet and trials.parquet (then `study_per_fold` of them, and folds_per_repeat
    from study.json's train.num_folds when there is a study.json). Raises ValueError with a
    one-line message on anything it cannot use.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    folds, folder = None, None
    if path.is_dir():
        folder = path
        missing = [f for f in ("epochs.parquet", "trials.parquet") if not (path / f).is_file()]
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
    try:
        return validate_per_fold(per_fold), folds, folder
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
trial of each metric (highest mean over folds), fold by fold on the folds they share, by the
corrected resampled t-test (Nadeau & Bengio 2003; repeated k-fold: Bouckaert & Frank 2004)
and the Bayesian correlated t-test (Corani & Benavoli 2015; Benavoli et al. 2017).

PATH is a study folder (holding epochs.parquet and trials.parquet: the completed trials'
validation folds at their last epoch; k from study.json), or a per-fold table, CSV or
.parquet, with columns trial_id, fold, optionally repeat, and one numeric column per metric.
"""
EPILOG = """\
verdicts: "worse": P(worse by more than the rope) >= 0.95; "equivalent": P(the difference
lies within +-rope) >= 0.95; "undecided": neither, the folds cannot tell (also with fewer than
2 shared folds). p is the corrected t-test's two-sided p-value of "no difference"; the 95%
interval is that of the mean difference (trial - best).

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
        help="a metric column to compare (repeatable; default every numeric column)",
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
        "(default study.json's num_folds, else the number of distinct folds)",
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
        per_fold, folds, folder = read_per_fold(args.path)
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
    """Per metric: the summary sentence, then one row per trial."""
    # Not a terminal (a pipe, a test): wide enough that the intervals do not wrap.
    console = console or Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 140)
    for metric in pd.unique(stats.metric):
        rows = stats[stats.metric == metric]
        console.print(escape(summary_sentence(stats, metric, rope=rope)), soft_wrap=True)
        table = Table(title=escape(metric), box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("trial", "folds", "mean ± std", "diff vs best", "95% interval", "p"):
            table.add_column(name, justify="left" if name == "trial" else "right")
        for name in ("P(worse)", "P(rope)", "P(better)", "verdict"):
            table.add_column(name, justify="left" if name == "verdict" else "right")
        for row in rows.itertuples():
            table.add_row(
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
            )
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
