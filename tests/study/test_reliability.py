"""Nothing lost, nothing duplicated: a killed driver resumes, a crashed fold is retried.

What is tested is the driver's: the studies of the kills, signals and crashes train scripted
folds (HeldTrainer, CrashingTrainer), and the driver stops them where the test chooses; a
diverging FoldTrainer is really trained.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray.cloudpickle

from mtl import FoldTrainer
from study.driver.prepare import StudyRequest
from study.driver.tuner import run_study
from study.report.document import write_report
from study.run import main
from study.spec.presets import smoke
from tests.study.test_scheduling import ScriptedTrainer

pytestmark = pytest.mark.slow  # whole studies, killed and resumed

TRIAL_EPOCHS = 2  # a checkpoint to resume from, and an epoch after it
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


class HeldTrainer(ScriptedTrainer):
    """ScriptedTrainer that, when `hold`, stays in its second epoch (up to 2 minutes, as a
    long epoch would): a study stopped then has every trial's first epoch or nothing saved,
    and nothing after it."""

    hold = False

    def run_epoch(self, progress=None):
        if self.hold and self.epoch >= 1:
            time.sleep(120)
        return super().run_epoch(progress)


# `python -m study.run ARGS` whose folds are HeldTrainers, held when the first argument is
# "hold" (Ray's workers get the class by value, with its `hold`). A stopped study's held
# trials are killed at once: Tune would give a trial busy in its epoch 10 s to end it first,
# which a held one never does.
SCRIPTED_RUN = """
import dataclasses, sys
import study.run
from ray.tune.execution.tune_controller import TuneController
from tests.study.test_reliability import HeldTrainer
HeldTrainer.hold = sys.argv.pop(1) == "hold"
tune_init = TuneController.__init__
def no_grace(self, *args, **kwargs):
    tune_init(self, *args, **kwargs)
    self._actor_force_cleanup_timeout = 0
TuneController.__init__ = no_grace
asked = study.run.request
study.run.request = lambda args: dataclasses.replace(asked(args), trainer=HeldTrainer)
sys.exit(study.run.main(sys.argv[1:]))
"""
REPO = Path(__file__).resolve().parents[2]


def _argv(results: Path, name: str) -> list[str]:
    return ["--preset", "smoke", "--results", str(results), "--name", name, "--cpus", "2",
            "--set", f"epochs={TRIAL_EPOCHS}", "--no-figures"]  # fmt: skip


def _held_study(results: Path, name: str, ray_address: str | None = None) -> subprocess.Popen:
    """The study run by `python -m study.run` in a process of its own (with its own Ray, or
    joining the one at `ray_address`, whose one node shares this folder), its trials held in
    their second epoch."""
    address = ["--address", ray_address, "--storage-shared"] if ray_address else []
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPTED_RUN, "hold", *_argv(results, name), *address],
        cwd=REPO,  # where `tests` imports from
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
    assert (trials.status == "completed").all() and (trials.epochs_run == TRIAL_EPOCHS).all()
    assert len(epochs) == 2 * 5 * TRIAL_EPOCHS * 2  # trials x folds x epochs x splits
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    return epochs


def test_a_killed_study_resumes_with_nothing_lost_or_duplicated(ray_local, tmp_path, scripted_cli):
    folder = tmp_path / "kill"
    driver = _held_study(tmp_path, "kill")
    deadline = time.monotonic() + 300
    while not _checkpoints(folder):  # some epochs done and checkpointed, the rest not
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL

    # Resumed with other run settings (one trial at a time): how it runs is not what it is.
    # By another driver: main() in this process, on this session's Ray.
    scripted_cli(HeldTrainer)
    assert main([*_argv(tmp_path, "kill"), "--resume", "--max-concurrent", "1"]) == 0
    _assert_complete(folder)


class CrashingTrainer(ScriptedTrainer):
    """ScriptedTrainer whose fold B dies at epoch 2, once (the marker file records that it
    did), as a lost node or an out-of-memory kill would: no clean-up."""

    marker: Path

    def run_epoch(self, progress=None):
        if self.fold == "B" and self.epoch + 1 == 2 and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return super().run_epoch(progress)


def test_a_crashed_fold_worker_is_retried_from_its_checkpoint(ray_local, tmp_path):
    CrashingTrainer.marker = tmp_path / "crashed"
    study = smoke()
    study = dataclasses.replace(study, name="crash", train=study.train.replace(epochs=TRIAL_EPOCHS))
    run_study(StudyRequest(study, tmp_path, trainer=CrashingTrainer))
    assert CrashingTrainer.marker.exists()  # the crash happened
    epochs = _assert_complete(tmp_path / "crash")
    assert epochs.groupby("trial_id").size().tolist() == [5 * TRIAL_EPOCHS * 2] * 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_study_and_resume_finishes_it(
    ray_local, tmp_path, signum, scripted_cli, capsys
):
    folder = tmp_path / "stop"
    # On this session's Ray (a driver joining a running Ray, as on a cluster): what is
    # tested is the driver's stop, not a Ray's start (the killed study above starts its own).
    driver = _held_study(tmp_path, "stop", ray_local.get_runtime_context().gcs_address)
    deadline = time.monotonic() + 300
    while not _checkpoints(folder):
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.5)
    scripted_cli(HeldTrainer)  # this process's drivers: main(), not held
    if signum == signal.SIGINT:  # a second driver on the same study is refused, naming it
        assert main(_argv(tmp_path, "stop")) == 2
        output = capsys.readouterr().out
        assert f"is being run by process {driver.pid}" in " ".join(output.split())
        assert driver.poll() is None  # and the first ran on untouched
    os.kill(driver.pid, signum)  # the driver only, as Ctrl-C or a scheduler's SIGTERM
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 128 + signum, output
    assert f"stopped by {signal.Signals(signum).name}" in " ".join(output.split())
    trials = pd.read_parquet(folder / "trials.parquet")
    assert (trials.status == "unfinished").any()  # written for what had run
    assert (folder / "report.md").exists()
    if signum == signal.SIGINT:  # the same continuation after either signal
        assert main([*_argv(tmp_path, "stop"), "--resume"]) == 0
        trials = pd.read_parquet(folder / "trials.parquet")
        assert (trials.status == "completed").all()
        assert (trials.epochs_run == TRIAL_EPOCHS).all()
        _assert_complete(folder)


class DivergingTrainer(FoldTrainer):
    """FoldTrainer whose BCE trials see NaN images: every training step's loss is NaN."""

    def train_step(self, batch, sums):
        if self.config.seg_loss == "bce":
            batch = {**batch, "image": batch["image"] * float("nan")}
        return super().train_step(batch, sums)


def test_a_diverged_fold_errors_its_trial_and_the_study_goes_on(ray_local, tmp_path):
    study = smoke()
    study = dataclasses.replace(
        study, name="diverge", train=study.train.replace(epochs=1), max_failures=0
    )
    _, trials = run_study(StudyRequest(study, tmp_path, trainer=DivergingTrainer))
    by_loss = trials.set_index("seg_loss")
    assert by_loss.at["dice", "status"] == "completed"
    assert by_loss.at["bce", "status"] == "errored"
    assert "fold A, epoch 1: " in by_loss.at["bce", "error"]
    assert "non-finite loss" in by_loss.at["bce", "error"]
    write_report(tmp_path / "diverge")  # the report lists the errored trial and its reason
    report = (tmp_path / "diverge" / "report.md").read_text()
    assert "errored" in report and "non-finite loss" in report
