"""Experiment trackers: one MLflow / W&B run per trial with its active parameters and
cross-validated metrics, a study-level run with the report, a clear error without the
package."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import mlflow
import pandas as pd
import pytest
import ray.cloudpickle

from mtl import ScriptedTrainer
from study.run import main
from study.spec.presets import get_preset
from study.spec.record import study_record
from study.trackers.backends import check_trackers, trial_params, wandb_mode, wandb_run_id
from study.trackers.callbacks import StudyMLflowCallback, StudyWandbCallback

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


@dataclasses.dataclass(eq=False)  # hashed by identity, as Tune's trials are
class FakeTrial:
    trial_id: str
    config: dict


def two_balancers(name: str = "tracked"):
    """The smoke study with an equal and a GradNorm configuration (alpha varies with them)."""
    return dataclasses.replace(
        get_preset("smoke"),
        name=name,
        configurations=({"balancer": "equal"}, {"balancer": "gradnorm", "alpha": 1.5}),
    )


def test_a_trial_has_only_the_parameters_its_balancer_reads():
    base = get_preset("smoke").train
    equal = trial_params(base, {"balancer": "equal", "alpha": 1.5, "optuna_trial": 3})
    gradnorm = trial_params(base, {"balancer": "gradnorm", "alpha": 1.5})
    assert "alpha" not in equal and "balancer_lr" not in equal and "optuna_trial" not in equal
    assert gradnorm["alpha"] == 1.5 and gradnorm["balancer_lr"] == base.balancer_lr
    assert equal["encoder"] == gradnorm["encoder"] == base.encoder


def test_a_tracker_without_its_package_fails_at_once_with_the_install_command(
    tmp_path, monkeypatch, capsys
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"pip install 'hep2-mtl\[wandb\]'"):
        check_trackers(["mlflow", "wandb"])
    assert check_trackers(["mlflow", "mlflow"]) == ("mlflow",)
    assert main(["--preset", "smoke", "--results", str(tmp_path), "--tracker", "wandb"]) == 2
    assert "pip install -e '.[wandb]'" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # before any data was generated


def test_mlflow_callback_one_run_per_trial_even_across_a_resumed_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = 'o\'brien: "tracked", 1 of 2'  # quotes and all: runs are found by the folder's key
    study = two_balancers(name)
    trial = FakeTrial("abc_00000", {"balancer": "equal", "alpha": 1.5, "optuna_trial": 0})
    for epochs in ([1, 2], [3]):  # the second callback: a new driver resuming the trial
        callback = StudyMLflowCallback(study, tmp_path)
        callback.setup()
        callback.log_trial_start(trial)
        for epoch in epochs:
            result = {"epoch": epoch, "cv_score": epoch / 10, "cv_dice": 0.5, "loss": 9.0}
            callback.log_trial_result(epoch, trial, result)
        callback.log_trial_end(trial)
        assert not getattr(callback, "failed", False)
    callback.log_trial_end(FakeTrial("never_started", {}))  # as Tune may: nothing happens
    assert not getattr(callback, "failed", False)

    runs = mlflow.search_runs(experiment_names=[name])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.study"] == name and run["tags.tune_trial_id"] == "abc_00000"
    assert run["tags.optuna_trial"] == "0" and run["params.balancer"] == "equal"
    assert "params.alpha" not in runs and "params.balancer_lr" not in runs
    assert "metrics.loss" not in runs and run["metrics.cv_score"] == 0.3
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "cv_score")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert (tmp_path / "mlflow.db").is_file()


def test_wandb_callback_gives_each_trial_its_active_parameters_and_cv_metrics(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    started, queued = {}, []
    callback = StudyWandbCallback(two_balancers(), tmp_path)
    monkeypatch.setattr(
        callback, "_start_logging_actor", lambda trial, exclude, **init: started.update(init)
    )
    trial = FakeTrial("abc_00001", {"balancer": "gradnorm", "alpha": 1.5, "optuna_trial": 4})
    callback.log_trial_start(trial)
    assert started["id"] == wandb_run_id(tmp_path, "abc_00001") and started["group"] == "tracked"
    assert started["mode"] == "offline" and started["dir"] == str(tmp_path.resolve())
    config = started["config"]
    assert config["alpha"] == 1.5 and config["balancer"] == "gradnorm"
    assert config["tune_trial_id"] == "abc_00001" and config["optuna_trial"] == "4"

    callback._trial_logging_actors[trial] = object()
    callback._trial_queues[trial] = type("Q", (), {"put": lambda self, item: queued.append(item)})()
    callback.log_trial_result(2, trial, {"epoch": 2, "cv_score": 0.5, "loss": 1.0, "node_ip": "x"})
    ((_, logged),) = queued
    assert logged == {"cv_score": 0.5, "epoch": 2, "training_iteration": 2}

    # A signal ends the study without log_trial_end: the running trial's run is told to end.
    callback._trial_logging_futures[trial] = object()
    monkeypatch.setattr(callback, "_cleanup_logging_actors", lambda **kw: queued.append(kw))
    callback.on_experiment_end([trial])
    assert queued[1][0].name == "END" and queued[2] == {"timeout": 300, "kill_on_timeout": True}
    callback.log_trial_end(FakeTrial("never_started", {}))
    assert not getattr(callback, "failed", False)
    # Ray's __del__ would wait on these stand-ins when the callback is collected.
    for fakes in (callback._trial_logging_actors, callback._trial_logging_futures):
        fakes.clear()
    callback._trial_queues.clear()


def test_wandb_is_offline_unless_logged_in_or_told(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


class BalancerTrainer(ScriptedTrainer):
    """GradNorm scores above equal weights, by fold: what the trackers log is the driver's."""

    def score(self) -> float:
        gain = 0.1 + 0.02 * "ABCDE".index(self.fold) if self.config.balancer == "gradnorm" else 0
        return 0.5 + gain + 0.01 * "ABCDE".index(self.fold) + 0.01 * self.epoch


