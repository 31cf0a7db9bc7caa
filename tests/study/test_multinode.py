"""A study on a three-node cluster on this machine: fold workers on both worker nodes, and a
node lost mid-trial costs a retry from the checkpoint, not a result."""

import threading
import time

import pytest

from study.presets import StudyConfig, smoke
from study.tuner import fold_placement, prepare_data, run_study

pytestmark = pytest.mark.slow  # a Ray cluster of several nodes

EPOCHS = 4


def test_folds_spread_over_nodes_and_survive_a_lost_node(local_cluster, tmp_path):
    import ray

    slots = {"num_cpus": 2, "resources": {"fold_slot": 5}}  # room for all 5 folds on each
    cluster = local_cluster(dict(slots), dict(slots))
    workers = cluster.workers
    deadline = time.monotonic() + 60  # until the scheduler sees both nodes' slots
    while ray.available_resources().get("fold_slot", 0) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    study = StudyConfig(
        name="multinode",
        train=smoke().train.replace(epochs=EPOCHS),
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

    folder = tmp_path / "multinode"
    lost = {}

    def lose_a_node_after_the_second_checkpoint():
        # Epoch 2's checkpoint on disk means Tune has long registered epoch 1's: the retry
        # resumes from a checkpoint, and epoch 1's rows are the first attempt's.
        deadline = time.monotonic() + 300
        while not list(folder.glob("tune/*/checkpoint_000001")) and time.monotonic() < deadline:
            time.sleep(0.2)
        lost["node"] = workers[1].node_id
        cluster.remove_node(workers[1])

    killer = threading.Thread(target=lose_a_node_after_the_second_checkpoint)
    killer.start()
    epochs, trials = run_study(study, tmp_path)
    killer.join()

    assert "node" in lost
    assert len(trials) == 1 and trials.status.iloc[0] == "completed"
    assert trials.epochs_run.iloc[0] == EPOCHS
    assert len(epochs) == 5 * EPOCHS * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    first = epochs[epochs.epoch == 1]
    assert first.node_id.nunique() == 2  # the folds ran on both worker nodes
    last = epochs[epochs.epoch == EPOCHS]
    assert set(last.node_id) == {workers[0].node_id}  # resumed on the survivor
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost["node"] not in alive
