import pandas as pd
import pytest

from mtl import EpochMetrics, SplitMetrics
from study.results import epoch_report, epoch_rows, fold_summary, write_parquet


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


def test_report_holds_the_fold_means_and_every_fold():
    report = epoch_report({"A": _epoch(3, 0.8), "B": _epoch(3, 0.6)})
    assert report["epoch"] == 3
    assert report["cv_pixel_acc"] == pytest.approx(0.7)
    assert report["cv_pattern_acc"] == pytest.approx(0.35)
    assert report["cv_intensity_acc"] == pytest.approx(0.3)
    assert report["cv_score"] == pytest.approx((0.7 + 0.35 + 0.3) / 3)
    assert report["fold/B/val/pixel_acc"] == 0.6
    assert report["fold/A/train/pixel_acc"] == pytest.approx(0.81)


def test_reports_become_long_rows_and_back():
    reports = pd.DataFrame(
        [epoch_report({"A": _epoch(e, 0.5 + e / 10), "B": _epoch(e, 0.4)}) for e in (1, 2)]
    )
    rows = epoch_rows("t1", reports)
    assert len(rows) == 2 * 2 * 2  # folds x epochs x splits
    assert list(rows.columns[:4]) == ["trial_id", "fold", "epoch", "split"]
    assert not rows.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    a2 = rows[(rows.fold == "A") & (rows.epoch == 2) & (rows.split == "val")].iloc[0]
    assert a2.pixel_acc == pytest.approx(0.7) and a2.weight_seg == 1.0
    assert a2.cm_pattern_speckled_homogeneous == 5 and a2.recall_speckled == 0.0
    assert pd.isna(a2.recall_golgi)  # absent class: NaN survives the round trip
    assert a2.patches == 10 and rows.patches.dtype.kind == "i"


def test_fold_summary_is_mean_and_sample_std_of_the_last_epoch():
    rows = pd.DataFrame(
        {
            "trial_id": ["t"] * 6,
            "fold": ["A", "B", "C", "A", "B", "C"],
            "epoch": [1, 1, 1, 2, 2, 2],
            "split": ["val"] * 6,
            "pixel_acc": [0.0, 0.0, 0.0, 0.9, 0.8, 0.7],
            "pattern_acc": [0.0, 0.0, 0.0, 0.5, 0.5, 0.5],
            "intensity_acc": [0.0, 0.0, 0.0, 1.0, 0.0, 0.5],
        }
    )
    summary = fold_summary(rows).iloc[0]
    assert summary.cv_pixel_acc == pytest.approx(0.8)
    assert summary.cv_pixel_acc_std == pytest.approx(0.1)
    assert summary.cv_pattern_acc_std == pytest.approx(0.0)
    assert summary.cv_intensity_acc_std == pytest.approx(0.5)
    assert summary.cv_score == pytest.approx((0.8 + 0.5 + 0.5) / 3)
    assert summary.cv_folds == 3


def test_parquet_is_replaced_atomically(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    write_parquet(pd.DataFrame({"a": [2, 3]}), path)
    assert pd.read_parquet(path).a.tolist() == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
