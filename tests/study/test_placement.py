"""The automatic placement of fold workers (study/driver/placement.py): the rule on made-up
clusters, the errors of impossible placements, the device of a fold allotted no GPU."""

from __future__ import annotations

import pytest

from study.driver.placement import NodeShape, PlacementError, _autoscaler_node_types, plan_placement


def _gpu_node(gpus: int, cpus: int = 16, memory: float | None = 141.0, count: int = 1):
    return NodeShape(gpus=gpus, cpus=cpus, gpu_memory_gib=memory, count=count)


@pytest.mark.parametrize(
    ("gpus", "per_gpu", "fraction", "trials"),
    [(1, 5, 0.2, 1), (2, 3, 0.3333, 1), (4, 3, 0.3333, 2), (8, 2, 0.5, 3)],
)
def test_five_folds_fill_every_gpu_of_a_node(gpus, per_gpu, fraction, trials):
    plan = plan_placement([_gpu_node(gpus)], 5)
    assert plan.actors and plan.folds_per_gpu == per_gpu
    assert plan.gpus_per_fold == fraction
    assert plan.trials_at_once == trials
    # Every GPU busy: the workers of the trials side by side need all the node's GPUs.
    assert -(-trials * 5 // per_gpu) == gpus


def test_cpus_are_shared_among_the_fold_workers_of_a_node():
    assert plan_placement([_gpu_node(1, cpus=6)], 5).cpus_per_fold == 1
    assert plan_placement([_gpu_node(8, cpus=192)], 5).cpus_per_fold == 12  # 15 workers
    assert plan_placement([_gpu_node(1, cpus=4)], 5).cpus_per_fold == 0.75


def test_gpu_memory_caps_the_workers_per_gpu():
    # 24 GiB GPUs and 6 GiB per worker: at most 4 per GPU, so 2 GPUs hold 3 and 2.
    plan = plan_placement([_gpu_node(2, memory=24.0)], 5, fold_memory_gib=6.0)
    assert plan.folds_per_gpu == 3 and plan.actors
    assert plan.describe().startswith("24 GiB GPU, fold workers of 6 GiB: 0.3333 GPU")


# The planner on one GPU of each size (in GiB as NVML reports it: a 24 GB card is 22.4 GiB),
# for paper's fold (resident state 1.29 GiB, counted) with workers of 6 and of 10 GiB.
@pytest.mark.parametrize(
    ("memory", "worker", "expected"),
    [
        (14.9, 6.0, "shared, resident"),  # 6 + 4 x 1.29 = 11.2 fits
        (14.9, 10.0, "shared, offload"),  # 10 + 4 x 1.29 = 15.2 does not
        (22.4, 6.0, "shared, resident"),  # 3 workers fit, a trial needs 5
        (22.4, 10.0, "shared, resident"),  # the 24 GB GPU: 2 workers fit
        (37.3, 6.0, "5 workers"),
        (37.3, 10.0, "shared, resident"),
        (74.5, 10.0, "5 workers"),
        (131.3, 10.0, "5 workers"),
    ],
)
def test_the_planner_on_gpus_of_16_24_40_80_and_141_gb(memory, worker, expected):
    plan = plan_placement(
        [_gpu_node(1, cpus=8, memory=memory)], 5, fold_memory_gib=worker, resident_gib=1.29
    )
    if expected == "5 workers":
        assert plan.actors and plan.folds_per_gpu == 5 and plan.gpus_per_fold == 0.2
        return
    # The trial takes the GPU and the node's CPUs; its folds run in its process.
    assert not plan.actors and plan.gpus_per_trial == 1 and plan.cpus_per_trial == 8
    assert plan.offload == (expected == "shared, offload")
    assert plan.trials_at_once == 1
    assert plan.describe().startswith(
        f"{memory:.0f} GiB GPU, fold workers of {worker:g} GiB: the 5 folds of a trial share "
        "one process on the GPU"
    )


def test_shared_gpu_trials_count_every_gpu_of_the_cluster():
    nodes = [_gpu_node(1, cpus=4, memory=22.4, count=3), _gpu_node(4, cpus=16, memory=22.4)]
    plan = plan_placement(nodes, 5, fold_memory_gib=10.0, resident_gib=1.0)
    # The smallest node sets the rule (a GPU and 4 CPUs per trial); the 4-GPU node runs four.
    assert plan.gpus_per_trial == 1 and plan.cpus_per_trial == 4
    assert plan.trials_at_once == 3 + 4


def test_a_gpu_smaller_than_one_fold_worker_refuses_with_the_ways_out():
    with pytest.raises(PlacementError) as error:
        plan_placement(
            [_gpu_node(1, memory=14.9)], 5, fold_memory_gib=20.0, memory_source="--fold-memory-gib"
        )
    message = str(error.value)
    assert "GPU memory: a fold worker needs about 20 GiB (--fold-memory-gib)" in message
    assert "the smallest GPU has 14.9 GiB" in message
    for way_out in ("--set batch_size=", "--fold-memory-gib", "--gpus-per-fold"):
        assert way_out in message


def test_nodes_of_several_sizes_follow_the_smallest():
    nodes = [_gpu_node(1, cpus=4, memory=None, count=8), _gpu_node(8, cpus=192, memory=None)]
    plan = plan_placement(nodes, 5)
    assert plan.gpus_per_fold == 0.2  # a trial fits on a 1-GPU node
    assert plan.trials_at_once == 8 + 8  # one per small node, eight on the large one


def test_no_gpus_runs_folds_in_the_trial_process():
    plan = plan_placement([NodeShape(gpus=0, cpus=8)], 5, cpus_per_trial=2)
    assert not plan.actors and plan.trials_at_once == 4 and plan.threads == 2


def test_explicit_fractions_are_kept():
    plan = plan_placement([_gpu_node(3)], 5, gpus_per_fold=0.5, cpus_per_fold=2)
    assert (plan.gpus_per_fold, plan.cpus_per_fold, plan.folds_per_gpu) == (0.5, 2.0, 2)
    assert plan.trials_at_once == 1  # 6 workers' room


@pytest.mark.parametrize(
    ("nodes", "options", "message"),
    [
        # The new user's case: one whole GPU per fold on a one-GPU machine.
        ([_gpu_node(1, cpus=6)], {"gpus_per_fold": 1},
         r"a trial needs 5 fold workers of CPU 6, GPU 1; the cluster holds 1"),
        ([_gpu_node(1)], {"gpus_per_fold": 2},
         r"GPU: a fold worker asks for 2, the largest node has 1"),
        ([NodeShape(gpus=0, cpus=8)], {"gpus_per_fold": 0.5},
         r"GPU: a fold worker asks for 0.5"),
        ([_gpu_node(1, cpus=2)], {"cpus_per_fold": 4},
         r"CPU: a fold worker asks for 4, the largest node has 2"),
        ([NodeShape(gpus=0, cpus=2)], {"cpus_per_trial": 4},
         r"CPU: a trial asks for 4 CPUs, the largest node has 2"),
        ([_gpu_node(1, cpus=1)], {}, r"CPU: 5 fold workers on a node with 1 CPUs"),
    ],
)  # fmt: skip
def test_an_impossible_placement_names_the_resource(nodes, options, message):
    with pytest.raises(PlacementError, match=message):
        plan_placement(nodes, 5, **options)


def test_autoscaler_node_types_count_as_nodes(tmp_path):
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(
        "head_node_type: head\n"
        "available_node_types:\n"
        "  head: {resources: {CPU: 0, GPU: 0}, max_workers: 0}\n"
        "  gpu-1x: {resources: {CPU: 4, GPU: 1, gpu_memory_gib: 24}, max_workers: 8}\n"
        "  gpu-8x: {resources: {CPU: 192, GPU: 8}, min_workers: 0, max_workers: 2}\n"
    )
    shapes = _autoscaler_node_types(config)
    assert [(s.gpus, s.cpus, s.count, s.gpu_memory_gib) for s in shapes] == [
        (1, 4, 8, 24), (8, 192, 2, None)
    ]  # fmt: skip
    # The head offers nothing; the placement is planned on the GPU types not started yet.
    plan = plan_placement([NodeShape(gpus=0, cpus=0), *shapes], 5)
    assert plan.gpus_per_fold == 0.2 and plan.cpus_per_fold == 0.75
    # 6 GiB per worker: four fit on a 24 GiB GPU, a trial needs five: a trial's folds share
    # one process on one GPU, a trial per gpu-1x node and 8 per gpu-8x node.
    plan = plan_placement([NodeShape(gpus=0, cpus=0), *shapes], 5, fold_memory_gib=6.0)
    assert plan.gpus_per_trial == 1 and plan.cpus_per_trial == 4
    assert plan.trials_at_once == 8 * 1 + 2 * 8
