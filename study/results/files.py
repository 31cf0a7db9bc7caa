"""The study's tables on disk, and reading them back typed.

epochs, trials and confusions are each a Parquet dataset: RESULTS/NAME/epochs.parquet is a
folder of files of one schema (mtl.tables), which pandas, pyarrow, DuckDB and polars read as
one table (`pd.read_parquet(folder)`, `read_parquet('epochs.parquet/*.parquet')`). As a trial
ends the driver writes that trial's rows as their own file (`write_trial`), so a trial end
costs its own rows, not the study's. At the end of a run (and by `python -m study.results
rebuild`) the finished trials' rows are compacted into one file (`write_tables`); a trial
left unfinished keeps a file of its own, which the run that resumes it replaces: no trial's
rows are ever in two files. stats.parquet and test.parquet are single files, written once at
the end. Every file is written to a temporary name and renamed: never half of one.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtl import (
    SCHEMA_VERSION,
    table_schema,
    to_arrow,
    write_parquet,
)
from study.results.tables import TrialTables

TABLES = ("epochs", "trials", "confusions")  # the datasets, one file per trial as they end
FINISHED = "finished.parquet"  # the compacted rows of every finished trial


def trial_file(trial_id: str) -> str:
    return f"trial-{trial_id}.parquet"


def write_trial(folder: Path, tables: TrialTables, study: str, trial_id: str) -> None:
    """One trial's rows of each table, each in the trial's own file (replaced if there)."""
    for name in TABLES:
        dataset = Path(folder) / f"{name}.parquet"
        dataset.mkdir(parents=True, exist_ok=True)
        write_parquet(getattr(tables, name), dataset / trial_file(trial_id), name, study)


def write_tables(folder: Path, tables: TrialTables, study: str) -> None:
    """Every trial's rows, compacted: the finished trials' in one file per table, each
    unfinished trial's in its own; the table's other files are removed after."""
    trials = tables.trials
    finished = set(trials.trial_id[trials.status != "unfinished"]) if len(trials) else set()
    for name in TABLES:
        frame, dataset = getattr(tables, name), Path(folder) / f"{name}.parquet"
        if dataset.is_file():  # one file per table, as an earlier version wrote it
            dataset.unlink()
        dataset.mkdir(parents=True, exist_ok=True)
        done = frame.trial_id.isin(finished)
        write_parquet(frame[done], dataset / FINISHED, name, study)
        written = {FINISHED}
        for trial_id, rows in frame[~done].groupby("trial_id"):
            write_parquet(rows, dataset / trial_file(trial_id), name, study)
            written.add(trial_file(trial_id))
        for path in dataset.glob("*.parquet"):
            if path.name not in written:
                path.unlink()


def table_files(path: Path) -> list[Path]:
    """The Parquet files of one study's table: a dataset folder's, or the file itself."""
    if path.is_dir():
        return sorted(path.glob("*.parquet"))  # not the hidden temporary files
    return [path] if path.is_file() else []


# Readers' pandas types: integers and booleans that may be null stay integers and booleans.
NULLABLE = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype(),
}


def load(studies: str | os.PathLike | Sequence[str | os.PathLike], table: str = "trials"):
    """The `table` (trials, epochs, confusions, stats, test) of many studies as one typed
    DataFrame: `studies` are study folders or glob patterns of them, e.g. "results/*".
    Studies without the table (no test set, say) are passed over; a file written by a newer
    schema version is refused."""
    target = table_schema(table)
    patterns = [studies] if isinstance(studies, str | os.PathLike) else list(studies)
    paths = [
        path
        for pattern in patterns
        for match in sorted(glob.glob(str(pattern))) or [str(pattern)]
        for path in table_files(Path(match) / f"{table}.parquet")
    ]
    if not paths:
        raise FileNotFoundError(f"no {table}.parquet in {', '.join(map(str, patterns))}")
    tables = [_read(path, target) for path in paths]
    return pa.concat_tables(tables).to_pandas(types_mapper=NULLABLE.get)


def _read(path: Path, target: pa.Schema) -> pa.Table:
    table = pq.read_table(path)
    version = int((table.schema.metadata or {}).get(b"schema_version", b"1"))
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path} was written with schema version {version}; this hep2-mtl reads versions "
            f"up to {SCHEMA_VERSION}: upgrade hep2-mtl to read it"
        )
    if version < SCHEMA_VERSION:  # an older table: its columns that kept their name
        frame = table.to_pandas()
        return to_arrow(
            frame[[c for c in frame if c in target.names]], target.metadata[b"table"].decode()
        )
    for column in target:  # a column added since the file was written: null there
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return table.select(target.names).cast(target)
