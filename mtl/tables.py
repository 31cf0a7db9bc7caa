"""The Arrow schema of every table the harness writes, the long epoch table shared by
`python -m mtl.train` and the study, and atomic Parquet.

Every table is cast to its schema when written, so each column has one real type in every
study (an empty text column is a string column of nulls, not Arrow's `null` type) and many
studies read together with pyarrow.dataset, DuckDB or polars without casting by hand. Each
file's metadata holds `schema_version` and the table's name; readers refuse a newer version
(study.results.load). docs/results.md describes every column.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.config import TrainConfig
from mtl.labels import PATTERNS
from mtl.schema import CV_METRICS, ID_COLUMNS, TASKS, EpochMetrics, SplitMetrics

# 1: the tables before explicit schemas (no metadata). 2: typed, a `study` column everywhere,
# confusion matrices in their own table, provenance in trials.
SCHEMA_VERSION = 2

STRING, FLOAT, INT, COUNT = pa.string(), pa.float64(), pa.int32(), pa.int64()
UTC_TIME = pa.timestamp("us", tz="UTC")


def _field_type(hint) -> pa.DataType:
    """The Arrow type of a dataclass field's annotation (str, int, float, bool, tuples)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return pa.list_(_field_type(args[0]))
    if args:  # X | None
        return _field_type(args[0])
    return {str: STRING, int: COUNT, float: FLOAT, bool: pa.bool_()}[hint]


def _fields(cls) -> list[tuple[str, pa.DataType]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _field_type(hints[f.name])) for f in dataclasses.fields(cls)]


def _schema(name: str, columns: Iterable[tuple[str, pa.DataType]]) -> pa.Schema:
    metadata = {"schema_version": str(SCHEMA_VERSION), "table": name}
    return pa.schema(list(columns), metadata=metadata)


SPLIT_COLUMNS = [(n, t) for n, t in _fields(SplitMetrics) if not n.endswith("_confusion")]
# Where a fold trained: host name, IP address, Ray's node id, and the device ("cpu" or the
# GPU's model).
NODE_COLUMNS = [("node", STRING), ("node_ip", STRING), ("node_id", STRING), ("device", STRING)]
EPOCHS_SCHEMA = _schema(
    "epochs",
    [("study", STRING), ("trial_id", STRING), ("fold", STRING), ("epoch", INT), ("split", STRING),
     *SPLIT_COLUMNS, *[(f"recall_{p}", FLOAT) for p in PATTERNS],
     *[(f"weight_{t}", FLOAT) for t in TASKS], ("skipped_steps", INT), ("seconds", FLOAT),
     ("data_seconds", FLOAT), *NODE_COLUMNS],
)  # fmt: skip
CONFUSIONS_SCHEMA = _schema(
    "confusions",
    [("study", STRING), ("trial_id", STRING), ("fold", STRING), ("epoch", INT), ("split", STRING),
     ("level", STRING), ("task", STRING), ("true", STRING), ("predicted", STRING),
     ("count", COUNT)],
)  # fmt: skip
# The cross-validated metrics of a trial: fold mean and standard deviation at its last epoch
# (`cv_<metric>`) and at its best (`best_cv_<metric>`); `score` is the study's score.
CV_COLUMNS = [
    (f"{prefix}cv_{metric}{suffix}", FLOAT)
    for prefix in ("", "best_")
    for metric in ("score", *CV_METRICS)
    for suffix in ("", "_std")
]
# What produced a trial: the data, the code, the libraries, the GPU, the command.
PROVENANCE_COLUMNS = [
    ("store_hash", STRING), ("store_path", STRING), ("code_version", STRING),
    ("code_dirty", pa.bool_()), ("python", STRING), ("torch", STRING), ("cuda", STRING),
    ("smp", STRING), ("ray", STRING), ("optuna", STRING), ("gpu", STRING), ("command", STRING),
]  # fmt: skip
TRIALS_SCHEMA = _schema(
    "trials",
    [("study", STRING), ("trial_id", STRING), ("optuna_trial", COUNT), *_fields(TrainConfig),
     ("status", STRING), ("epochs_run", INT), ("error", STRING), ("started", UTC_TIME),
     ("ended", UTC_TIME), ("best_epoch", INT), ("cv_folds", INT), *CV_COLUMNS,
     *PROVENANCE_COLUMNS],
)  # fmt: skip
STATS_SCHEMA = _schema(
    "stats",
    [("study", STRING), ("trial_id", STRING), ("metric", STRING), ("n_folds", COUNT),
     *[(c, FLOAT) for c in ("mean", "std", "diff_vs_best", "ci_low", "ci_high", "p_value",
                            "p_worse", "p_rope", "p_better")],
     ("is_best", pa.bool_()), ("missing_folds", COUNT), ("verdict", STRING),
     ("half_width", FLOAT)],
)  # fmt: skip
TEST_SCHEMA = _schema(
    "test",
    [("study", STRING), ("trial_id", STRING), ("level", STRING), ("metric", STRING),
     *[(c, FLOAT) for c in ("cv", "cv_std", "test", "ci_low", "ci_high", "optimism")],
     *[(c, COUNT) for c in ("test_patients", "test_images", "test_patches", "folds")]],
)  # fmt: skip
FRONT_SCHEMA = _schema(
    "front",
    [("study", STRING), ("trial_id", STRING), ("task", STRING), ("metric", STRING),
     ("n_folds", COUNT), *[(c, FLOAT) for c in ("mean", "ci_low", "ci_high")],
     ("on_front", pa.bool_()), ("established_dominated", pa.bool_()), ("dominated_by", STRING)],
)  # fmt: skip
SCHEMAS: dict[str, pa.Schema] = {
    s.metadata[b"table"].decode(): s
    for s in (EPOCHS_SCHEMA, CONFUSIONS_SCHEMA, TRIALS_SCHEMA, STATS_SCHEMA, TEST_SCHEMA,
              FRONT_SCHEMA)
}  # fmt: skip


