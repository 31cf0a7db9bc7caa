"""A study whose Ray experiment is in a bucket (--storage s3://...): every reader and writer
of the experiment against a real S3 protocol server (moto's, on loopback: the `s3` fixture of
tests/conftest.py). Nothing is mocked: pyarrow and Ray talk S3 to it."""

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from pyarrow import fs

from mtl import EpochMetrics, SplitMetrics
from study.results.export import main as export_main
from study.results.export import trial_checkpoint, trial_checkpoints
from study.results.files import TABLES
from study.results.foldlog import FOLD_LOG, FoldLogReader, fold_log_entry, write_fold_log
from study.results.rebuild import main as results_main
from study.results.tables import read_error, read_reports, record
from study.run import main
from study.storage import filesystem_and_path

NODE = {"node": "host-a", "node_ip": "127.0.0.1", "node_id": "abc", "device": "cpu"}


def put(uri: str, data: bytes) -> None:
    """Write one object (a file) at URI."""
    filesystem, path = filesystem_and_path(uri)
    with filesystem.open_output_stream(path) as out:
        out.write(data)


def _split(acc: float) -> SplitMetrics:
    cm = tuple(tuple(0 for _ in range(7)) for _ in range(7))
    return SplitMetrics(
        patches=10, loss=1.0, loss_seg=0.2, loss_pattern=0.5, loss_intensity=0.3,
        pixel_acc=acc, dice=acc, iou=acc, pattern_acc=acc, pattern_mca=acc, intensity_acc=acc,
        pattern_confusion=cm, intensity_confusion=((5, 0), (0, 5)),
    )  # fmt: skip


def _entry(epoch: int, acc: float) -> dict:
    metrics = EpochMetrics(
        epoch=epoch, train=_split(acc), val=_split(acc), weights=(1.0, 1.0, 1.0), seconds=1.0
    )
    return fold_log_entry({"A": metrics}, {"A": NODE}, {"torch": "2.x"})


# --- readers and writers of the experiment, one by one (fast) -------------------------------


def test_reports_and_errors_are_read_from_a_bucket(s3):
    trial = s3.uri("reports") + "/tune/run_trial_aaaaa_00000_0"
    put(f"{trial}/result.json", b'{"epoch": 1, "cv_score": 0.5}\n{"epoch": 2, "cv_score": 0.6}\n')
    put(f"{trial}/error.txt", b"Traceback ...\n  File x\nValueError: fold A diverged\n")
    assert read_reports(trial).epoch.tolist() == [1, 2]
    assert read_error(trial) == "ValueError: fold A diverged"
    nothing = s3.uri("nothing")
    assert read_reports(nothing).empty and read_error(nothing) is None


