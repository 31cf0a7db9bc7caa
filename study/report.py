"""The comparison table: configurations x accuracies, mean +- std over folds."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from study.presets import StudyConfig
from study.results import SCORE_METRICS

METRIC_TITLES = {
    "pixel_acc": "pixel acc",
    "pattern_acc": "pattern acc",
    "intensity_acc": "intensity acc",
}


def configuration_label(row: pd.Series, keys) -> str:
    return ", ".join(f"{key}={row[key]}" for key in keys) or "base"


def comparison_table(trials: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    """One row per trial, best cross-validated score first."""
    table = trials.copy()
    table.insert(
        0, "configuration", [configuration_label(r, study.grid) for _, r in trials.iterrows()]
    )
    if "cv_score" not in table:
        table["cv_score"] = float("nan")
    return table.sort_values("cv_score", ascending=False, na_position="last", ignore_index=True)


def print_comparison(console: Console, table: pd.DataFrame, study: StudyConfig) -> None:
    folds = int(table.cv_folds.max()) if "cv_folds" in table and table.cv_folds.notna().any() else 0
    rich_table = Table(
        title=f"{study.name}: validation at the last epoch, mean ± std over {folds} folds",
        box=box.SIMPLE_HEAD,
    )
    keys = list(study.grid) or ["configuration"]
    for key in keys:
        rich_table.add_column(key)
    for metric in SCORE_METRICS:
        rich_table.add_column(METRIC_TITLES[metric], justify="right")
    rich_table.add_column("score", justify="right")
    rich_table.add_column("status")
    best = {m: table[f"cv_{m}"].max() for m in SCORE_METRICS if f"cv_{m}" in table}
    for _, row in table.iterrows():
        cells = [str(row[key]) for key in keys]
        for metric in SCORE_METRICS:
            mean, std = row.get(f"cv_{metric}"), row.get(f"cv_{metric}_std")
            text = "-" if pd.isna(mean) else f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}"
            cells.append(f"[bold green]{text}[/]" if mean == best.get(metric) else text)
        cells.append("-" if pd.isna(row.cv_score) else f"{row.cv_score:.3f}")
        rich_table.add_row(*cells, row.status)
    console.print(rich_table)
    if not table.empty and not pd.isna(table.cv_score.iloc[0]):
        best_row = table.iloc[0]
        console.print(
            f"best configuration: [bold]{best_row.configuration}[/] "
            f"(score {best_row.cv_score:.3f} = mean of the three accuracies)"
        )
