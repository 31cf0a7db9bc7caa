"""Nothing lost, nothing duplicated: a killed driver resumes, a crashed fold is retried."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

EPOCHS = 3


def _study(results: Path, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "study.run", "--preset", "smoke", "--results", str(results),
               "--name", name, "--cpus", "2", "--set", f"epochs={EPOCHS}", *extra]  # fmt: skip
    return subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Ray's processes too
    )


def _checkpoints(folder: Path) -> list[Path]:
    return list(folder.glob("tune/*/checkpoint_*"))


def _assert_complete(folder: Path) -> pd.DataFrame:
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 2 and trials.trial_id.is_unique
    assert (trials.status == "completed").all() and (trials.epochs_run == EPOCHS).all()
    assert len(epochs) == 2 * 5 * EPOCHS * 2  # trials x folds x epochs x splits
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    return epochs


def test_a_killed_study_resumes_with_nothing_lost_or_duplicated(tmp_path):
    folder = tmp_path / "kill"
    driver = _study(tmp_path, "kill")
    deadline = time.monotonic() + 300
    while not _checkpoints(folder):  # some epochs done and checkpointed, the rest not
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL

    resumed = _study(tmp_path, "kill", "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    _assert_complete(folder)


def test_a_crashed_fold_worker_is_retried_from_its_checkpoint(tmp_path):
    marker = tmp_path / "crashed"
    run = _study(tmp_path, "crash", env={"HEP2_STUDY_CRASH": f"B:2:{marker}"})
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    assert marker.exists()  # the crash happened
    epochs = _assert_complete(tmp_path / "crash")
    assert epochs.groupby("trial_id").size().tolist() == [5 * EPOCHS * 2] * 2
