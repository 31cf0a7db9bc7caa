"""A study on a three-node cluster on this machine: fold workers on both worker nodes, and a
node lost mid-trial costs a retry from the checkpoint, not a result; with the experiment in
a folder every node shares, and in a bucket (an S3 protocol server on loopback)."""

import threading
import time

import pytest
from pyarrow import fs

from study.driver.prepare import StudyRequest, fold_placement, prepare_data
from study.driver.tuner import run_study
from study.spec.presets import StudyConfig, smoke
from study.storage import filesystem_and_path

pytestmark = pytest.mark.slow  # a Ray cluster of several nodes

TRIAL_EPOCHS = 4


def checkpoint_written(experiment: str, name: str) -> bool:
    """Whether some trial of the Ray experiment (a folder or a URI) has a checkpoint NAME."""
    filesystem, root = filesystem_and_path(f"{experiment}/tune")
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    return any(f.base_name == name and f.type == fs.FileType.Directory for f in found)


@pytest.mark.parametrize("storage", ["shared folder", "s3"])
def test_folds_spread_over_nodes_and_survive_a_lost_node(local_cluster, tmp_path, storage, request):
    import ray

    slots = {"num_cpus": 2, "resources": {"fold_slot": 5}}  # room for all 5 folds on each
    bucket = None
    if storage == "s3":
        # Before the cluster starts; every node is also given the server's address and keys.
        s3 = request.getfixturevalue("s3")
        bucket = s3.uri("multinode")
        slots["env_vars"] = dict(s3.env)
    cluster = local_cluster(dict(slots), dict(slots))
    workers = cluster.workers
    deadline = time.monotonic() + 60  # until the scheduler sees both nodes' slots
    while ray.available_resources().get("fold_slot", 0) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.2)
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

    # The shared folder: RESULTS/NAME, which every node of this machine sees.
    experiment = f"{bucket}/multinode" if bucket else str(tmp_path / "multinode")
    lost = {}

    def lose_a_node_after_the_second_checkpoint():
        # Epoch 2's checkpoint stored means Tune has long registered epoch 1's: the retry
        # resumes from a checkpoint, and epoch 1's rows are the first attempt's.
        deadline = time.monotonic() + 300
        while not checkpoint_written(experiment, "checkpoint_000001"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.3)
        lost["node"] = workers[1].node_id
        cluster.remove_node(workers[1])

    killer = threading.Thread(target=lose_a_node_after_the_second_checkpoint)
    killer.start()
    epochs, trials = run_study(StudyRequest(study, tmp_path, storage=bucket))
    killer.join()

    assert "node" in lost
    assert (tmp_path / "multinode" / "tune").exists() == (bucket is None)
    assert len(trials) == 1 and trials.status.iloc[0] == "completed"
    assert trials.epochs_run.iloc[0] == TRIAL_EPOCHS
    assert len(epochs) == 5 * TRIAL_EPOCHS * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    first = epochs[epochs.epoch == 1]
    assert first.node_id.nunique() == 2  # the folds ran on both worker nodes
    last = epochs[epochs.epoch == TRIAL_EPOCHS]
    assert set(last.node_id) == {workers[0].node_id}  # resumed on the survivor
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost["node"] not in alive