def test_a_trial_record_reads_where_ray_keeps_the_trial_files(s3, tmp_path):
    """Live (the driver's callbacks during fit()): the staging folder first, the storage for
    a trial that has none there (one a resumed study finished earlier); after fit(): the
    storage only."""
    filesystem, experiment = filesystem_and_path(s3.uri("record") + "/tune")
    staging = tmp_path / "driver_artifacts"

    def trial(name: str):
        return SimpleNamespace(
            trial_id=name, config={"seg_loss": "dice"}, status="ERROR",
            storage=SimpleNamespace(trial_dir_name=name, storage_filesystem=filesystem),
            path=f"{experiment}/{name}", local_path=str(staging / name),
        )  # fmt: skip

    for name, epochs in (("running", 1), ("earlier", 2)):
        lines = "".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1))
        put(f"s3://{experiment}/{name}/result.json", lines.encode())
        put(f"s3://{experiment}/{name}/error.txt", b"stored error\n")
    (staging / "running").mkdir(parents=True)  # this driver's: two results, not yet synced
    (staging / "running" / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (staging / "running" / "error.txt").write_text("staged error\n")
    logs = FoldLogReader(s3.uri("no-logs"))

    running, earlier = trial("running"), trial("earlier")
    assert len(record(running, logs, live=True).reports) == 2
    assert record(running, logs, live=True).error == "staged error"
    assert len(record(running, logs).reports) == 1  # the storage's copy
    assert record(running, logs).error == "stored error"
    assert len(record(earlier, logs, live=True).reports) == 2
    never_started = trial("pending")
    never_started.storage.trial_dir_name = None
    assert record(never_started, logs, live=True).reports.empty


def test_fold_logs_round_trip_through_a_bucket(s3):
    experiment = s3.uri("foldlogs")
    write_fold_log(experiment, "t1", _entry(1, 0.5))
    write_fold_log(experiment, "t1", _entry(2, 0.6))
    reader = FoldLogReader(experiment)
    assert [e["epoch"] for e in reader.read("t1")] == [1, 2]
    assert reader.read("t2") == []
    write_fold_log(experiment, "t1", _entry(2, 0.123456789))  # epoch 2 again: another size
    (_, second) = reader.read("t1")
    assert second["rows"][0]["pixel_acc"] == pytest.approx(0.123456789)
    filesystem, root = filesystem_and_path(experiment)
    found = filesystem.get_file_info(fs.FileSelector(f"{root}/{FOLD_LOG}/t1"))
    assert sorted(f.base_name for f in found) == ["epoch-0001.json", "epoch-0002.json"]


def test_export_finds_the_latest_checkpoint_in_a_bucket_or_names_those_that_have_one(s3, tmp_path):
    experiment = s3.uri("export") + "/tune"
    results = tmp_path / "study"
    results.mkdir()
    (results / "run.json").write_text(json.dumps({"experiment": experiment}))
    ids = ["aaaaa_00000", "aaaaa_00001", "aaaaa_00002"]
    pd.DataFrame({"trial_id": ids}).to_parquet(results / "trials.parquet")
    folders = [f"{experiment}/run_trial_{t}_{i}_seg_loss=dice_2026" for i, t in enumerate(ids)]
    put(f"{folders[0]}/checkpoint_000000/trial.json", b'{"epoch": 1}')
    put(f"{folders[0]}/checkpoint_000001/trial.json", b'{"epoch": 2}')
    put(f"{folders[1]}/result.json", b'{"epoch": 1}\n')  # its checkpoints were dropped
    put(f"{folders[2]}/checkpoint_000000/trial.json", b'{"epoch": 1}')

    assert sorted(trial_checkpoints(results)) == ["aaaaa_00000", "aaaaa_00002"]
    checkpoint = trial_checkpoint(results, "aaaaa_00000")
    assert checkpoint.path.endswith("/checkpoint_000001")
    assert isinstance(checkpoint.filesystem, fs.S3FileSystem)
    with checkpoint.as_directory() as local:  # downloaded to a temporary folder
        assert json.loads((Path(local) / "trial.json").read_text()) == {"epoch": 2}
    with pytest.raises(FileNotFoundError) as error:
        trial_checkpoint(results, "aaaaa_00001")
    message = str(error.value)
    assert message.startswith(f"trial aaaaa_00001 has no checkpoint in {experiment} ")
    assert "--keep-checkpoints" in message and "\n" not in message
    assert message.endswith("trials with a checkpoint: aaaaa_00000, aaaaa_00002")


# --- the whole study (slow) ------------------------------------------------------------------


def fold_log_files(storage: str) -> dict[str, tuple[int, object]]:
    """Every fold log file of the smoke study in STORAGE: path -> (size, modification time)."""
    filesystem, root = filesystem_and_path(f"{storage}/smoke/{FOLD_LOG}")
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    return {f.path: (f.size, f.mtime) for f in found if f.type == fs.FileType.File}


@pytest.mark.slow  # a whole study, trained twice over (2 trials, 5 folds, 2 epochs)
def test_a_study_on_s3_storage_tables_test_estimate_export_rebuild_and_resume(
    ray_s3, s3, tmp_path, capsys
):
    storage = s3.uri("studies")
    argv = ["--preset", "smoke", "--results", str(tmp_path), "--no-figures", "--storage", storage,
            "--test-patients", "0.2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "smoke"
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    with capsys.disabled():  # the table, for the record
        columns = ["trial_id", "seg_loss", "status", "epochs_run", "cv_score"]
        print("\n" + trials[columns].to_string(index=False))

    assert not (out / "tune").exists()  # the experiment is in the bucket only
    assert sorted(trials.seg_loss) == ["bce", "dice"]
    assert (trials.status == "completed").all() and (trials.epochs_run == 2).all()
    assert trials.cv_score.notna().all() and trials.started.notna().all()
    # trials x folds x epochs x splits, each once
    assert len(epochs) == 2 * 5 * 2 * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    best = trials.loc[trials.cv_score.idxmax()].trial_id
    test = pd.read_parquet(out / "test.parquet")
    assert len(test) and (test.trial_id == best).all() and (test.folds == 5).all()
    assert "no test estimate" not in printed and "no completed" not in printed
    # Only the best trial keeps a checkpoint, its latest (drop_checkpoints on S3).
    kept = trial_checkpoints(out)
    assert list(kept) == [best] and kept[best].path.endswith("checkpoint_000001")

    # study.results.export of the best trial: its fold models, from the bucket.
    model = tmp_path / "model"
    assert export_main([str(out), "--out", str(model)]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["trial_id"] == best and meta["epoch"] == 2 and meta["folds"] == list("ABCDE")
    assert sorted(p.name for p in model.glob("fold-*.pt")) == [f"fold-{f}.pt" for f in "ABCDE"]
    other = trials[trials.trial_id != best].trial_id.iloc[0]
    assert export_main([str(out), "--trial", other, "--out", str(tmp_path / "other")]) == 2
    assert f"trials with a checkpoint: {best}" in capsys.readouterr().err

    # python -m study.results rebuild: the same tables from the bucket.
    written = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}
    for name in TABLES:
        shutil.rmtree(out / f"{name}.parquet")  # a dataset folder
    assert results_main(["rebuild", str(out)]) == 0
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), written[name])

    # --resume: a finished study trains nothing (the same fold log files, untouched).
    logs = fold_log_files(storage)
    assert len(logs) == 2 * 2  # trials x epochs
    time.sleep(1.0)  # S3 keeps whole seconds: a rewrite would show in the times
    assert main([*argv, "--resume"]) == 0
    assert fold_log_files(storage) == logs
    again = pd.read_parquet(out / "trials.parquet")
    same = ["trial_id", "status", "epochs_run", "cv_score", "started", "ended"]
    pd.testing.assert_frame_equal(again[same], trials[same])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "epochs.parquet"), epochs)
    assert len(pd.read_parquet(out / "test.parquet")) == len(test)
