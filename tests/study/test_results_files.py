"""A study's tables as per-trial files: written as trials end, read as one table by `load`,
pandas, DuckDB and polars, compacted at the end with no trial's rows in two files; and the
driver's other per-trial work (the live view, checkpoint clean-up) bounded by the trial, not
the study. The API takes typed overrides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import polars as pl
import pytest
from pyarrow import fs

import study
from mtl import EpochMetrics, SplitMetrics, TrainConfig, tiny
from study.driver.callbacks import LiveView
from study.driver.checkpoints import CheckpointKeeper
from study.results.files import FINISHED, load, trial_file, write_tables, write_trial
from study.results.tables import TrialRecord, study_tables
from study.spec.presets import smoke

BASE = tiny()
CM = tuple(tuple(0 for _ in range(7)) for _ in range(7))


def _epoch(epoch: int, s: float) -> EpochMetrics:
    split = SplitMetrics(
        patches=1, loss=1 - s, loss_seg=0.0, loss_pattern=0.0, loss_intensity=0.0,
        pixel_acc=s, dice=s, iou=s, pattern_acc=s, pattern_mca=s, intensity_acc=s,
        pattern_confusion=CM, intensity_confusion=((0, 0), (0, 0)),
    )  # fmt: skip
    return EpochMetrics(epoch=epoch, train=split, val=split, weights=(1.0, 1.0, 1.0), seconds=0.0)


def _record(trial_id: str, epochs: int, tune_status: str = "TERMINATED") -> TrialRecord:
    node = {"node": "n", "node_ip": None, "node_id": None, "device": "cpu"}
    log = []
    for e in range(1, epochs + 1):
        by_fold = {"A": _epoch(e, 0.5), "B": _epoch(e, 0.7)}
        rows = [{"fold": f, **r, **node} for f, m in by_fold.items() for r in m.rows()]
        log.append({"epoch": e, "rows": rows, "confusions": [], "environment": {}})
    reports = pd.DataFrame({"epoch": range(1, epochs + 1), "timestamp": 1.7e9})
    return TrialRecord(trial_id, {"lr": 0.01}, tune_status, None, reports, log)


def _tables(*records: TrialRecord):
    return study_tables(list(records), BASE.replace(epochs=2))


def test_trials_written_as_they_end_read_as_one_table_by_every_reader(tmp_path):
    folder = tmp_path / "s"
    for trial_id in ("t1", "t2", "t3"):
        write_trial(folder, _tables(_record(trial_id, 2)), "s", trial_id)
    assert sorted(p.name for p in (folder / "epochs.parquet").iterdir()) == [
        trial_file(t) for t in ("t1", "t2", "t3")
    ]
    epochs = load(folder, "epochs")
    assert len(epochs) == 3 * 2 * 2 * 2  # trials x folds x epochs x splits
    trials = load(folder, "trials")
    assert sorted(trials.trial_id) == ["t1", "t2", "t3"] and (trials.status == "completed").all()
    glob = str(folder / "epochs.parquet" / "*.parquet")
    by_duckdb = duckdb.sql(f"select trial_id, count(*) n from '{glob}' group by 1 order by 1")
    assert by_duckdb.fetchall() == [("t1", 8), ("t2", 8), ("t3", 8)]
    by_polars = pl.read_parquet(glob)
    assert by_polars.height == len(epochs) and set(by_polars["trial_id"]) == {"t1", "t2", "t3"}
    by_pandas = pd.read_parquet(folder / "epochs.parquet")  # a dataset folder, as one table
    assert len(by_pandas) == len(epochs)


def test_compaction_keeps_each_trials_rows_in_one_file_across_a_resume(tmp_path):
    folder = tmp_path / "s"
    done, stopped = _record("t1", 2), _record("t2", 1, tune_status="RUNNING")
    for r in (done, stopped):
        write_trial(folder, _tables(r), "s", r.trial_id)
    write_tables(folder, _tables(done, stopped), "s")  # the end of an interrupted run
    files = sorted(p.name for p in (folder / "epochs.parquet").iterdir())
    assert files == sorted([FINISHED, trial_file("t2")])  # unfinished: a file of its own
    # The resumed run finishes t2: its file is replaced, t1's rows stay where they are.
    write_trial(folder, _tables(_record("t2", 2)), "s", "t2")
    epochs = load(folder, "epochs")
    assert epochs.groupby("trial_id").epoch.max().to_dict() == {"t1": 2, "t2": 2}
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    write_tables(folder, _tables(done, _record("t2", 2)), "s")
    assert [p.name for p in (folder / "trials.parquet").iterdir()] == [FINISHED]
    assert list(load(folder).status) == ["completed", "completed"]


def test_a_study_written_in_one_file_per_table_is_read_and_rewritten(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    tables = _tables(_record("t1", 2))
    tables.epochs.to_parquet(folder / "epochs.parquet")  # an earlier version's layout
    assert len(load(folder, "epochs")) == 8
    write_tables(folder, tables, "old")
    assert (folder / "epochs.parquet").is_dir() and len(load(folder, "epochs")) == 8


def test_the_live_view_shows_the_running_and_the_latest_trials_only():
    view = LiveView(smoke())
    trials = [SimpleNamespace(trial_id=f"t{i:04d}", config={"lr": 0.01}) for i in range(200)]
    for i, trial in enumerate(trials):
        view.on_trial_start(0, trials, trial)
        view.on_trial_result(0, trials, trial, {"epoch": 2, "cv_score": i / 1000})
        if i < 197:
            view.on_trial_complete(0, trials, trial)
    table = view.render()
    assert table.row_count == LiveView.MAX_ROWS
    assert "180 earlier trials not shown" in table.caption
    assert "cv score 0.199" in table.caption  # the best, kept as results arrive


def _trial(root: Path, trial_id: str, score: float, checkpoints: int) -> SimpleNamespace:
    path = root / f"run_trial_{trial_id}_0_lr=0.01"
    for i in range(checkpoints):
        (path / f"checkpoint_{i:06d}").mkdir(parents=True)
    return SimpleNamespace(
        trial_id=trial_id,
        config={"lr": 0.01},
        last_result={"epoch": 2, "cv_score": score},
        path=str(path),
        storage=SimpleNamespace(storage_filesystem=fs.LocalFileSystem()),
    )


def _left(trial) -> int:
    return len(list(Path(trial.path).glob("checkpoint_*")))


def test_checkpoints_are_dropped_as_trials_end_touching_only_those_trials(tmp_path):
    keeper = CheckpointKeeper(study.StudyConfig(**{**vars(smoke()), "keep_checkpoints": 2}), "")
    scores = [0.5, 0.7, 0.6, 0.9, 0.1]
    trials = [_trial(tmp_path, f"abcde_{i:05d}", s, 2) for i, s in enumerate(scores)]
    for trial in trials:
        keeper.on_trial_complete(0, trials, trial)
    assert [_left(t) for t in trials] == [0, 1, 0, 1, 0]  # the best two keep their latest
    assert Path(trials[3].path, "checkpoint_000001").is_dir()


def test_the_api_takes_typed_overrides_as_they_are(tmp_path, monkeypatch):
    from study.driver import tuner

    asked = []
    monkeypatch.setattr(tuner, "run_study", lambda request: asked.append(request))
    monkeypatch.setattr("study.api.tables", lambda folder: folder)
    channels = (64, 32, 16, 8, 8)
    study.run_preset("smoke", tmp_path, overrides={"decoder_channels": channels, "lr": 1e-3})
    (request,) = asked
    assert request.study.train.decoder_channels == channels and request.study.train.lr == 1e-3
    assert request.folder == (tmp_path / "smoke").resolve()
    with pytest.raises(ValueError, match="no TrainConfig field epochz"):
        study.run_preset("smoke", tmp_path, overrides={"epochz": 3})
    assert isinstance(TrainConfig().decoder_channels, tuple)


def test_a_running_trial_keeps_its_latest_two_and_those_the_saved_states_name(tmp_path):
    """Tune saves its experiment state now and then (the keeper hears of each save through
    get_state); a killed driver resumes from the checkpoints the last saved states name, so
    those stay beside the latest two until two later saves name others."""
    keeper = CheckpointKeeper(smoke(), "")  # keep_checkpoints=1
    trial = _trial(tmp_path, "abcde_00000", 0.5, checkpoints=2)
    folder = Path(trial.path)

    def checkpoint(i: int) -> None:  # trial i's checkpoint lands, Tune tells the callbacks
        (folder / f"checkpoint_{i:06d}").mkdir()
        keeper.on_checkpoint(0, [trial], trial, None)

    def saved(i: int) -> None:  # Tune saves its experiment state: it names checkpoint i
        trial.checkpoint = SimpleNamespace(path=str(folder / f"checkpoint_{i:06d}"))
        assert keeper.get_state() is None  # nothing of the keeper's own is saved

    def left() -> list[int]:
        return sorted(int(p.name.removeprefix("checkpoint_")) for p in folder.iterdir())

    keeper.on_checkpoint(0, [trial], trial, None)
    assert left() == [0, 1]
    saved(1)
    checkpoint(2)
    assert left() == [1, 2]
    checkpoint(3)
    assert left() == [1, 2, 3]  # 1: the last saved state names it
    saved(3)
    checkpoint(4)
    assert left() == [1, 3, 4]  # 1 and 3: the last two saved states name them
    saved(4)
    checkpoint(5)
    assert left() == [3, 4, 5]
    keeper.on_trial_complete(0, [trial], trial)
    assert left() == [5]  # finished and among the best one: its latest

    every = CheckpointKeeper(study.StudyConfig(**{**vars(smoke()), "keep_checkpoints": 0}), "")
    other = _trial(tmp_path, "abcde_00001", 0.5, checkpoints=4)
    every.on_trial_complete(0, [other], other)
    assert _left(other) == 2  # --keep-checkpoints 0: every trial keeps its latest two
