"""The long epoch table shared by `python -m mtl.train` and the study, and atomic Parquet."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mtl.schema import ID_COLUMNS, EpochMetrics


def epoch_frame(trial_id: str, fold: str, epochs: Iterable[EpochMetrics]) -> pd.DataFrame:
    """One row per (epoch, split) of one fold: the layout of epochs.parquet."""
    rows = [{"trial_id": trial_id, "fold": fold, **row} for m in epochs for row in m.rows()]
    return order_columns(pd.DataFrame(rows))


def order_columns(frame: pd.DataFrame, order: Iterable[str] = ()) -> pd.DataFrame:
    """Identifying columns first, then `order`, then the rest as they come."""
    first = [c for c in (*ID_COLUMNS, *order) if c in frame]
    return frame[list(dict.fromkeys(first + list(frame.columns)))]


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV atomically, as write_parquet does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