def table_schema(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise ValueError(f"no table {table!r}; the tables are {', '.join(SCHEMAS)}") from None


def to_arrow(frame: pd.DataFrame, table: str, study: str | None = None) -> pa.Table:
    """`frame` cast to the table's schema: its columns in the schema's order, a column the
    frame lacks as nulls, `study` filled in where the frame has none. A column the schema
    does not know is an error: a table's columns change with its schema version only."""
    target = table_schema(table)
    unknown = [c for c in frame.columns if c not in target.names]
    if unknown:
        raise ValueError(f"{table}: columns {unknown} are not in the {table} schema (mtl.tables)")
    if "study" in target.names and "study" not in frame:
        frame = frame.assign(study=study)
    missing = [name for name in target.names if name not in frame]
    nulls = pd.DataFrame(  # objects, not NaN: a null list or string, not a float
        {name: pd.Series([None] * len(frame), index=frame.index, dtype=object) for name in missing}
    )
    frame = pd.concat([frame, nulls], axis=1)[target.names]
    return pa.Table.from_pandas(frame, schema=target, preserve_index=False)


def epoch_frame(trial_id: str, fold: str, epochs: Iterable[EpochMetrics]) -> pd.DataFrame:
    """One row per (epoch, split) of one fold: the layout of epochs.parquet."""
    rows = [{"trial_id": trial_id, "fold": fold, **row} for m in epochs for row in m.rows()]
    return order_columns(pd.DataFrame(rows))


def confusion_frame(trial_id: str, fold: str, epochs: Iterable[EpochMetrics]) -> pd.DataFrame:
    """Every confusion cell of one fold's epochs: the layout of confusions.parquet."""
    rows = [{"trial_id": trial_id, "fold": fold, **r} for m in epochs for r in m.confusion_rows()]
    return pd.DataFrame(rows)


def order_columns(frame: pd.DataFrame, order: Iterable[str] = ()) -> pd.DataFrame:
    """Identifying columns first, then `order`, then the rest as they come."""
    first = [c for c in (*ID_COLUMNS, *order) if c in frame]
    return frame[list(dict.fromkeys(first + list(frame.columns)))]


def write_parquet(
    frame: pd.DataFrame, path: str | os.PathLike, table: str | None = None, study: str | None = None
) -> None:
    """Write atomically: readers see the old file or the new one, never half of one. With
    `table`, cast to that table's schema (to_arrow) and record its version."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if table is None:
        frame.to_parquet(tmp, index=False)
    else:
        pq.write_table(to_arrow(frame, table, study), tmp)
    os.replace(tmp, path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV atomically, as write_parquet does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
