import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl import SCHEMA_VERSION, EpochMetrics, SplitMetrics, TrainConfig, tiny, write_parquet
from study.results.files import FINISHED, load, write_tables
from study.results.foldlog import FoldLogReader, epoch_report, fold_log_entry, write_fold_log
from study.results.tables import TrialRecord, fold_summary, study_tables

NODE = {"node": "host-a", "node_ip": "127.0.0.1", "node_id": "abc", "device": "cpu"}


def _split(acc: float) -> SplitMetrics:
    cm = [[0] * 7 for _ in range(7)]
    cm[0][0], cm[1][0] = 5, 5
    return SplitMetrics(
        patches=10, loss=1.0, loss_seg=0.2, loss_pattern=0.5, loss_intensity=0.3,
        pixel_acc=acc, dice=acc, iou=acc, pattern_acc=acc / 2, pattern_mca=0.5,
        intensity_acc=1 - acc, pattern_confusion=tuple(map(tuple, cm)),
        intensity_confusion=((5, 0), (0, 5)), patient_pattern_acc=acc,
    )  # fmt: skip


def _epoch(epoch: int, acc: float) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, train=_split(acc + 0.01), val=_split(acc), weights=(1.0, 1.0, 1.0), seconds=2.0
    )


def test_report_holds_the_fold_means_and_each_fold_score_only():
    report = epoch_report({"A": _epoch(3, 0.8), "B": _epoch(3, 0.6)})
    assert report["epoch"] == 3
    assert report["cv_pixel_acc"] == pytest.approx(0.7)
    assert report["cv_pattern_acc"] == pytest.approx(0.35)
    assert report["cv_intensity_acc"] == pytest.approx(0.3)
    assert report["cv_score"] == pytest.approx((0.7 + 0.35 + 0.3) / 3)
    assert report["fold_score/B"] == pytest.approx((0.6 + 0.3 + 0.4) / 3)
    assert not [k for k in report if k.startswith("fold/") or "cm_" in k]
    assert len(report) <= 25


def _log(tmp_path, trial_id: str, epochs: dict[int, tuple[float, float]]) -> None:
    for epoch, (a, b) in epochs.items():
        entry = fold_log_entry(
            {"A": _epoch(epoch, a), "B": _epoch(epoch, b)},
            {"A": NODE, "B": NODE},
            {"torch": "2.x", "code_version": "abc123", "code_dirty": False, "gpu": None},
        )
        write_fold_log(str(tmp_path), trial_id, entry)


def _reports(epochs) -> pd.DataFrame:
    return pd.DataFrame({"epoch": list(epochs), "timestamp": [1.7e9 + e for e in epochs]})


def test_fold_logs_become_the_long_tables(tmp_path):
    _log(tmp_path, "t1", {1: (0.5, 0.4), 2: (0.9, 0.4), 3: (0.1, 0.1)})
    _log(tmp_path, "t1", {2: (0.7, 0.4)})  # epoch 2 run again (resumed from epoch 1)
    reader = FoldLogReader(str(tmp_path))
    # Tune saw epochs 1 and 2 only: epoch 3's log (the trial died before reporting it) is out.
    record = TrialRecord("t1", {}, "TERMINATED", None, _reports([1, 2, 2]), reader.read("t1"))
    tables = study_tables([record], tiny().replace(epochs=2), run={"store_hash": "h"})
    rows = tables.epochs
    assert len(rows) == 2 * 2 * 2  # folds x epochs x splits
    assert list(rows.columns[:4]) == ["trial_id", "fold", "epoch", "split"]
    assert not rows.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    a2 = rows[(rows.fold == "A") & (rows.epoch == 2) & (rows.split == "val")].iloc[0]
    assert a2.pixel_acc == pytest.approx(0.7) and a2.recall_speckled == 0.0
    assert pd.isna(a2.recall_golgi)  # absent class: NaN survives the round trip
    # What belongs to the epoch (weights, seconds) is on the training row only.
    assert pd.isna(a2.seconds) and pd.isna(a2.weight_seg)
    train = rows[rows.split == "train"]
    assert train.seconds.sum() == pytest.approx(2.0 * 4) and (train.weight_seg == 1.0).all()
    assert a2.node == "host-a" and a2.node_ip == "127.0.0.1" and a2.device == "cpu"
    cells = tables.confusions
    a2_cells = cells[(cells.fold == "A") & (cells.epoch == 2) & (cells.split == "val")]
    patch = a2_cells[(a2_cells.level == "patch") & (a2_cells.task == "pattern")]
    assert len(patch) == 49 and patch["count"].sum() == 10
    hit = patch[(patch.true == "speckled") & (patch.predicted == "homogeneous")]
    assert hit["count"].item() == 5
    assert not cells[cells.split == "train"].level.eq("patient").any()  # no votes in training
    trial = tables.trials.iloc[0]
    assert trial.epochs_run == 2 and trial.status == "completed"
    assert trial.store_hash == "h" and trial.code_version == "abc123" and trial.torch == "2.x"
    assert trial.started == pd.Timestamp(1.7e9 + 1, unit="s", tz="UTC")
    assert trial.ended == pd.Timestamp(1.7e9 + 2, unit="s", tz="UTC")


