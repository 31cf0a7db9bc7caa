"""Results that stack: two studies read together by pyarrow.dataset, DuckDB, polars and
study.results.load; lean Tune reports; a study rerun from its own study.json."""

import glob
import json
import shutil
import struct
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import ray.cloudpickle
from tensorboardX.proto import event_pb2

from study.driver.prepare import StudyRequest
from study.driver.tuner import run_study
from study.results.files import TABLES, load
from study.results.rebuild import main as results_main
from study.run import main
from study.spec.presets import StudyConfig, smoke
from tests.study.test_scheduling import ScriptedTrainer

pytestmark = pytest.mark.slow  # whole studies
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests

MAX_TUNE_KEYS = 60
MAX_STATE_BYTES_PER_TRIAL = 50_000


class FailingTrainer(ScriptedTrainer):
    """ScriptedTrainer whose uncertainty-balancer trials fail in their first epoch."""

    def run_epoch(self, progress=None):
        if self.config.balancer == "uncertainty":
            raise RuntimeError("scripted failure")
        return super().run_epoch(progress)


@pytest.fixture(scope="module")
def results(smoke_study, tmp_path_factory) -> Path:
    """RESULTS with two studies: `smoke` (segmentation loss varied, really trained, every
    trial completed: a copy of the session's, tests/conftest.py) and `balancers`
    (balancer varied, scripted, one trial errored)."""
    results = tmp_path_factory.mktemp("results")
    shutil.copytree(smoke_study.folder, results / "smoke")
    study = StudyConfig(
        name="balancers",
        train=smoke().train.replace(epochs=2),
        configurations=(
            {"balancer": "equal"},
            {"balancer": "gradnorm", "alpha": 0.5},
            {"balancer": "uncertainty"},
        ),
        synthetic=smoke().synthetic,
        max_failures=0,
    )
    run_study(StudyRequest(study, results, trainer=FailingTrainer))
    return results


def test_two_studies_read_together(results):
    # Each table is a Parquet dataset folder: its files are the glob's (docs/results.md).
    pattern = f"{results}/*/trials.parquet/*.parquet"
    # pyarrow.dataset: one schema for both, no casting.
    table = ds.dataset(sorted(glob.glob(pattern)), format="parquet").to_table()
    assert table.num_rows == 2 + 3
    assert table.schema.field("error").type == pa.string()
    assert table.schema.field("alpha").type == pa.float64()
    assert table.schema.field("started").type == pa.timestamp("us", tz="UTC")
    # DuckDB and polars, with a glob over the studies.
    counts = duckdb.sql(
        f"select study, count(*) as n, count(error) as errors from read_parquet('{pattern}') "
        "group by study order by study"
    ).fetchall()
    assert counts == [("balancers", 3, 1), ("smoke", 2, 0)]
    described = duckdb.sql(f"describe select * from read_parquet('{pattern}')").fetchall()
    types = {row[0]: row[1] for row in described}
    assert types["error"] == "VARCHAR" and types["optuna_trial"] == "BIGINT"
    frame = pl.read_parquet(pattern)
    assert frame.height == 5 and frame.schema["error"] == pl.String
    assert frame.schema["held_out"] == pl.List(pl.Int64)
    # The reader: typed pandas, every table.
    trials = load(f"{results}/*")
    assert len(trials) == 5 and set(trials.study) == {"smoke", "balancers"}
    assert str(trials.epochs_run.dtype) == "Int32" and str(trials.error.dtype).startswith("str")
    errored = trials[trials.status == "errored"]
    assert (
        errored.balancer.tolist() == ["uncertainty"] and "scripted failure" in errored.error.item()
    )
    # alpha is GradNorm's: null for every other balancer, in both studies.
    assert trials.alpha.isna().tolist() == (trials.balancer != "gradnorm").tolist()
    epochs = load(f"{results}/*", "epochs")
    assert len(epochs) == 2 * 5 * 2 * 2 + 2 * 5 * 2 * 2  # errored trial: no epoch
    confusions = load([results / "smoke", results / "balancers"], "confusions")
    assert set(confusions.study) == {"smoke", "balancers"}
    assert str(confusions["count"].dtype) == "Int64"


def _flat_keys(result: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in result.items():
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}/")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _tensorboard_tags(path: Path) -> set[str]:
    """The scalar tags of a TensorBoard event file (TFRecord: length, crc, event, crc)."""
    data, tags, at = path.read_bytes(), set(), 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        tags |= {value.tag for value in event.summary.value}
        at += 12 + length + 4
    return tags


def test_tune_results_are_lean(results):
    trials = sorted((results / "smoke" / "tune").glob("run_trial_*"))
    assert len(trials) == 2
    for trial in trials:
        for line in (trial / "result.json").read_text().splitlines():
            keys = _flat_keys(json.loads(line))
            assert len(keys) <= MAX_TUNE_KEYS, sorted(keys)
        (events,) = trial.glob("events.out.tfevents.*")
        assert 0 < len(_tensorboard_tags(events)) <= MAX_TUNE_KEYS
    (state,) = (results / "smoke" / "tune").glob("experiment_state-*.json")
    assert state.stat().st_size / len(trials) <= MAX_STATE_BYTES_PER_TRIAL


def test_a_study_reruns_from_its_own_record(results):
    record = results / "smoke" / "study.json"
    argv = ["--config", str(record), "--name", "rerun", "--results", str(results)]
    assert main([*argv, "--no-figures"]) == 0
    first, again = (load(results / name) for name in ("smoke", "rerun"))
    keys = ["seg_loss", "balancer", "alpha", "epochs", "seed", "lr"]
    pd.testing.assert_frame_equal(
        first.sort_values("seg_loss")[keys].reset_index(drop=True),
        again.sort_values("seg_loss")[keys].reset_index(drop=True),
    )
    assert json.loads((results / "rerun" / "study.json").read_text())["name"] == "rerun"
    # On the CPU with the same seeds: the same metrics, fold by fold, epoch by epoch.
    metrics = ["pixel_acc", "dice", "pattern_acc", "intensity_acc", "loss"]
    epochs = []
    for name, table in (("smoke", first), ("rerun", again)):
        rows = load(results / name, "epochs").merge(table[["trial_id", "seg_loss"]])
        epochs.append(
            rows.sort_values(["seg_loss", "fold", "epoch", "split"])[metrics].reset_index(drop=True)
        )
    pd.testing.assert_frame_equal(*epochs, rtol=1e-6)


def test_rebuild_gives_back_the_same_tables(results):
    folder = results / "balancers"
    written = {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}
    assert results_main(["rebuild", str(folder)]) == 0
    for name, table in written.items():
        pd.testing.assert_frame_equal(pd.read_parquet(folder / f"{name}.parquet"), table)