@pytest.mark.slow
def test_a_study_with_both_trackers(ray_local, tmp_path, monkeypatch, scripted_cli):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # whatever this machine's W&B login
    config = tmp_path / "tracked.json"
    config.write_text(json.dumps(study_record(two_balancers())))
    argv = ["--config", str(config), "--results", str(tmp_path / "results")]
    scripted_cli(BalancerTrainer)
    assert main([*argv, "--tracker", "mlflow", "--tracker", "wandb"]) == 0
    folder = tmp_path / "results" / "tracked"
    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    # Tune's pickled Tuner holds no tracker: resuming without --tracker needs no package.
    assert b"tracker_callbacks" not in (folder / "tune" / "tuner.pkl").read_bytes()

    # MLflow: one run per trial with the right parameters and final metrics, and the study's.
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tracked"]).set_index("tags.hep2.run")
    trial_runs = runs.loc[["trial"]].set_index("tags.tune_trial_id").loc[trials.index]
    assert len(runs) == 3 and len(trial_runs) == 2
    assert (trial_runs["params.balancer"] == trials.balancer).all()
    gradnorm = trials.balancer == "gradnorm"
    assert trial_runs["params.alpha"].isna().tolist() == (~gradnorm).tolist()
    assert trial_runs["params.balancer_lr"].isna().tolist() == (~gradnorm).tolist()
    assert trial_runs.loc[gradnorm, "params.alpha"].tolist() == ["1.5"]
    pd.testing.assert_series_equal(
        trial_runs["metrics.cv_score"], trials.cv_score, check_names=False
    )
    assert (trial_runs["tags.status"] == "completed").all()
    assert (trial_runs["tags.study"] == "tracked").all() and (trial_runs.status == "FINISHED").all()
    study_run = runs.loc["study"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(study_run.run_id)}
    assert {"report.md", "stats.csv", "intervals.png"} <= artifacts

    # W&B, offline: one run per trial (its id the Tune trial id) and the study's.
    runs = sorted(p.name.rsplit("-", 1)[-1] for p in (folder / "wandb").glob("offline-run-*"))
    assert runs == sorted([*trials.index, "study"])
    for run in (folder / "wandb").glob("offline-run-*"):
        assert next(run.glob("run-*.wandb")).stat().st_size > 0


def test_a_tracker_failing_during_the_study_is_switched_off_not_raised(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    callback = StudyMLflowCallback(two_balancers(), tmp_path)
    callback.setup()
    trial = FakeTrial("abc_00000", {"balancer": "equal"})
    callback.log_trial_start(trial)
    calls = []

    def gone(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("tracking server gone")

    monkeypatch.setattr(callback.mlflow_util, "_get_client", gone)
    callback.log_trial_result(1, trial, {"epoch": 1, "cv_score": 0.5})
    callback.log_trial_result(2, trial, {"epoch": 2, "cv_score": 0.6})
    callback.log_trial_end(trial)
    assert len(calls) == 1  # one failure, then the tracker is off: no more retries
    assert "log_trial_result failed, so this tracker is off" in caplog.text
    assert "tracking server gone" in caplog.text
