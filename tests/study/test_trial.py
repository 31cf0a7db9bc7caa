"""One trainer contract, one epoch loop: a fold trained by `python -m mtl.train` and the
same fold trained by the study's fold worker give the same metrics."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from mtl import SCORE_METRICS, epoch_frame, tiny
from study.driver.folds import FoldWorker, TrialSetup


def fold_setup(config, store, tmp_path, offload=False) -> TrialSetup:
    """A one-thread trial setup for fold workers made here, not by a trial."""
    return TrialSetup(
        base=config, folds=("A", "B"), score_metrics=SCORE_METRICS,
        store_hash=store.content_hash, fold_log=str(tmp_path), threads=1, offload=offload,
    )  # fmt: skip


@pytest.fixture
def one_thread():
    """The fold worker sets this process to one thread (as a worker given one CPU); restore
    it afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_cli_and_the_study_s_fold_worker_train_alike(tiny_store, tmp_path, one_thread):
    argv = ["--data", str(tiny_store.path), "--fold", "B", "--preset", "tiny"]
    cli = subprocess.run(
        [sys.executable, "-m", "mtl.train", *argv, "--out", str(tmp_path / "cli")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread, as the fold worker below
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    by_cli = pd.read_parquet(tmp_path / "cli" / "epochs.parquet")

    config = tiny().replace(data=str(tiny_store.path))
    worker = FoldWorker(config, "B", fold_setup(config, tiny_store, tmp_path))
    epochs = [worker.run_epoch()[0] for _ in range(config.epochs)]
    by_worker = epoch_frame("single", "B", epochs)

    assert len(by_cli) == len(by_worker) == 2 * config.epochs
    numbers = [
        c for c in by_cli.select_dtypes("number").columns if c not in ("seconds", "data_seconds")
    ]
    assert "pattern_acc" in numbers and "weight_seg" in numbers
    for column in numbers:
        assert by_worker[column].to_numpy() == pytest.approx(
            by_cli[column].to_numpy(), abs=1e-6, nan_ok=True
        ), column


def test_an_offloaded_fold_trains_exactly_as_a_resident_one(tiny_store, tmp_path, one_thread):
    """Folds that share one GPU may wait in host memory between epochs (FoldWorker's
    `offload`): the trainer is released and opened again from the state's bytes, and the
    fold trains on exactly as one that stayed resident."""
    config = tiny().replace(data=str(tiny_store.path), epochs=2)
    runs = {}
    for offload in (False, True):
        worker = FoldWorker(config, "A", fold_setup(config, tiny_store, tmp_path, offload))
        runs[offload] = [worker.run_epoch()[0] for _ in range(config.epochs)]
        assert (worker.trainer is None) == offload  # parked between epochs
        assert worker.state()  # a checkpoint's bytes either way
    resident, offloaded = (epoch_frame("single", "A", runs[o]) for o in (False, True))
    numbers = [c for c in resident.select_dtypes("number") if "seconds" not in c]
    pd.testing.assert_frame_equal(resident[numbers], offloaded[numbers])