def test_fold_summary_gives_last_and_best_epoch_mean_and_sample_std():
    rows = pd.DataFrame(
        {
            "trial_id": ["t"] * 9,
            "fold": ["A", "B", "C"] * 3,
            "epoch": [1, 1, 1, 2, 2, 2, 3, 3, 3],
            "split": ["val"] * 9,
            "pixel_acc": [0.0, 0.0, 0.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6],
            "pattern_acc": [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
            "intensity_acc": [0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5],
        }
    )
    summary = fold_summary(rows).iloc[0]
    assert summary.cv_pixel_acc == pytest.approx(0.6)  # the last epoch, 3
    assert summary.cv_pixel_acc_std == pytest.approx(0.0)
    assert summary.best_epoch == 2
    assert summary.best_cv_pixel_acc == pytest.approx(0.8)
    assert summary.best_cv_pixel_acc_std == pytest.approx(0.1)
    assert summary.best_cv_intensity_acc_std == pytest.approx(0.5)
    assert summary.best_cv_score == pytest.approx((0.8 + 0.5 + 0.5) / 3)
    # The score's fold spread: folds score (0.9+0.5+1)/3, (0.8+0.5+0)/3, (0.7+0.5+0.5)/3.
    fold_scores = pd.Series([2.4, 1.3, 1.7]) / 3
    assert summary.best_cv_score_std == pytest.approx(fold_scores.std())
    assert summary.cv_folds == 3


def test_parquet_is_replaced_atomically(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    write_parquet(pd.DataFrame({"a": [2, 3]}), path)
    assert pd.read_parquet(path).a.tolist() == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_tables_are_typed_even_where_a_column_is_empty(tmp_path):
    trials = pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "error": [None]})
    write_parquet(trials, tmp_path / "trials.parquet", "trials", study="s")
    table = pq.read_table(tmp_path / "trials.parquet")
    assert table.schema.field("error").type == pa.string()
    assert table.schema.field("encoder_weights").type == pa.string()
    assert table.schema.field("started").type == pa.timestamp("us", tz="UTC")
    assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert table.column("study").to_pylist() == ["s"]
    with pytest.raises(ValueError, match="cm_pattern_x"):
        write_parquet(trials.assign(cm_pattern_x=1), tmp_path / "x.parquet", "trials")


def test_load_refuses_a_newer_schema_version(tmp_path):
    (tmp_path / "s").mkdir()
    write_tables(
        tmp_path / "s", study_tables([], TrainConfig(data="x")), "s"
    )  # empty tables of a study without trials
    path = tmp_path / "s" / "trials.parquet" / FINISHED
    table = pq.read_table(path)
    newer = {**table.schema.metadata, b"schema_version": str(SCHEMA_VERSION + 1).encode()}
    pq.write_table(table.replace_schema_metadata(newer), path)
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        load(tmp_path / "*")
    assert load(tmp_path / "*", "epochs").empty


def test_folds_out_of_lockstep_are_an_error_even_under_python_O():
    with pytest.raises(RuntimeError, match=r"out of lockstep: epochs \[2, 3\]"):
        epoch_report({"A": _epoch(2, 0.5), "B": _epoch(3, 0.5)})


def test_load_fills_a_column_added_since_a_file_was_written(tmp_path):
    (tmp_path / "s").mkdir()
    trials = pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "epochs": [3]})
    write_parquet(trials, tmp_path / "s" / "trials.parquet", "trials", study="s")
    path = tmp_path / "s" / "trials.parquet"
    older = pq.read_table(path).drop_columns(["max_skipped_share"])  # as written before it
    pq.write_table(older, path)
    loaded = load(tmp_path / "s")
    assert loaded.epochs.tolist() == [3] and loaded.max_skipped_share.isna().all()
