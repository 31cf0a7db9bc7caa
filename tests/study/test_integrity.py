"""What a study reads is checked: a truncated store stops it before Ray starts, and a
checkpoint that fails to load gives way to the one before it."""

import json
import logging

import pytest
from ray import tune

from mtl import (
    SynthSpec,
    build_synthetic_store,
    checkpoint_bytes,
    checkpoint_name,
    read_checkpoint,
)
from study.driver.trial import restore
from study.run import main as run_main


@pytest.fixture
def store(tmp_path):
    return build_synthetic_store(
        tmp_path / "store", SynthSpec(patients=10, size=64, specimens=1, seed=0)
    ).path


def test_a_study_on_a_truncated_store_stops_before_ray(store, tmp_path, capsys, monkeypatch):
    path = store / "images.npy"
    path.write_bytes(path.read_bytes()[:-1])
    argv = ["--preset", "smoke", "--data", str(store), "--results", str(tmp_path / "r")]
    monkeypatch.setenv("COLUMNS", "40")  # narrower than the path: the error keeps it whole
    assert run_main(argv) == 2
    assert f"{path} is truncated" in capsys.readouterr().out


class Workers:
    """Fold workers' `call("load", states)`: reads each state as a fold would."""

    def call(self, method, states):
        assert method == "load"
        self.loaded = [read_checkpoint(state) for state in states]


def _checkpoint(trial, epoch: int):
    folder = trial / f"checkpoint_{epoch - 1:06d}"
    folder.mkdir(parents=True)
    (folder / checkpoint_name("A")).write_bytes(checkpoint_bytes({"epoch": epoch}))
    (folder / "trial.json").write_text(json.dumps({"epoch": epoch}))
    return folder


def test_a_truncated_checkpoint_gives_way_to_the_one_before(tmp_path, caplog):
    trial = tmp_path / "run_trial_x"
    _checkpoint(trial, 1)
    _checkpoint(trial, 2)
    latest = _checkpoint(trial, 3)
    (latest / checkpoint_name("A")).write_bytes(b"PK\x03\x04 truncated")
    workers = Workers()
    with caplog.at_level(logging.WARNING):
        epoch = restore(workers, tune.Checkpoint.from_directory(latest), ("A",))
    assert epoch == 2 and workers.loaded[0]["epoch"] == 2
    assert "checkpoint_000002 could not be loaded" in caplog.text
    for folder in sorted(trial.iterdir()):
        (folder / checkpoint_name("A")).write_bytes(b"")
    with pytest.raises(RuntimeError, match="no checkpoint of this trial could be loaded"):
        restore(workers, tune.Checkpoint.from_directory(latest), ("A",))
