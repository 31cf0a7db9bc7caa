"""A study on a three-node cluster on this machine: fold workers on both worker nodes, and a
node lost mid-trial costs a retry from the checkpoint, not a result; with the experiment in
a folder every node shares, and in a bucket (an S3 protocol server on loopback).

The folds are scripted (the placement and the recovery are under test, not training): their
third epoch waits until the test has taken a node away, so the node is always lost after
the second checkpoint is stored and before the trial ends. One cluster serves both storages;
each case adds the worker it loses."""

import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from pyarrow import fs

from mtl import EpochMetrics, ScriptedTrainer
from study.driver.prepare import StudyRequest, fold_placement, prepare_data
from study.driver.tuner import run_study
from study.spec.presets import StudyConfig, smoke
from study.storage import filesystem_and_path

pytestmark = pytest.mark.slow  # a Ray cluster of several nodes

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests

TRIAL_EPOCHS = 4
HELD_EPOCH = 3  # waits for the lost node in the trial's first attempt (the retry finds it lost)
SLOTS = {"num_cpus": 2, "resources": {"fold_slot": 5}}  # room for all 5 folds on each worker


class HeldTrainer(ScriptedTrainer):
    """Scripted metrics (mtl.ScriptedTrainer); epoch HELD_EPOCH starts once the file `lost`
    exists (the test writes it after taking the node away)."""

    lost: Path

    def score(self) -> float:
        return 0.5 + 0.01 * self.epoch

    def run_epoch(self, progress=None) -> EpochMetrics:
        if self.epoch + 1 == HELD_EPOCH:
            deadline = time.monotonic() + 300
            while not self.lost.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().run_epoch(progress)


def checkpoint_written(experiment: str, name: str) -> bool:
    """Whether some trial of the Ray experiment (a folder or a URI) has a checkpoint NAME."""
    filesystem, root = filesystem_and_path(f"{experiment}/tune")
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    return any(f.base_name == name and f.type == fs.FileType.Directory for f in found)


@pytest.fixture(scope="module")
def cluster(s3, local_cluster):
    """A 0-CPU head and the worker that survives every case. Started after the S3 server;
    its nodes are given the server's address and keys."""
    return local_cluster({**SLOTS, "env_vars": dict(s3.env)})


@pytest.mark.parametrize("storage", ["shared folder", "s3"])
def test_folds_spread_over_nodes_and_survive_a_lost_node(cluster, s3, tmp_path, storage):
    survivor = cluster.workers[0]
    doomed = cluster.add_node(**SLOTS, env_vars=dict(s3.env))
    workers = [survivor, doomed]
    deadline = time.monotonic() + 60  # until the scheduler sees both nodes' slots
    while ray.available_resources().get("fold_slot", 0) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    bucket = s3.uri("multinode") if storage == "s3" else None
    study = StudyConfig(
        name="multinode",
        train=smoke().train.replace(epochs=TRIAL_EPOCHS),
        configurations=({"seg_loss": "dice"},),
        synthetic=smoke().synthetic,
        gpus_per_fold=0,
        cpus_per_fold=0.4,
        fold_resources={"fold_slot": 1},  # actors, as GPUs would make them
        fold_strategy="SPREAD",
        max_failures=3,
    )
    study = prepare_data(study, tmp_path)
    assert fold_placement(study)[1] is not None  # fold workers are actors
    HeldTrainer.lost = tmp_path / "lost"

    # The shared folder: RESULTS/NAME, which every node of this machine sees.
    experiment = f"{bucket}/multinode" if bucket else str(tmp_path / "multinode")
    lost = {}

    def lose_a_node_after_the_second_checkpoint():
        # Epoch 2's checkpoint stored means Tune has long registered epoch 1's: the retry
        # resumes from a checkpoint, and epoch 1's rows are the first attempt's.
        deadline = time.monotonic() + 300
        try:
            while not checkpoint_written(experiment, "checkpoint_000001"):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
            lost["node"] = doomed.node_id
            cluster.remove_node(doomed)
        finally:
            HeldTrainer.lost.touch()  # the held epoch goes on (retried, or failing the test)

    killer = threading.Thread(target=lose_a_node_after_the_second_checkpoint)
    killer.start()
    try:
        epochs, trials = run_study(
            StudyRequest(study, tmp_path, storage=bucket, trainer=HeldTrainer)
        )
    finally:
        HeldTrainer.lost.touch()
        killer.join()

    assert "node" in lost
    assert (tmp_path / "multinode" / "tune").exists() == (bucket is None)
    assert len(trials) == 1 and trials.status.iloc[0] == "completed"
    assert trials.epochs_run.iloc[0] == TRIAL_EPOCHS
    assert len(epochs) == 5 * TRIAL_EPOCHS * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    first = epochs[epochs.epoch == 1]
    assert set(first.node_id) == {w.node_id for w in workers}  # the folds ran on both
    last = epochs[epochs.epoch == TRIAL_EPOCHS]
    assert set(last.node_id) == {survivor.node_id}  # resumed on the survivor
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost["node"] not in alive
