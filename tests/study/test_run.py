"""The smoke study end to end on a local Ray: both Parquet files, with every row. The study
is the session's (tests/conftest.py: smoke_study), run by main() as a user runs it."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from study.results.files import TABLES
from study.run import main

pytestmark = pytest.mark.slow  # whole studies


def test_smoke_study_writes_both_tables(smoke_study):
    out = smoke_study.folder
    epochs = pd.read_parquet(out / "epochs.parquet")
    trials = pd.read_parquet(out / "trials.parquet")
    assert json.loads((out / "study.json").read_text())["name"] == "smoke"

    # 2 configurations x 5 folds x 2 epochs x 2 splits, each exactly once.
    assert len(epochs) == 2 * 5 * 2 * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    assert set(epochs.fold) == set("ABCDE") and set(epochs.split) == {"train", "val"}
    assert epochs.groupby("trial_id").size().tolist() == [20, 20]

    assert len(trials) == 2 and trials.trial_id.is_unique
    assert sorted(trials.seg_loss) == ["bce", "dice"]
    assert (trials.status == "completed").all() and (trials.epochs_run == 2).all()
    # The fold means in trials.parquet are those of the last epoch's validation rows.
    last = epochs[(epochs.epoch == 2) & (epochs.split == "val")]
    for trial in trials.itertuples():
        mine = last[last.trial_id == trial.trial_id]
        assert trial.cv_pattern_acc == mine.pattern_acc.mean()
        assert trial.cv_folds == 5

    # The same columns as python -m mtl.train writes, plus the node that trained each fold.
    assert list(epochs.columns[:5]) == ["study", "trial_id", "fold", "epoch", "split"]
    assert (epochs.study == "smoke").all() and (trials.study == "smoke").all()
    assert epochs.node.notna().all() and epochs.node_ip.notna().all()
    assert (epochs.device == "cpu").all()
    # Every confusion cell in its own table: a fold's patch-level pattern counts sum to its
    # validation patches.
    cells = pd.read_parquet(out / "confusions.parquet")
    patch = cells[(cells.level == "patch") & (cells.task == "pattern") & (cells.split == "val")]
    counts = patch.groupby(["trial_id", "fold", "epoch"])["count"].sum()
    val = epochs[epochs.split == "val"].set_index(["trial_id", "fold", "epoch"]).patches
    pd.testing.assert_series_equal(counts.sort_index(), val.sort_index(), check_names=False)
    # Provenance: the data, the code, the libraries, the command, when.
    provenance = json.loads((out / "study.json").read_text())["provenance"]
    assert provenance["store_hash"] and provenance["store_path"]
    (run,) = provenance["runs"]
    assert run["command"].startswith("python") and run["started"] <= run["ended"]
    assert run["torch"] and run["ray"] and run["optuna"] and run["code_version"]
    for column in ("store_hash", "code_version", "torch", "ray", "command"):
        assert trials[column].notna().all(), column
    assert str(trials.started.dtype) == "datetime64[us, UTC]"
    assert (trials.started <= trials.ended).all()
    # Only the best trial keeps its checkpoint (every fold's final state) for study.results.export.
    best = trials.loc[trials.cv_score.idxmax()].trial_id
    kept = sorted(p.parent.name for p in out.glob("tune/*/checkpoint_*"))
    assert len(kept) == 1 and f"_{best}_" in kept[0]
    assert (out / "report.md").exists() and list(out.glob("curves_*.png"))

    printed = smoke_study.printed
    assert "pattern acc" in printed and "best configuration" in printed


def test_a_finished_study_is_not_rerun_and_another_configuration_is_refused(smoke_copy, capsys):
    argv = ["--preset", "smoke", "--results", str(smoke_copy), "--no-figures"]  # finished
    tables = {t: pd.read_parquet(smoke_copy / "smoke" / f"{t}.parquet") for t in TABLES}
    assert main(argv) == 0  # the same study again: resumed, nothing to do
    for name, table in tables.items():
        again = pd.read_parquet(smoke_copy / "smoke" / f"{name}.parquet")
        if name == "trials":  # the data where it is now: the copy's (a resume may move it)
            assert again.pop("data").str.startswith(str(smoke_copy / "data")).all()
            table = table.drop(columns="data")
        pd.testing.assert_frame_equal(again, table)
    capsys.readouterr()
    assert main([*argv, "--set", "epochs=1"]) == 2
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "holds another study: train.epochs differ (train.epochs is 2 there, 1 here)" in out


def test_a_cluster_needs_shared_storage_and_an_unreachable_one_is_a_quick_error(tmp_path):
    # In subprocesses (both at once): this test process already has a local Ray, which main()
    # would use.
    def start(*extra: str) -> subprocess.Popen:
        argv = ["--preset", "smoke", "--results", str(tmp_path), "--address", "127.0.0.1:9"]
        return subprocess.Popen(
            [sys.executable, "-m", "study.run", *argv, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )

    start_time = time.monotonic()
    refused = start()  # a head-local folder is refused on a cluster, naming what to use
    unreachable = start("--storage", str(tmp_path / "shared"), "--storage-shared")
    refused_out, _ = refused.communicate(timeout=120)
    unreachable_out, _ = unreachable.communicate(timeout=120)
    assert refused.returncode == 2 and "--storage s3://BUCKET/PREFIX" in refused_out
    assert unreachable.returncode == 2
    assert "no Ray cluster at 127.0.0.1:9" in unreachable_out
    assert time.monotonic() - start_time < 60  # seconds, not Ray's minutes of retrying
